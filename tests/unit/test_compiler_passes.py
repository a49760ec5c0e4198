"""Compiler passes on models beyond plain MLPs: folding, activation matching, layouts, outputs."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flaxnpu_abi.prog import BINOP, FUNC, OP_FLAG, OPCODE
from program_runner import run

from pyflaxnpu.compiler import compile


class Fn(nn.Module):
    fn: object
    width: int = 6

    @nn.compact
    def __call__(self, x):
        return self.fn(self, x)


def build(fn, shape, width=6, seed=0):
    model = Fn(fn, width)
    variables = model.init(jax.random.key(seed), jnp.ones((1, *shape)))
    variables = jax.tree_util.tree_map(
        lambda p: p + 0.3 * jax.random.uniform(jax.random.key(seed + 1), p.shape), variables)
    program = compile(model, variables, np.ones((2, *shape), np.float32))
    return program, jax.jit(lambda x: model.apply(variables, x))


def check(program, ref, shape, batches=(1, 3, 64)):
    for b in batches:
        x = np.random.default_rng(b).normal(size=(b, *shape)).astype(np.float32)
        got = run(program, x)
        want = jax.tree_util.tree_leaves(ref(x))
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, np.asarray(w), rtol=1e-4, atol=1e-4)


def kinds(program):
    return [(OPCODE(op["opcode"]).name, FUNC(op["act"]).name) for op in program.ops]


def test_batchnorm_parameter_math_is_folded_into_weights():
    def fn(self, x):
        x = nn.Dense(8)(x)
        return nn.BatchNorm(use_running_average=True)(x)
    program, ref = build(fn, (5,))
    # rsqrt(var + eps) * scale only touches parameters: no UNARY, no REDUCE on the device.
    assert all(k[0] in ("MATMUL", "BINARY") for k in kinds(program)), kinds(program)
    assert "rsqrt" not in {p for m in program.manifest["ops"] for p in m["primitives"]}
    check(program, ref, (5,))


@pytest.mark.parametrize(("fn", "want"), [
    (lambda x: 2.0 * nn.gelu(x), [("MATMUL", "GELU_TANH"), ("BINARY", "NONE")]),   # matches the part
    (lambda x: jnp.maximum(x, 1e-3), [("MATMUL", "NONE"), ("BINARY", "NONE")]),     # near-miss: no relu
    (lambda x: nn.silu(x), [("MATMUL", "NONE"), ("UNARY", "NONE"), ("BINARY", "NONE")]),  # x used twice
    (lambda x: jnp.exp(jnp.tanh(x)), [("MATMUL", "TANH"), ("UNARY", "NONE")]),
    (lambda x: jax.nn.relu(x) * jax.nn.relu(x), [("MATMUL", "RELU"), ("UNARY", "NONE")]),
])
def test_activation_chains_fuse_only_what_matches(fn, want):
    program, ref = build(lambda self, x: fn(nn.Dense(6)(x)), (5,))
    got = kinds(program)
    assert [k[0] for k in got] == [k[0] for k in want], got
    assert got[0] == want[0], got
    check(program, ref, (5,))


def test_activation_of_the_input_is_one_unary():
    program, ref = build(lambda self, x: nn.relu(x), (7,))
    assert kinds(program) == [("UNARY", "NONE")] and program.ops[0]["params"][0] == FUNC.RELU
    check(program, ref, (7,))


def test_dense_on_tokens_flattens_leading_axes():
    program, ref = build(lambda self, x: nn.softmax(nn.Dense(5)(nn.relu(nn.Dense(8)(x)))), (4, 3))
    assert kinds(program) == [("MATMUL", "RELU"), ("MATMUL", "NONE"), ("SOFTMAX", "NONE")]
    assert list(program.ops[0]["dims"][:3]) == [4, 3, 8]
    assert list(program.ops[2]["dims"][:2]) == [4, 5]
    check(program, ref, (4, 3))


def test_layernorm_is_one_layernorm_op():
    def fn(self, x):
        return nn.LayerNorm()(nn.Dense(8)(x))
    program, ref = build(fn, (3, 5))
    assert kinds(program) == [("MATMUL", "NONE"), ("LAYERNORM", "NONE")]
    check(program, ref, (3, 5))


def test_residual_and_elementwise_between_activations():
    def fn(self, x):
        h = nn.Dense(6)(x)
        return h + nn.tanh(nn.Dense(6)(h)) / 3.0 - x.sum(axis=-1, keepdims=True)
    program, ref = build(fn, (6,))
    assert program.ops[0]["flags"] == OP_FLAG.BIAS
    check(program, ref, (6,))


def test_several_outputs_and_outputs_read_again():
    def fn(self, x):
        logits = nn.Dense(4)(x)
        return {"logits": logits, "probs": nn.softmax(logits), "input": x}
    program, ref = build(fn, (5,))
    assert program.manifest["output_tree"] == {"input": 0, "logits": 1, "probs": 2}
    assert len(program.outputs) == 3
    # logits is read by the softmax, so it is copied out: SEG_OUTPUT is write-only.
    copies = [op for op in program.ops if op["opcode"] == OPCODE.UNARY and op["params"][0] == FUNC.NONE]
    assert len(copies) == 2
    check(program, ref, (5,))


def test_constant_broadcasts_become_row_weights():
    def fn(self, x):
        w = self.param("w", nn.initializers.normal(), (3, 1))
        return x * w + jnp.ones((3, 4)) * 2.0 - x / (1.0 + x * x)
    program, ref = build(fn, (3, 4))
    assert {OPCODE(op["opcode"]) for op in program.ops} <= {OPCODE.BINARY, OPCODE.UNARY}
    assert any(op["params"][0] == BINOP.DIV for op in program.ops)
    check(program, ref, (3, 4))
