"""ResNets (linen and nnx): BatchNorm folded into the convs, residual adds fused as RESIDUAL (src3),
global average pooling as POOL; one program for every batch size."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compiler_nets import LinenResNet, NnxResNet, check, nnx_perturb, opcodes, perturb
from flaxnpu_abi.prog import FUNC, OP_FLAG

from pyflaxnpu.compiler import compile

RESIDUAL = int(getattr(OP_FLAG, "RESIDUAL", 2))
CASES = [((8, 16), (1, 2), (8, 8, 3)), ((8, 8), (1, 1), (6, 6, 1)), ((4, 8, 8), (2, 1, 2), (9, 9, 2))]


@pytest.mark.parametrize("api", ["linen", "nnx"])
@pytest.mark.parametrize(("widths", "strides", "shape"), CASES)
def test_resnet_has_no_batchnorm_math_and_fuses_residuals(api, widths, strides, shape):
    if api == "linen":
        model = LinenResNet(widths, strides)
        variables = perturb(model.init(jax.random.key(0), jnp.ones((1, *shape))))
        program = compile(model, variables, np.ones((2, *shape), np.float32))
        ref = jax.jit(lambda x: model.apply(variables, x))
    else:
        model = nnx_perturb(NnxResNet(shape[-1], widths, strides))
        program = compile(model, None, np.ones((2, *shape), np.float32))
        ref = model
    kinds = opcodes(program)
    # No BINARY op is left doing BatchNorm (or anything else): every BN is inside a conv's weights.
    assert "BINARY" not in kinds and "UNARY" not in kinds, program.report()
    projections = sum(1 for a, w, s in zip((widths[0], *widths), widths, strides, strict=False) if a != w or s != 1)
    assert kinds.count("CONV2D") == 1 + 2 * len(widths) + projections
    assert kinds[-2:] == ["POOL", "MATMUL"]
    res = [op for op in program.ops if int(op["flags"]) & RESIDUAL]
    assert len(res) == len(widths)
    assert all(op["act"] == FUNC.RELU and op["opcode"] == 6 for op in res)   # relu(conv + bn + shortcut)
    assert all(int(op["src3"]["size"]) == int(op["dst"]["size"]) for op in res)
    check(program, ref, shape)


def test_batchnorm_after_dense_is_folded_too():
    import flax.linen as nn

    class DenseBN(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.relu(nn.BatchNorm(use_running_average=True)(nn.Dense(12)(x)))

    model = DenseBN()
    variables = perturb(model.init(jax.random.key(0), jnp.ones((1, 7))))
    program = compile(model, variables, np.ones((1, 7), np.float32))
    assert opcodes(program) == ["MATMUL"] and program.ops[0]["act"] == FUNC.RELU
    check(program, jax.jit(lambda x: model.apply(variables, x)), (7,))
