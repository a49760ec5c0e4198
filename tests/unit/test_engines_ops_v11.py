"""The format 1.1 engine ops against independent references: jax.lax convolutions and reduce_window,
jnp ops, float64 numpy. Many shapes (hypothesis) for the window ops; every fused epilogue."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from engine_arena import Arena, make_op
from flaxnpu_abi import cycles
from flaxnpu_abi.prog import DTYPE, FUNC, OP_FLAG, OPCODE, POOL, REDUCE
from flaxnpu_sim.engines import run_op
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

jax.config.update("jax_default_matmul_precision", "highest")
RNG = np.random.default_rng(4)
WINDOWS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def pair(lo: int, hi: int) -> int:
    return lo | hi << 16


def f32_bits(x: float) -> int:
    return int(np.array(x, "<f4").view("<u4"))


def data(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def close(got: np.ndarray, want, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    np.testing.assert_allclose(got, np.asarray(want, np.float32), rtol=rtol, atol=atol)


def put_i32(a: Arena, idx: np.ndarray) -> tuple:
    off, size, seg, _, flags = a.put(np.asarray(idx, "<i4").view("<f4"))
    return (off, size, seg, DTYPE.I32, flags)


def implied_out(size: int, k: int, s: int, d: int, pad: int, extra: int) -> int:
    """Smallest output length the engines take (implied end padding > -stride: the windows may stop up to
    stride-1 rows before the end), plus `extra` more windows."""
    eff = (k - 1) * d + 1
    return max(1, (size + pad - eff) // s + 1) + extra


def end_pad(size: int, out: int, k: int, s: int, d: int, pad: int) -> int:
    """The reference's bottom/right padding: what `out` windows imply, or 0 where they stop short of the
    end (lax then drops the unread rows itself, as for VALID)."""
    return max(0, (out - 1) * s + (k - 1) * d + 1 - size - pad)


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    c, ocg = groups * draw(st.integers(1, 3)), draw(st.integers(1, 3))
    n, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 9)), draw(st.integers(1, 9))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw, dh, dw = (draw(st.integers(1, 3)) for _ in range(4))
    pt, pl = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    oh = implied_out(h, kh, sh, dh, pt, draw(st.integers(0, 1)))
    ow = implied_out(w, kw, sw, dw, pl, draw(st.integers(0, 1)))
    return dict(n=n, h=h, w=w, c=c, oc=groups * ocg, kh=kh, kw=kw, s=(sh, sw), pad=(pt, pl), dil=(dh, dw),
                groups=groups, oh=oh, ow=ow, bias=draw(st.booleans()), residual=draw(st.booleans()),
                act=draw(st.sampled_from([FUNC.NONE, FUNC.RELU, FUNC.TANH])))


def lax_conv(x, w, case):
    (sh, sw), (pt, pl), (dh, dw) = case["s"], case["pad"], case["dil"]
    pb = end_pad(case["h"], case["oh"], case["kh"], sh, dh, pt)
    pr = end_pad(case["w"], case["ow"], case["kw"], sw, dw, pl)
    return np.asarray(jax.lax.conv_general_dilated(
        x, w, window_strides=(sh, sw), padding=((pt, pb), (pl, pr)), rhs_dilation=(dh, dw),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=case["groups"],
        precision=jax.lax.Precision.HIGHEST))


def run_conv(case):
    a = Arena()
    n, oh, ow, oc = case["n"], case["oh"], case["ow"], case["oc"]
    x = data(n, case["h"], case["w"], case["c"])
    w = data(case["kh"], case["kw"], case["c"] // case["groups"], oc)
    b, r = data(oc), data(n, oh, ow, oc)
    flags = (OP_FLAG.BIAS if case["bias"] else 0) | (OP_FLAG.RESIDUAL if case["residual"] else 0)
    dst = a.out(n * oh * ow * oc)
    op = make_op(OPCODE.CONV2D, (n, case["h"], case["w"], case["c"], oh, ow), a.put(x), dst, a.put(w),
                 a.put(b) if case["bias"] else None, act=case["act"], flags=flags,
                 params=(pair(case["kh"], case["kw"]), oc, pair(*case["s"]), pair(*case["pad"]),
                         pair(*case["dil"]), case["groups"]))
    if case["residual"]:
        op["src3"] = a.put(r)
    cyc = run_op(op, a.segments)
    want = lax_conv(x, w, case) + (b if case["bias"] else 0) + (r if case["residual"] else 0)
    want = {FUNC.NONE: want, FUNC.RELU: np.maximum(want, 0), FUNC.TANH: np.tanh(want)}[case["act"]]
    k = case["kh"] * case["kw"] * case["c"] // case["groups"]
    close(a.get(dst, (n, oh, ow, oc)), want, atol=1e-5 * math.sqrt(k) + 1e-5)
    return cyc


@WINDOWS
@given(case=conv_cases())
def test_conv2d_matches_lax(case):
    assert run_conv(case) > 0


@pytest.mark.parametrize("case", [
    # flax nn.Conv(16, (3, 3)) SAME on 8x8x1, a stride-2 SAME conv, a depthwise 3x3, a 1x1 projection
    dict(n=2, h=8, w=8, c=1, oc=16, kh=3, kw=3, s=(1, 1), pad=(1, 1), dil=(1, 1), groups=1, oh=8, ow=8),
    dict(n=2, h=8, w=8, c=4, oc=8, kh=3, kw=3, s=(2, 2), pad=(0, 0), dil=(1, 1), groups=1, oh=4, ow=4),
    dict(n=1, h=7, w=5, c=6, oc=12, kh=3, kw=3, s=(1, 1), pad=(1, 1), dil=(1, 1), groups=6, oh=7, ow=5),
    dict(n=3, h=4, w=4, c=8, oc=4, kh=1, kw=1, s=(1, 1), pad=(0, 0), dil=(1, 1), groups=1, oh=4, ow=4),
    # padding larger than the kernel: whole windows in the padding give the bias alone
    dict(n=1, h=2, w=2, c=2, oc=3, kh=2, kw=2, s=(1, 1), pad=(3, 2), dil=(1, 1), groups=1, oh=6, ow=5),
], ids=["same", "stride2", "depthwise", "1x1", "pad_past_kernel"])
def test_conv2d_model_shapes(case):
    cyc = run_conv(case | dict(bias=True, residual=True, act=FUNC.RELU))
    params = (pair(case["kh"], case["kw"]), case["oc"], 0, 0, 0, case["groups"])
    dims = (case["n"], case["h"], case["w"], case["c"], case["oh"], case["ow"])
    assert cyc == cycles.op_cycles(OPCODE.CONV2D, dims, FUNC.RELU, True, params, True)


def test_conv2d_chunks_output_rows(monkeypatch):
    """A conv whose patches do not fit one gather is computed a few output rows at a time."""
    from flaxnpu_sim import kernels
    monkeypatch.setattr(kernels, "PATCH_ELEMS", 200)
    run_conv(dict(n=2, h=6, w=5, c=3, oc=4, kh=3, kw=2, s=(1, 2), pad=(1, 0), dil=(2, 1), groups=1, oh=4, ow=3,
                  bias=True, residual=False, act=FUNC.NONE))


@st.composite
def pool_cases(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    pt, pl = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    return dict(n=draw(st.integers(1, 3)), h=h, w=w, c=draw(st.integers(1, 4)), k=(kh, kw), s=(sh, sw),
                pad=(pt, pl), oh=implied_out(h, kh, sh, 1, pt, draw(st.integers(0, 2))),
                ow=implied_out(w, kw, sw, 1, pl, draw(st.integers(0, 2))),
                kind=draw(st.sampled_from(list(POOL))))


def run_pool(case):
    a = Arena()
    n, h, w, c, oh, ow = (case[k] for k in ("n", "h", "w", "c", "oh", "ow"))
    (kh, kw), (sh, sw), (pt, pl) = case["k"], case["s"], case["pad"]
    x = data(n, h, w, c)
    dst = a.out(n * oh * ow * c)
    op = make_op(OPCODE.POOL, (n, h, w, c, oh, ow), a.put(x), dst,
                 params=(case["kind"], pair(kh, kw), pair(sh, sw), pair(pt, pl)))
    cyc = run_op(op, a.segments)
    pads = ((0, 0), (pt, end_pad(h, oh, kh, sh, 1, pt)), (pl, end_pad(w, ow, kw, sw, 1, pl)), (0, 0))
    if case["kind"] == POOL.MAX:
        want = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, kh, kw, 1), (1, sh, sw, 1), pads)
    else:
        want = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, kh, kw, 1), (1, sh, sw, 1), pads) / (kh * kw)
    close(a.get(dst, (n, oh, ow, c)), want)
    return cyc


@WINDOWS
@given(case=pool_cases())
def test_pool_matches_reduce_window(case):
    assert run_pool(case) > 0


def test_pool_like_flax():
    """flax max_pool / avg_pool (2x2, stride 2, VALID) on the CNN's 8x8x16 activations."""
    import flax.linen as nn
    a = Arena()
    x = data(4, 8, 8, 16)
    for kind, fn in ((POOL.MAX, nn.max_pool), (POOL.AVG, nn.avg_pool)):
        dst = a.out(4 * 4 * 4 * 16)
        run_op(make_op(OPCODE.POOL, (4, 8, 8, 16, 4, 4), a.put(x), dst,
                       params=(kind, pair(2, 2), pair(2, 2), 0)), a.segments)
        close(a.get(dst, (4, 4, 4, 16)), fn(x, (2, 2), strides=(2, 2)))
    # SAME avg_pool 3x3 stride 1 counts the padding (count_include_pad=True)
    dst = a.out(4 * 8 * 8 * 16)
    run_op(make_op(OPCODE.POOL, (4, 8, 8, 16, 8, 8), a.put(x), dst,
                   params=(POOL.AVG, pair(3, 3), pair(1, 1), pair(1, 1))), a.segments)
    close(a.get(dst, (4, 8, 8, 16)), nn.avg_pool(x, (3, 3), strides=(1, 1), padding="SAME"))


