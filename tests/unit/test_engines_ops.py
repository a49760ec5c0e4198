"""Engines against float64 numpy references: every opcode, function, binop and broadcast mode."""

import math

import numpy as np
import pytest
from engine_arena import Arena, make_op
from flaxnpu_abi import cycles
from flaxnpu_abi.prog import BCAST, BINOP, FUNC, OP_FLAG, OPCODE, REDUCE
from flaxnpu_sim.engines import run_op

RNG = np.random.default_rng(0)
_erf = np.vectorize(math.erf)

REF_FUNCS = {
    FUNC.NONE: lambda x: x,
    FUNC.RELU: lambda x: np.maximum(x, 0),
    FUNC.GELU_TANH: lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    FUNC.GELU_ERF: lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2))),
    FUNC.TANH: np.tanh,
    FUNC.SIGMOID: lambda x: 1 / (1 + np.exp(-x)),
    FUNC.EXP: np.exp,
    FUNC.LOG: np.log,
    FUNC.NEG: np.negative,
    FUNC.SQRT: np.sqrt,
    FUNC.RSQRT: lambda x: 1 / np.sqrt(x),
    FUNC.SQUARE: np.square,
    FUNC.ABS: np.abs,
    FUNC.ERF: _erf,
}
POSITIVE_ONLY = {FUNC.LOG, FUNC.SQRT, FUNC.RSQRT}
REF_BINOPS = {BINOP.ADD: np.add, BINOP.SUB: np.subtract, BINOP.MUL: np.multiply, BINOP.DIV: np.divide,
              BINOP.MAX: np.maximum, BINOP.MIN: np.minimum, BINOP.POW: np.power}
BCAST_SHAPE = {BCAST.FULL: lambda r, c: (r, c), BCAST.ROW: lambda r, c: (1, c),
               BCAST.COL: lambda r, c: (r, 1), BCAST.SCALAR: lambda r, c: (1, 1)}


def close(got, want, rtol=2e-6, atol=2e-6):
    np.testing.assert_allclose(got, want.astype(np.float32), rtol=rtol, atol=atol)


def data(shape, func=FUNC.NONE):
    x = RNG.standard_normal(shape).astype(np.float32) * 2
    return np.abs(x) + np.float32(0.1) if func in POSITIVE_ONLY else x


@pytest.mark.parametrize("func", list(FUNC))
def test_unary(func):
    a = Arena()
    x = data((1000,), func)
    x[:4] = [0.0, 1e-3, -1e-3, 5.0] if func not in POSITIVE_ONLY else [0.1, 1e-3, 100.0, 5.0]
    src, dst = a.put(x), a.out(1000)
    cyc = run_op(make_op(OPCODE.UNARY, (1000,), src, dst, params=(func,)), a.segments)
    close(a.get(dst, (1000,)), REF_FUNCS[func](x.astype(np.float64)))
    assert cyc == cycles.op_cycles(OPCODE.UNARY, (1000,), FUNC.NONE)


