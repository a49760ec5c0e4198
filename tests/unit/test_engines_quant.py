"""The engines' int8 ops (format 1.2) against independent integer references: MATMUL and CONV2D under
OP_FLAG_QUANT (exact int32 accumulation, requant table, I8 or F32 dst) and CONVERT."""

from __future__ import annotations

import numpy as np
import pytest
from engine_arena import Arena, make_op, refused
from firmware_bus import f32_bits, mutate
from flaxnpu_abi.hw import STATUS
from flaxnpu_abi.prog import CONVERT, DTYPE, FUNC, OP_FLAG, OPCODE
from flaxnpu_sim import kernels
from flaxnpu_sim.engines import run_op
from hypothesis import given, settings
from hypothesis import strategies as st

I8 = "i1"


def wrap32(x: np.ndarray) -> np.ndarray:
    return ((x.astype(np.int64) + (1 << 31)) % (1 << 32) - (1 << 31)).astype(np.int64)


def ref_quantize(x: np.ndarray, scale: float) -> np.ndarray:
    """Round half to even of x / scale in float32, saturated to int8, NaN to 0."""
    q = np.rint(x.astype(np.float32) / np.float32(scale)).astype(np.float64)
    q[np.isnan(q)] = 0
    return np.clip(q, -128, 127).astype(np.int8)


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 9), k=st.sampled_from([1, 7, 64, 1024, 1025, 3000]), n=st.integers(1, 9),
       seed=st.integers(0, 2**31))
def test_qmatmul_is_the_exact_integer_product(m, k, n, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, (m, k)).astype(np.int8)
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    x[0, :] = -128  # the largest products: past 1024 terms float32 would round them
    w[:, 0] = -128
    got = kernels.qmatmul(x, w)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, wrap32(x.astype(np.int64) @ w.astype(np.int64)))


def test_int32_accumulator_wraps():
    k = 140_000  # 140000 * 128 * 128 > 2^31
    x, w = np.full((1, k), -128, np.int8), np.full((k, 1), -128, np.int8)
    assert int(kernels.qmatmul(x, w)[0, 0]) == int(wrap32(np.array(k * 16384))) < 0


def quant_matmul(a: Arena, x: np.ndarray, w: np.ndarray, table: np.ndarray, dst_scale: float = 0.0,
                 act: int = FUNC.NONE, residual: np.ndarray | None = None) -> tuple[np.void, tuple]:
    m, k = x.shape
    n = w.shape[1]
    dst = a.out(m * n, dtype=I8 if dst_scale else "<f4")
    flags = OP_FLAG.QUANT | (OP_FLAG.RESIDUAL if residual is not None else 0)
    op = make_op(OPCODE.MATMUL, (m, k, n), a.put(x, dtype=I8), dst, a.put(w, dtype=I8), a.put(table), act=act,
                 flags=flags, params=(0,) * 7 + ((f32_bits(dst_scale),) if dst_scale else ()))
    if residual is not None:
        op["src3"] = a.put(residual)
    return op, dst


@pytest.mark.parametrize("dst_scale", [0.0, 0.05])
@pytest.mark.parametrize("act", [FUNC.NONE, FUNC.RELU, FUNC.GELU_TANH])
def test_quant_matmul_requantizes_per_channel(dst_scale, act):
    rng = np.random.default_rng(1)
    x = rng.integers(-128, 128, (5, 33)).astype(np.int8)
    w = rng.integers(-127, 128, (33, 7)).astype(np.int8)
    table = np.stack([rng.uniform(1e-5, 1e-4, 7), rng.normal(size=7)]).astype(np.float32)
    res = rng.normal(size=(5, 7)).astype(np.float32)
    a = Arena()
    op, dst = quant_matmul(a, x, w, table, dst_scale, act, res)
    assert run_op(op, a.segments) > 0
    acc = x.astype(np.int64) @ w.astype(np.int64)
    real = acc.astype(np.float32) * table[0] + table[1] + res
    from flaxnpu_sim.funcs import apply_func  # the activations are tested on their own (test_engines_ops)
    real = apply_func(act, real)
    if dst_scale:
        np.testing.assert_array_equal(a.get(dst, (5, 7)), ref_quantize(real, dst_scale))
    else:
        np.testing.assert_allclose(a.get(dst, (5, 7)), real, rtol=1e-6)