@pytest.mark.parametrize(("k", "s", "d", "pad"), [(2, 2, 1, 0), (3, 2, 1, 1), (2, 3, 1, 0), (3, 3, 2, 1), (1, 4, 1, 0)])
def test_windows_may_stop_short_of_the_end(k, s, d, pad):
    """Implied end padding -stride+1, the engines' limit: the last stride-1 rows and columns go unread,
    like lax's VALID on a size the stride does not divide (max_pool 2x2 stride 2 on 7x7 gives 3x3)."""
    out = 3
    size = out * s + (k - 1) * d - pad   # implied end padding (out-1)*s + (k-1)*d + 1 - size - pad = 1 - s
    base = dict(n=2, h=size, w=size, oh=out, ow=out, s=(s, s), pad=(pad, pad))
    run_conv(base | dict(c=2, oc=3, kh=k, kw=k, dil=(d, d), groups=1, bias=True, residual=False, act=FUNC.NONE))
    if d == 1:
        for kind in POOL:
            run_pool(base | dict(c=2, k=(k, k), kind=kind))


def test_max_pool_window_all_padding_is_minus_inf():
    a = Arena()
    x = data(1, 2, 2, 1)
    dst = a.out(4 * 4)
    run_op(make_op(OPCODE.POOL, (1, 2, 2, 1, 4, 4), a.put(x), dst,
                   params=(POOL.MAX, pair(1, 1), pair(1, 1), pair(1, 1))), a.segments)
    got = a.get(dst, (4, 4))
    assert np.isneginf(got[0]).all() and np.isneginf(got[:, 0]).all() and np.isneginf(got[3]).all()
    close(got[1:3, 1:3], x[0, :, :, 0])


