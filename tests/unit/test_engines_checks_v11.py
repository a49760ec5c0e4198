"""The engines re-check the format 1.1 ops: each bad field gives its named status (info = the value) and
nothing is written; the window geometry (implied end padding > -stride) is checked here."""

from __future__ import annotations

import numpy as np
import pytest
from engine_arena import Arena, make_op, refused
from firmware_bus import mutate
from flaxnpu_abi.hw import STATUS
from flaxnpu_abi.prog import DTYPE, OP_FLAG, OPCODE, POOL
from flaxnpu_sim.engines import run_op


def pair(lo: int, hi: int) -> int:
    return lo | hi << 16


def conv(a: Arena, **kw) -> np.void:
    """3x3 SAME conv, 2 groups, bias: [1,5,5,4] -> [1,5,5,6]."""
    op = make_op(OPCODE.CONV2D, (1, 5, 5, 4, 5, 5), a.put(np.ones(100)), a.out(150), a.put(np.ones(108)),
                 a.put(np.ones(6)), flags=OP_FLAG.BIAS, params=(pair(3, 3), 6, pair(1, 1), pair(1, 1), pair(1, 1), 2))
    return mutate(op, **kw)


def pool(a: Arena, **kw) -> np.void:
    op = make_op(OPCODE.POOL, (2, 6, 6, 3, 3, 3), a.put(np.ones(216)), a.out(54),
                 params=(POOL.MAX, pair(2, 2), pair(2, 2), 0))
    return mutate(op, **kw)


def others(a: Arena) -> dict[str, np.void]:
    idx = a.put(np.arange(4, dtype="<i4").view("<f4"))
    return {
        "layernorm": make_op(OPCODE.LAYERNORM, (3, 4), a.put(np.ones(12)), a.out(12), a.put(np.ones(4)),
                             a.put(np.zeros(4)), params=(0x3727C5AC,)),
        "bmm": make_op(OPCODE.BMM, (2, 3, 4, 5), a.put(np.ones(24)), a.out(30), a.put(np.ones(40)),
                       params=(0, 0x3F80_0000)),
        "gather": make_op(OPCODE.GATHER, (4, 7, 3), (*idx[:3], DTYPE.I32, 0), a.out(12), a.put(np.ones(21))),
        "transpose": make_op(OPCODE.TRANSPOSE, (2, 3, 4), a.put(np.ones(24)), a.out(24), params=(0x120, 3)),
    }


def test_good_ops_run():
    a = Arena()
    for op in [conv(a), pool(a), *others(a).values()]:
        assert run_op(op, a.segments) > 0


CONV_CASES = [
    (dict(params__0=pair(3, 0)), STATUS.OP_PARAM, pair(3, 0)),
    (dict(params__1=0), STATUS.OP_PARAM, 0),
    (dict(params__2=pair(0, 1)), STATUS.OP_PARAM, pair(0, 1)),
    (dict(params__4=0), STATUS.OP_PARAM, 0),
    (dict(params__5=0), STATUS.OP_PARAM, 0),
    (dict(params__5=4), STATUS.OP_PARAM, 4),  # divides C = 4, not OC = 6
    (dict(params__6=7), STATUS.OP_PARAM, 7),
    (dict(dims__4=6), STATUS.OP_SIZE, 150 * 4),  # OH 6 still implies padding >= 0; dst is then too small
    (dict(dims__4=3), STATUS.OP_DIMS, 3),  # OH 3 with pad_top 1: the bottom padding would be -1
    (dict(dims__5=1, params__2=pair(1, 2)), STATUS.OP_DIMS, 1),  # stride 2: a second window fits in W 5
    (dict(params__3=pair(3, 1)), STATUS.OP_DIMS, 5),  # pad_top 3: OH 5 ends 1 row before the input does
    (dict(flags=OP_FLAG.BIAS | OP_FLAG.RESIDUAL), STATUS.OP_DTYPE, 0),  # src3 all zero is no operand
    (dict(flags=8), STATUS.OP_FLAGS, 8),
    (dict(flags=0), STATUS.OP_RESERVED, 56),
    (dict(src3__offset=64), STATUS.OP_RESERVED, 112),
    (dict(src1__dtype=DTYPE.I32), STATUS.OP_DTYPE, DTYPE.I32),
    (dict(src1__size=4), STATUS.OP_SIZE, 4),
]


@pytest.mark.parametrize(("change", "status", "info"), CONV_CASES)
def test_conv_checks(change, status, info):
    a = Arena()
    assert refused(a, conv(a, **change)) == (status, info)