def naive_conv(x: np.ndarray, w: np.ndarray, stride: int, pad: int, groups: int) -> np.ndarray:
    """Integer conv by loops over output pixels: [N,H,W,C] x [KH,KW,C/g,OC] -> [N,OH,OW,OC] int64."""
    n, h, wd, c = x.shape
    kh, kw, cg, oc = w.shape
    xp = np.zeros((n, h + 2 * pad, wd + 2 * pad, c), np.int64)
    xp[:, pad:pad + h, pad:pad + wd] = x
    oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, oh, ow, oc), np.int64)
    ocg = oc // groups
    for i in range(oh):
        for j in range(ow):
            win = xp[:, i * stride:i * stride + kh, j * stride:j * stride + kw]
            for o in range(oc):
                g = o // ocg
                out[:, i, j, o] = np.einsum("nabc,abc->n", win[..., g * cg:(g + 1) * cg], w[..., o].astype(np.int64))
    return out


@pytest.mark.parametrize(("stride", "pad", "groups", "c"), [(1, 1, 1, 3), (2, 0, 2, 4), (1, 2, 4, 4), (1, 1, 1, 130)])
def test_quant_conv2d_matches_an_integer_reference(stride, pad, groups, c):
    rng = np.random.default_rng(stride + pad + groups + c)
    n, h, wd, k, oc = 2, 6, 5, 3, 8
    x = rng.integers(-128, 128, (n, h, wd, c)).astype(np.int8)
    w = rng.integers(-128, 128, (k, k, c // groups, oc)).astype(np.int8)
    table = np.stack([rng.uniform(1e-4, 1e-3, oc), rng.normal(size=oc)]).astype(np.float32)
    want_acc = naive_conv(x, w, stride, pad, groups)
    _, oh, ow, _ = want_acc.shape
    a = Arena()
    dst = a.out(n * oh * ow * oc, dtype=I8)
    op = make_op(OPCODE.CONV2D, (n, h, wd, c, oh, ow), a.put(x, dtype=I8), dst, a.put(w, dtype=I8), a.put(table),
                 act=FUNC.RELU, flags=OP_FLAG.QUANT,
                 params=(k | k << 16, oc, stride * 0x10001, pad * 0x10001, 0x10001, groups, 0, f32_bits(0.1)))
    run_op(op, a.segments)
    real = np.maximum(want_acc.astype(np.float32) * table[0] + table[1], 0)
    np.testing.assert_array_equal(a.get(dst, (n, oh, ow, oc)), ref_quantize(real, 0.1))


def test_convert_quantizes_rounds_half_even_saturates_and_zeroes_nan():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 1000, -1000, np.nan, np.inf, -np.inf, 0.74, -63.6], np.float32)
    a = Arena()
    dst = a.out(x.size, dtype=I8)
    run_op(make_op(OPCODE.CONVERT, (x.size,), a.put(x), dst, params=(f32_bits(0.5), CONVERT.QUANTIZE)), a.segments)
    assert a.get(dst, (x.size,)).tolist() == [1, 3, 5, -1, -3, 127, -128, 0, 127, -128, 1, -127]


def test_convert_dequantizes_and_applies_act():
    q = np.arange(-128, 128, dtype=np.int8)
    a = Arena()
    dst = a.out(q.size)
    op = make_op(OPCODE.CONVERT, (q.size,), a.put(q, dtype=I8), dst, act=FUNC.RELU,
                 params=(f32_bits(0.125), CONVERT.DEQUANTIZE))
    run_op(op, a.segments)
    np.testing.assert_array_equal(a.get(dst, (q.size,)), np.maximum(q.astype(np.float32) * 0.125, 0))