@pytest.mark.parametrize("act", [FUNC.NONE, FUNC.RELU, FUNC.GELU_ERF, FUNC.TANH])
@pytest.mark.parametrize(("m", "k", "n"), [(1, 1, 1), (3, 17, 5), (32, 64, 16), (7, 300, 33)])
@pytest.mark.parametrize("bias", [False, True])
def test_matmul(m, k, n, act, bias):
    a = Arena()
    x, w, b = data((m, k)), data((k, n)), data((n,))
    refs = {"src0": a.put(x), "src1": a.put(w), "src2": a.put(b) if bias else None}
    dst = a.out(m * n)
    op = make_op(OPCODE.MATMUL, (m, k, n), refs["src0"], dst, refs["src1"], refs["src2"], act=act,
                 flags=OP_FLAG.BIAS if bias else 0)
    cyc = run_op(op, a.segments)
    want = x.astype(np.float64) @ w.astype(np.float64) + (b if bias else 0)
    close(a.get(dst, (m, n)), REF_FUNCS[act](want), rtol=1e-5, atol=1e-5 * math.sqrt(k))
    assert cyc == cycles.op_cycles(OPCODE.MATMUL, (m, k, n), act, bias)
    assert cyc >= -(-m // 16) * -(-n // 16) * k


@pytest.mark.parametrize("binop", list(BINOP))
@pytest.mark.parametrize("b0", list(BCAST))
@pytest.mark.parametrize("b1", list(BCAST))
def test_binary(binop, b0, b1):
    a = Arena()
    r, c = 5, 7
    x, y = data(BCAST_SHAPE[b0](r, c)), data(BCAST_SHAPE[b1](r, c))
    if binop == BINOP.POW:
        x = np.abs(x) + np.float32(0.5)
    if binop == BINOP.DIV:
        y = np.where(np.abs(y) < 0.1, np.float32(1), y)
    s0, s1, dst = a.put(x), a.put(y), a.out(r * c)
    run_op(make_op(OPCODE.BINARY, (r, c), s0, dst, s1, params=(binop, b0, b1)), a.segments)
    want = np.broadcast_to(REF_BINOPS[binop](x.astype(np.float64), y.astype(np.float64)), (r, c))
    close(a.get(dst, (r, c)), want, rtol=1e-5)


@pytest.mark.parametrize("act", [FUNC.NONE, FUNC.LOG])
def test_softmax_is_stable_and_applies_act(act):
    a = Arena()
    x = data((6, 50)) * 10
    x[0] = 1000.0  # would overflow exp without the max shift
    if act == FUNC.NONE:  # (log of a float32 underflow is -inf where float64 is finite: not compared)
        x[1, :3] = [-1e30, 88.0, 89.0]
    else:
        x = x / 10
    src, dst = a.put(x), a.out(300)
    run_op(make_op(OPCODE.SOFTMAX, (6, 50), src, dst, act=act), a.segments)
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(axis=1, keepdims=True))
    want = e / e.sum(axis=1, keepdims=True)
    got = a.get(dst, (6, 50))
    close(got, REF_FUNCS[act](want), rtol=1e-5, atol=1e-7 if act == FUNC.NONE else 1e-5)
    assert np.isfinite(got[0]).all()


@pytest.mark.parametrize("red", list(REDUCE))
def test_reduce(red):
    a = Arena()
    x = data((9, 130))
    src, dst = a.put(x), a.out(9)
    run_op(make_op(OPCODE.REDUCE, (9, 130), src, dst, params=(red,), act=FUNC.ABS), a.segments)
    ref = {REDUCE.SUM: np.sum, REDUCE.MAX: np.max, REDUCE.MIN: np.min, REDUCE.MEAN: np.mean}[red]
    close(a.get(dst, (9,)), np.abs(ref(x.astype(np.float64), axis=1)), rtol=1e-5, atol=1e-5)


def test_in_place_ops():
    a = Arena()
    x = data((64,))
    ref = a.put(x)
    run_op(make_op(OPCODE.UNARY, (64,), ref, ref, params=(FUNC.NONE,)), a.segments)
    close(a.get(ref, (64,)), x.astype(np.float64))
    run_op(make_op(OPCODE.BINARY, (8, 8), ref, ref, ref, params=(BINOP.ADD, BCAST.FULL, BCAST.FULL)), a.segments)
    close(a.get(ref, (64,)), 2 * x.astype(np.float64))


def test_matmul_accepts_page_list_operands():
    """Operands that straddle non-adjacent pages are gathered and scattered correctly."""
    from flaxnpu_abi import hw
    from flaxnpu_abi.hw import SEG_FLAG
    from flaxnpu_sim.memory import AnonymousMemory
    from flaxnpu_sim.mmu import Segments
    from segtable import write_pages, write_table

    mem = AnonymousMemory(1 << 20)
    pages = [mem.base + 0x10000 + p * hw.PAGE_SIZE for p in (5, 1, 3, 0, 2, 4)]
    write_pages(mem, mem.base + 0x1000, pages)
    write_table(mem, mem.base, [(mem.base + 0x1000, 6 * hw.PAGE_SIZE, SEG_FLAG.READ | SEG_FLAG.WRITE | SEG_FLAG.PAGES)])
    segs = Segments.load(mem, mem.base, 1)
    x, w = data((40, 30)), data((30, 20))
    segs.write_array(0, 100, x)
    segs.write_array(0, 100 + x.nbytes, w)
    dst_off = 8192 - 40
    op = make_op(OPCODE.MATMUL, (40, 30, 20), (100, x.nbytes, 0, 1, 0), (dst_off, 3200, 0, 1, 0),
                 (100 + x.nbytes, w.nbytes, 0, 1, 0))
    run_op(op, segs)
    close(segs.ndarray(0, dst_off, 800, "<f4").reshape(40, 20), x.astype(np.float64) @ w, rtol=1e-5, atol=1e-5)