@pytest.mark.parametrize(("change", "status", "info"), [
    (dict(params__0=2), STATUS.OP_PARAM, 2),
    (dict(params__1=pair(2, 0)), STATUS.OP_PARAM, pair(2, 0)),
    (dict(params__2=0), STATUS.OP_PARAM, 0),
    (dict(params__4=1), STATUS.OP_PARAM, 1),
    (dict(dims__4=2), STATUS.OP_DIMS, 2),  # 6 rows, 2x2 stride 2: 2 windows leave 2 rows unread
    (dict(flags=OP_FLAG.BIAS), STATUS.OP_FLAGS, 1),
    (dict(dims__3=4), STATUS.OP_SIZE, 216 * 4),
])
def test_pool_checks(change, status, info):
    a = Arena()
    assert refused(a, pool(a, **change)) == (status, info)


@pytest.mark.parametrize("opcode", [OPCODE.CONV2D, OPCODE.POOL])
@pytest.mark.parametrize(("k", "s", "d", "pad"), [(2, 2, 1, 0), (3, 2, 1, 1), (2, 3, 1, 0), (3, 3, 2, 1), (1, 1, 1, 0)])
def test_window_geometry_boundary(opcode, k, s, d, pad):
    """Implied end padding 1-stride runs (its last stride-1 rows unread); -stride, where one more window
    would end inside the input, is OP_DIMS with info = the output length."""
    d = d if opcode == OPCODE.CONV2D else 1   # POOL has no dilation
    out, c = 3, 2
    for end, extra in ((1 - s, 0), (-s, 1)):
        size = out * s + (k - 1) * d - pad + extra
        a = Arena()
        x, dst = a.put(np.ones(size * size * c)), a.out(out * out * c)
        if opcode == OPCODE.CONV2D:
            op = make_op(opcode, (1, size, size, c, out, out), x, dst, a.put(np.ones(k * k * c * c)),
                         params=(pair(k, k), c, pair(s, s), pair(pad, pad), pair(d, d), 1))
        else:
            op = make_op(opcode, (1, size, size, c, out, out), x, dst,
                         params=(POOL.AVG, pair(k, k), pair(s, s), pair(pad, pad)))
        assert (out - 1) * s + (k - 1) * d + 1 - size - pad == end
        if extra:
            assert refused(a, op) == (STATUS.OP_DIMS, out)
        else:
            assert run_op(op, a.segments) > 0


@pytest.mark.parametrize(("name", "change", "status", "info"), [
    ("layernorm", dict(params__0=0xBF80_0000), STATUS.OP_PARAM, 0xBF80_0000),
    ("layernorm", dict(params__0=0x7F80_0000), STATUS.OP_PARAM, 0x7F80_0000),
    ("layernorm", dict(src2=(0, 0, 0, 0, 0)), STATUS.OP_DTYPE, 0),
    ("layernorm", dict(flags=OP_FLAG.RESIDUAL), STATUS.OP_FLAGS, 2),
    ("bmm", dict(params__0=4), STATUS.OP_PARAM, 4),
    ("bmm", dict(params__1=0), STATUS.OP_PARAM, 0),
    ("bmm", dict(params__1=0xFFC0_0000), STATUS.OP_PARAM, 0xFFC0_0000),
    ("bmm", dict(dims__2=5), STATUS.OP_SIZE, 96),
    ("gather", dict(src0__dtype=DTYPE.F32), STATUS.OP_DTYPE, DTYPE.F32),
    ("gather", dict(src1__dtype=DTYPE.I32), STATUS.OP_DTYPE, DTYPE.I32),
    ("gather", dict(params__0=1), STATUS.OP_PARAM, 1),
    ("transpose", dict(params__1=0), STATUS.OP_PARAM, 0),
    ("transpose", dict(params__1=7, params__0=0xFFFF_FFFF), STATUS.OP_PARAM, 7),
    ("transpose", dict(params__0=0x110), STATUS.OP_PARAM, 0x110),
    ("transpose", dict(params__0=0x1120), STATUS.OP_PARAM, 0x1120),
    ("transpose", dict(dims__3=1), STATUS.OP_DIMS, 1),
    ("transpose", dict(params__1=2), STATUS.OP_PARAM, 0x120),  # axis 2 is past a rank of 2
])
def test_other_checks(name, change, status, info):
    a = Arena()
    assert refused(a, mutate(others(a)[name], **change)) == (status, info)
