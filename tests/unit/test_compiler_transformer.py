"""Transformer encoders (linen and nnx): GATHER embeddings from int32 token ids, LAYERNORM, attention as
TRANSPOSE + BMM (scale in alpha) + SOFTMAX, residuals in the projections; one program for every batch."""

from __future__ import annotations

import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compiler_nets import LinenEncoder, NnxEncoder, check, nnx_perturb, opcodes, perturb
from flaxnpu_abi.prog import FUNC, OP_FLAG

from pyflaxnpu.compiler import compile

RESIDUAL = int(getattr(OP_FLAG, "RESIDUAL", 2))


@pytest.mark.parametrize("api", ["linen", "nnx"])
@pytest.mark.parametrize(("length", "d", "heads"), [(4, 16, 2), (9, 32, 4), (16, 32, 1)])
def test_encoder_lowers_to_layer_ops_and_matches_jax(api, length, d, heads):
    if api == "linen":
        model = LinenEncoder(length, d, heads)
        variables = perturb(model.init(jax.random.key(0), jnp.ones((1, length), jnp.int32)))
        program = compile(model, variables, np.ones((2, length), np.int32))
        ref = jax.jit(lambda x: model.apply(variables, x))
    else:
        model = nnx_perturb(NnxEncoder(length, d, heads))
        program = compile(model, None, np.ones((2, length), np.int32))
        ref = model
    kinds = opcodes(program)
    assert program.inputs[0]["dtype"] == "int32" and kinds[0] == "GATHER"
    assert kinds.count("LAYERNORM") == 3 and kinds.count("BMM") == 2 and kinds.count("SOFTMAX") == 1
    assert "REDUCE" not in kinds and "UNARY" not in kinds, program.report()
    assert sum(1 for op in program.ops if int(op["flags"]) & RESIDUAL) == 2
    assert any(op["act"] == FUNC.GELU_TANH for op in program.ops)
    # 1/sqrt(head_dim) is BMM's alpha, not a BINARY op.
    scores = next(op for op in program.ops if op["opcode"] == 9)
    alpha = struct.unpack("<f", struct.pack("<I", int(scores["params"][1])))[0]
    assert alpha == pytest.approx(1 / np.sqrt(d // heads))
    assert kinds.count("BINARY") == 1   # the learned positions added to the embeddings
    check(program, ref, (length,), np.int32)


def test_out_of_range_token_gives_nan_rows_like_jnp_take():
    model = LinenEncoder(4, 16, 2)
    variables = perturb(model.init(jax.random.key(0), jnp.ones((1, 4), jnp.int32)))
    program = compile(model, variables, np.ones((1, 4), np.int32))
    from program_runner import run
    x = np.array([[1, -3, 16, 2], [0, 1, 2, 99]], np.int32)    # -3 wraps; 99 is out of range
    got = run(program, x)[0]
    want = np.asarray(model.apply(variables, x))
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-4)
    assert np.isnan(got[1]).all() and np.isnan(want[1]).all()
