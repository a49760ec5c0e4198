"""Transformer encoders (linen and nnx): GATHER embeddings from int32 token ids, LAYERNORM, attention as
TRANSPOSE + BMM (scale in alpha) + SOFTMAX, residuals in the projections; one program for every batch."""

from __future__ import annotations

import struct

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compiler_nets import LinenEncoder, NnxEncoder, check, nnx_perturb, opcodes, perturb
from flax import nnx
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


class NnxAttention(nnx.Module):
    """nnx.MultiHeadAttention (jax.nn.dot_product_attention inside: vmap puts a size-1 group axis in
    front of the batch axis) with a constant mask, or none."""

    def __init__(self, d: int, heads: int, qkv: int, out: int, mask: str) -> None:
        self.att = nnx.MultiHeadAttention(heads, d, qkv_features=qkv, out_features=out, decode=False,
                                          rngs=nnx.Rngs(0))
        self.heads, self.mask = heads, mask

    def __call__(self, x):
        if self.mask == "is_causal":
            return self.att(x, is_causal=True)
        if self.mask == "fixed":   # per head, some keys hidden from some queries; key 0 seen by all
            fixed = np.random.default_rng(x.shape[1]).random((self.heads, x.shape[1], x.shape[1])) > 0.4
            fixed[..., 0] = True
            return self.att(x, mask=jnp.asarray(fixed))
        return self.att(x, mask=nnx.make_causal_mask(jnp.ones(x.shape[:2])) if self.mask == "causal" else None)


@pytest.mark.parametrize("mask", ["none", "causal", "is_causal", "fixed"])
@pytest.mark.parametrize(("length", "d", "heads", "qkv", "out"), [(5, 16, 2, 16, 16), (8, 12, 3, 24, 7),
                                                                   (1, 8, 1, 8, 8), (16, 32, 4, 32, 32)])
def test_nnx_multi_head_attention_runs_on_the_npu_and_matches_jax(mask, length, d, heads, qkv, out):
    model = nnx_perturb(NnxAttention(d, heads, qkv, out, mask))
    program = compile(model, None, np.ones((2, length, d), np.float32), fallback="error")
    kinds = opcodes(program)
    assert kinds.count("BMM") == 2 and kinds.count("MATMUL") == 4, kinds
    if length > 1:   # a softmax over one key stays unfused (REDUCE, BINARY...), in linen too
        assert kinds.count("SOFTMAX") == 1, kinds
        # the mask is a clamp of the scores into [fill, fill] or (-inf, inf): MIN then MAX, nothing else
        assert kinds.count("BINARY") == (0 if mask == "none" else 2), kinds
    scores = next(op for op in program.ops if op["opcode"] == 9)
    alpha = struct.unpack("<f", struct.pack("<I", int(scores["params"][1])))[0]
    assert alpha == pytest.approx(1 / np.sqrt(qkv // heads))
    check(program, jax.jit(model), (length, d), batches=(1, 3))


class Where(nn.Module):
    where: object

    @nn.compact
    def __call__(self, x):
        mask = np.arange(12).reshape(3, 4) % 3 != 1
        return self.where(mask, nn.Dense(4)(x))


@pytest.mark.parametrize("where", [lambda m, x: jnp.where(m, x, -1e9), lambda m, x: jnp.where(m, 2.5, x),
                                   lambda m, x: jnp.where(m[0], -7.0, x)],
                         ids=["fill-false", "fill-true", "row-mask"])
def test_where_with_a_constant_mask_is_a_clamp_on_the_npu(where):
    model = Where(where)
    variables = perturb(model.init(jax.random.key(0), jnp.ones((1, 3, 5))))
    program = compile(model, variables, np.ones((2, 3, 5), np.float32), fallback="error")
    assert opcodes(program) == ["MATMUL", "BINARY", "BINARY"]
    check(program, jax.jit(lambda x: model.apply(variables, x)), (3, 5))


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_causal_encoder_matches_jax(api):
    if api == "linen":
        model = LinenEncoder(9, 16, 2, causal=True)
        variables = perturb(model.init(jax.random.key(0), jnp.ones((1, 9), jnp.int32)))
        program = compile(model, variables, np.ones((2, 9), np.int32), fallback="error")
        ref = jax.jit(lambda x: model.apply(variables, x))
    else:
        model = nnx_perturb(NnxEncoder(9, 16, 2, causal=True))
        program = compile(model, None, np.ones((2, 9), np.int32), fallback="error")
        ref = model
    assert opcodes(program).count("SOFTMAX") == 1
    check(program, ref, (9,), np.int32)


class Leading(nn.Module):
    """Axes of size 1 in front of the batch axis, as vmap leaves them: the same bytes as batch-first."""

    @nn.compact
    def __call__(self, x):                                   # [b, 4, 6]
        y = jnp.transpose(nn.Dense(8)(x)[None], (0, 1, 3, 2))  # [1, b, 8, 4]: TRANSPOSE over the item axes
        y = jnp.exp(y - y.max(axis=-1, keepdims=True))          # REDUCE, BINARY, UNARY
        z = jnp.einsum("gbij,bjk->gbik", y, x)                  # BMM: the batch pair is not axis 0 of both
        return jnp.moveaxis(z, 0, 2).reshape(z.shape[1], -1)    # [b, 8, 1, 6]: a view


def test_axes_of_size_1_in_front_of_the_batch_axis():
    model = Leading()
    variables = perturb(model.init(jax.random.key(0), jnp.ones((1, 4, 6))))
    program = compile(model, variables, np.ones((2, 4, 6), np.float32), fallback="error")
    # the moves across size-1 axes are views; the last TRANSPOSE is the einsum's own (jax puts x on the left)
    assert opcodes(program) == ["MATMUL", "TRANSPOSE", "REDUCE", "BINARY", "BMM", "TRANSPOSE"], program.report()
    check(program, jax.jit(lambda x: model.apply(variables, x)), (4, 6))


class MaskFromInput(nn.Module):
    """make_causal_mask reads x[..., 0] for its shape only: the slice feeds nothing and is dropped."""

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(16)(x)
        h = nn.MultiHeadDotProductAttention(num_heads=2)(h, mask=nn.make_causal_mask(x[..., 0]))
        return h.mean(axis=1)


def test_values_read_only_for_their_shape_are_dropped_at_trace():
    model = MaskFromInput()
    variables = perturb(model.init(jax.random.key(0), jnp.ones((1, 5, 4))))
    program = compile(model, variables, np.ones((1, 5, 4), np.float32), fallback="error")  # no gather left
    assert "GATHER" not in opcodes(program)
    check(program, jax.jit(lambda x: model.apply(variables, x)), (5, 4))