def good(a: Arena) -> np.void:
    rng = np.random.default_rng(0)
    op, _ = quant_matmul(a, rng.integers(-5, 5, (2, 4)), rng.integers(-5, 5, (4, 3)), np.ones((2, 3)), 0.5)
    return op


def test_good_quant_op_runs():
    a = Arena()
    assert run_op(good(a), a.segments) > 0


@pytest.mark.parametrize(("change", "status", "info"), [
    ({"flags": OP_FLAG.QUANT | OP_FLAG.BIAS}, STATUS.OP_FLAGS, 5),
    ({"params__7": 0}, STATUS.OP_DTYPE, DTYPE.I8),  # dst I8 but no scale: an F32 dst was wanted
    ({"params__7": 0xBF00_0000}, STATUS.OP_PARAM, 0xBF00_0000),  # -0.5
    ({"src1__dtype": DTYPE.F32}, STATUS.OP_DTYPE, DTYPE.F32),
    ({"src2__size": 12}, STATUS.OP_SIZE, 12),  # the table needs two rows
    ({"src0__size": 32}, STATUS.OP_SIZE, 32),  # I8 operands have a byte an element
])
def test_bad_quant_fields_are_named_and_nothing_is_written(change, status, info):
    a = Arena()
    assert refused(a, mutate(good(a), **change)) == (status, info)


def test_quant_cycles_charge_a_quarter_of_the_float_array_time():
    a = Arena()
    rng = np.random.default_rng(0)
    x, w = rng.integers(-5, 5, (64, 256)), rng.integers(-5, 5, (256, 64))
    q, _ = quant_matmul(a, x, w, np.ones((2, 64)))
    f = make_op(OPCODE.MATMUL, (64, 256, 64), a.put(x), a.out(64 * 64), a.put(w), a.put(np.ones(64)),
                flags=OP_FLAG.BIAS)
    qc, fc = run_op(q, a.segments), run_op(f, a.segments)
    epilogue = 64 + 64 * 64 // 16  # setup, then one vector pass: the bias, or the requant table
    assert (fc - epilogue) == 4 * (qc - epilogue)


def test_int8_max_pool_keeps_the_stored_values():
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (2, 5, 5, 3)).astype(np.int8)
    a = Arena()
    dst = a.out(2 * 3 * 3 * 3, dtype=I8)
    op = make_op(OPCODE.POOL, (2, 5, 5, 3, 3, 3), a.put(x, dtype=I8), dst, flags=OP_FLAG.QUANT,
                 params=(0, 2 | 2 << 16, 2 | 2 << 16, 1 | 1 << 16))  # MAX 2x2 stride 2, padding 1
    run_op(op, a.segments)
    xp = np.full((2, 6, 6, 3), -128, np.int64)
    xp[:, 1:, 1:] = x
    want = xp.reshape(2, 3, 2, 3, 2, 3).max(axis=(2, 4))
    np.testing.assert_array_equal(a.get(dst, (2, 3, 3, 3)), want)


@pytest.mark.parametrize(("change", "status"), [({"act": FUNC.RELU}, STATUS.OP_FUNC),
                                                ({"kind": 1}, STATUS.OP_PARAM)])
def test_int8_pool_is_max_without_act(change, status):
    a = Arena()
    op = make_op(OPCODE.POOL, (1, 4, 4, 2, 2, 2), a.put(np.zeros(32), dtype=I8), a.out(8, dtype=I8),
                 flags=OP_FLAG.QUANT, act=change.get("act", 0),
                 params=(change.get("kind", 0), 2 | 2 << 16, 2 | 2 << 16, 0))
    assert refused(a, op)[0] == status