@pytest.mark.parametrize(("r", "c", "eps"), [(1, 1, 1e-6), (7, 32, 1e-6), (64, 100, 1e-5), (3, 5, 0.0)])
def test_layernorm_matches_flax(r, c, eps):
    import flax.linen as nn
    a = Arena()
    x = data(r, c) * 3 + 1
    g, b = data(c), data(c)
    if c == 1:
        eps = 1e-6  # a single column has variance 0
    dst = a.out(r * c)
    run_op(make_op(OPCODE.LAYERNORM, (r, c), a.put(x), dst, a.put(g), a.put(b), act=FUNC.GELU_TANH,
                   params=(f32_bits(eps),)), a.segments)
    want = nn.LayerNorm(epsilon=eps).apply({"params": {"scale": g, "bias": b}}, x)
    close(a.get(dst, (r, c)), jax.nn.gelu(want), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("trans", [0, 1, 2, 3])
@pytest.mark.parametrize(("b", "m", "k", "n"), [(1, 1, 1, 1), (3, 5, 7, 2), (32 * 4, 64, 8, 64)])
def test_bmm(b, m, k, n, trans):
    a = Arena(1 << 23)
    x, y = data(b, m, k), data(b, k, n)
    xs = x.transpose(0, 2, 1) if trans & 1 else x
    ys = y.transpose(0, 2, 1) if trans & 2 else y
    dst = a.out(b * m * n)
    alpha = 1 / math.sqrt(k)
    cyc = run_op(make_op(OPCODE.BMM, (b, m, k, n), a.put(xs), dst, a.put(ys), act=FUNC.NONE,
                         params=(trans, f32_bits(alpha))), a.segments)
    want = jnp.einsum("bmk,bkn->bmn", x, y, precision="highest") * np.float32(alpha)
    close(a.get(dst, (b, m, n)), want, atol=1e-5 * math.sqrt(k))
    assert cyc == cycles.op_cycles(OPCODE.BMM, (b, m, k, n), FUNC.NONE, params=(trans, f32_bits(alpha)))


def test_gather_wraps_and_fills_like_jnp_take():
    a = Arena()
    v, d = 17, 5
    table = data(v, d)
    idx = np.array([0, 16, -1, -17, 17, -18, 3, 2**31 - 1, -2**31], np.int32)
    dst = a.out(len(idx) * d)
    run_op(make_op(OPCODE.GATHER, (len(idx), v, d), put_i32(a, idx), dst, a.put(table), act=FUNC.ABS), a.segments)
    want = np.abs(jnp.take(table, idx, axis=0))  # default mode "fill": NaN rows out of [-V, V)
    got = a.get(dst, (len(idx), d))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    close(got[~np.isnan(got)], want[~np.isnan(want)], rtol=0, atol=0)


@pytest.mark.parametrize(("shape", "perm"), [
    ((5,), (0,)), ((3, 4), (1, 0)), ((2, 3, 4), (0, 2, 1)), ((2, 3, 4, 5), (0, 2, 1, 3)),
    ((2, 1, 3, 2, 2, 3), (5, 3, 1, 0, 4, 2)),
])
def test_transpose(shape, perm):
    a = Arena()
    x = data(*shape)
    dst = a.out(x.size)
    run_op(make_op(OPCODE.TRANSPOSE, shape, a.put(x), dst, act=FUNC.NEG,
                   params=(sum(p << 4 * i for i, p in enumerate(perm)), len(shape))), a.segments)
    close(a.get(dst, tuple(shape[p] for p in perm)), -np.transpose(x, perm), rtol=0, atol=0)


def test_reduce_mean_is_sum_over_c():
    a = Arena()
    x = data(6, 33)
    dst = a.out(6)
    cyc = run_op(make_op(OPCODE.REDUCE, (6, 33), a.put(x), dst, params=(REDUCE.MEAN,)), a.segments)
    close(a.get(dst, (6,)), x.astype(np.float64).sum(axis=1) / 33)
    assert cyc == cycles.op_cycles(OPCODE.REDUCE, (6, 33), FUNC.NONE, params=(REDUCE.MEAN,))


@pytest.mark.parametrize("bias", [False, True])
def test_matmul_residual(bias):
    a = Arena()
    x, w, b, r = data(5, 7), data(7, 3), data(3), data(5, 3)
    dst = a.out(15)
    op = make_op(OPCODE.MATMUL, (5, 7, 3), a.put(x), dst, a.put(w), a.put(b) if bias else None, act=FUNC.RELU,
                 flags=OP_FLAG.RESIDUAL | (OP_FLAG.BIAS if bias else 0))
    op["src3"] = a.put(r)
    cyc = run_op(op, a.segments)
    want = x.astype(np.float64) @ w + (b if bias else 0) + r
    close(a.get(dst, (5, 3)), np.maximum(want, 0))
    assert cyc == cycles.op_cycles(OPCODE.MATMUL, (5, 7, 3), FUNC.RELU, bias, residual=True)
    assert cyc > cycles.op_cycles(OPCODE.MATMUL, (5, 7, 3), FUNC.RELU, bias)


def test_residual_in_place_on_dst():
    """dst and src3 the same buffer (x = x + f(x)), as a compiler may emit for a residual block."""
    a = Arena()
    x, w, r = data(4, 4), data(4, 4), data(4, 4)
    xr, rr = a.put(x), a.put(r)
    op = make_op(OPCODE.MATMUL, (4, 4, 4), xr, rr, a.put(w), flags=OP_FLAG.RESIDUAL)
    op["src3"] = rr
    run_op(op, a.segments)
    close(a.get(rr, (4, 4)), x.astype(np.float64) @ w + r)
