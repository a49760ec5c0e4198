"""The engines re-check every field of an op: each bad field gives its named status and touches nothing;
random op records and random segment tables never do anything else (hypothesis)."""

import numpy as np
import pytest
from engine_arena import Arena, make_op
from flaxnpu_abi import hw, prog
from flaxnpu_abi.hw import SEG_FLAG, STATUS
from flaxnpu_abi.prog import BCAST, BINOP, FUNC, OP_FLAG, OPCODE
from flaxnpu_sim.errors import EngineError
from flaxnpu_sim.memory import AnonymousMemory
from flaxnpu_sim.mmu import Segments
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from segtable import write_pages, write_table


def good_matmul(a):
    x, w, b = a.put(np.ones((4, 8))), a.put(np.ones((8, 2)), seg=1), a.put(np.ones(2))
    return make_op(OPCODE.MATMUL, (4, 8, 2), x, a.out(8, seg=2), w, b, flags=OP_FLAG.BIAS, act=FUNC.RELU)


def set_(field, value):
    def f(op):
        names = field.split(".")
        tgt = op
        for n in names[:-1]:
            tgt = tgt[n]
        last = names[-1]
        if last.isdigit():
            tgt[int(last)] = value
        else:
            tgt[last] = value
    return f


MUTATIONS = [
    (set_("opcode", 0), STATUS.OP_OPCODE, 0),
    (set_("opcode", max(OPCODE) + 1), STATUS.OP_OPCODE, max(OPCODE) + 1),
    (set_("act", 14), STATUS.OP_FUNC, 14),
    (set_("flags", 8), STATUS.OP_FLAGS, 8),
    (set_("flags", 5), STATUS.OP_FLAGS, 5),  # QUANT's table holds the bias: BIAS must be clear
    (set_("flags", 4), STATUS.OP_DTYPE, prog.DTYPE.F32),  # QUANT: src0 must be I8
    (set_("flags", 3), STATUS.OP_DTYPE, 0),  # RESIDUAL: src3 is used, and all-zero is no F32 operand
    (set_("flags", 0x81), STATUS.OP_FLAGS, 0x81),
    (set_("scale_mask", 1), STATUS.OP_FLAGS, 1),
    (set_("reserved0", 1), STATUS.OP_RESERVED, 6),
    (set_("reserved1", 1), STATUS.OP_RESERVED, 124),
    (set_("src3.size", 4), STATUS.OP_RESERVED, 112),  # src3 without RESIDUAL
    (set_("params.0", 1), STATUS.OP_PARAM, 1),
    (set_("params.7", 9), STATUS.OP_PARAM, 9),
    (set_("dims.0", 0), STATUS.OP_DIMS, 0),
    (set_("dims.1", prog.MAX_DIM + 1), STATUS.OP_DIMS, prog.MAX_DIM + 1),
    (set_("dims.3", 1), STATUS.OP_DIMS, 1),
    (set_("src0.seg", 3), STATUS.OP_SEGMENT, 3),
    (set_("src0.dtype", prog.DTYPE.I8), STATUS.OP_DTYPE, prog.DTYPE.I8),
    (set_("src1.flags", prog.REF_FLAG.SCALED), STATUS.OP_FLAGS, 1),
    (set_("src0.seg", 2), STATUS.OP_RIGHTS, 2),
    (set_("dst.seg", 1), STATUS.OP_RIGHTS, 1),
    (set_("src0.offset", 0xFFFF_FFE0), STATUS.OP_BOUNDS, 0xFFFF_FFE0),
    (set_("src0.size", 0xFFFF_FFFC), STATUS.OP_BOUNDS, 0),
    (set_("src0.size", 64), STATUS.OP_SIZE, 64),
    (set_("src2.size", 4), STATUS.OP_SIZE, 4),
    (set_("dims.2", 3), STATUS.OP_SIZE, 64),  # src1 is 8x2, N=3 wants 8x3
    (set_("flags", 0), STATUS.OP_RESERVED, 56),  # no BIAS: src2 must be all zero
]


@pytest.mark.parametrize(("mutate", "status", "info"), MUTATIONS)
def test_bad_field_is_named_and_nothing_is_written(mutate, status, info):
    a = Arena()
    op = good_matmul(a)
    run_op_ok = op.copy()
    mutate(op)
    before = a.mem.read(a.mem.base, a.mem.size)
    with pytest.raises(EngineError) as e:
        from flaxnpu_sim.engines import run_op
        run_op(op, a.segments)
    assert (e.value.status, e.value.info) == (status, info)
    assert a.mem.read(a.mem.base, a.mem.size) == before
    assert run_op(run_op_ok, a.segments) > 0  # the unmutated op is fine


@pytest.mark.parametrize(("opcode", "params", "status", "info"), [
    (OPCODE.BINARY, (7, 0, 0), STATUS.OP_PARAM, 7),
    (OPCODE.BINARY, (BINOP.ADD, 4, 0), STATUS.OP_PARAM, 4),
    (OPCODE.BINARY, (BINOP.ADD, 0, 0, 1), STATUS.OP_PARAM, 1),
    (OPCODE.UNARY, (14,), STATUS.OP_PARAM, 14),
    (OPCODE.REDUCE, (4,), STATUS.OP_PARAM, 4),
    (OPCODE.SOFTMAX, (1,), STATUS.OP_PARAM, 1),
])
def test_params(opcode, params, status, info):
    a = Arena()
    src = a.put(np.ones(4))
    dims = (4,) if opcode == OPCODE.UNARY else (2, 2)
    op = make_op(opcode, dims, src, a.out(4), src if opcode == OPCODE.BINARY else None, params=params)
    with pytest.raises(EngineError) as e:
        from flaxnpu_sim.engines import run_op
        run_op(op, a.segments)
    assert (e.value.status, e.value.info) == (status, info)


def test_bias_flag_only_on_matmul():
    a = Arena()
    src = a.put(np.ones(4))
    op = make_op(OPCODE.UNARY, (4,), src, a.out(4), flags=OP_FLAG.BIAS)
    from flaxnpu_sim.engines import run_op
    with pytest.raises(EngineError) as e:
        run_op(op, a.segments)
    assert e.value.status == STATUS.OP_FLAGS


def test_binary_broadcast_sizes_are_checked():
    a = Arena()
    full, row = a.put(np.ones(6)), a.put(np.ones(3))
    from flaxnpu_sim.engines import run_op
    ok = make_op(OPCODE.BINARY, (2, 3), full, a.out(6), row, params=(BINOP.ADD, BCAST.FULL, BCAST.ROW))
    run_op(ok, a.segments)
    bad = make_op(OPCODE.BINARY, (2, 3), full, a.out(6), row, params=(BINOP.ADD, BCAST.FULL, BCAST.COL))
    with pytest.raises(EngineError) as e:
        run_op(bad, a.segments)
    assert (e.value.status, e.value.info) == (STATUS.OP_SIZE, 12)


# ------------------------------------------------------------------------------------ fuzzing

BASE = 0x1000_0000
MEM_SIZE = 0x40000
DATA = BASE + 0x8000
CANARY = 0xA5


@st.composite
def seg_tables(draw):
    n = draw(st.integers(1, 4))
    entries, pages_for = [], {}
    for i in range(n):
        flags = draw(st.sampled_from([3, 3, 3, 1, 2]))
        if draw(st.booleans()):
            npages = draw(st.integers(1, 4))
            pages = draw(st.lists(st.integers(0, 40), min_size=npages, max_size=npages))
            size = draw(st.integers((npages - 1) * 4096 + 1, npages * 4096))
            pages_for[i] = [DATA + p * 4096 for p in pages]
            entries.append((BASE + 0x1000 + i * 0x100, size, flags | SEG_FLAG.PAGES))
        else:
            start = draw(st.integers(0, 40 * 4096 - 64))
            size = draw(st.integers(1, 40 * 4096 - start))
            entries.append((DATA + start, size, flags))
    return entries, pages_for


U32S = st.one_of(st.integers(0, 256), st.sampled_from([0xFFFF_FFFC, 0xFFFF_FFFF, 0x8000_0000, 0x4000_0004]))


RARELY = st.sampled_from([False] * 11 + [True])  # hypothesis would draw integers' edge values too often
NDIMS = {1: 3, 2: 2, 3: 1, 4: 2, 5: 2}


def usually(draw, good, bad):
    """The valid value nine times in ten, else a drawn bad one: deep checks get reached."""
    return draw(bad) if draw(RARELY) else good


@st.composite
def ops(draw, nseg):
    opcode = usually(draw, draw(st.integers(1, 5)), st.sampled_from([0, 6, 0xFFFF]))
    nd = NDIMS.get(opcode, 2)
    op = np.zeros(1, prog.OP)[0]
    op["opcode"] = opcode
    op["act"] = usually(draw, draw(st.integers(0, 13)), st.sampled_from([14, 255]))
    bias = opcode == 1 and draw(st.booleans())
    op["flags"] = usually(draw, int(bias), st.sampled_from([1, 2, 0x80]))
    op["scale_mask"] = usually(draw, 0, st.integers(1, 0xFFFF))
    dims = [draw(st.integers(1, 6)) for _ in range(nd)] + [0] * (6 - nd)
    if draw(RARELY):
        dims[draw(st.integers(0, 5))] = draw(U32S)
    op["dims"] = dims
    r, c, n = dims[0], dims[1], dims[2]
    params = [0] * 8
    b0, b1 = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    if opcode == 2:
        params[:3] = [draw(st.integers(0, 6)), b0, b1]
    elif opcode == 3:
        params[0] = draw(st.integers(0, 13))
    elif opcode == 5:
        params[0] = draw(st.integers(0, 2))
    if draw(RARELY):
        params[draw(st.integers(0, 7))] = draw(U32S)
    op["params"] = params
    bc = {0: r * c, 1: c, 2: r, 3: 1}
    elems = {1: {"src0": r * c, "src1": c * n, "src2": n if bias else 0, "dst": r * n},
             2: {"src0": bc[b0], "src1": bc[b1], "dst": r * c},
             3: {"src0": r, "dst": r}, 4: {"src0": r * c, "dst": r * c},
             5: {"src0": r * c, "dst": r}}.get(opcode, {})
    for slot in ("src0", "src1", "src2", "dst"):
        want = elems.get(slot, 0)
        if not want and not draw(RARELY):
            continue  # unused and left all-zero (usually)
        off = usually(draw, draw(st.integers(0, 2048)) * 4, U32S)
        size = usually(draw, (want * 4) & 0xFFFF_FFFF, U32S)  # a wrapped size must still be refused
        op[slot] = (off, size, usually(draw, draw(st.integers(0, nseg - 1)), st.integers(nseg, 255)),
                    usually(draw, 1, st.sampled_from([0, 2, 3])), usually(draw, 0, st.sampled_from([1, 2])))
    return op


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_ops_only_touch_their_destination(data):
    from flaxnpu_sim.engines import check_op, run_op
    entries, pages_for = data.draw(seg_tables())
    mem = AnonymousMemory(MEM_SIZE, base=BASE)
    mem.write(BASE, bytes([CANARY]) * MEM_SIZE)
    for i, pages in pages_for.items():
        write_pages(mem, entries[i][0], pages)
    write_table(mem, BASE, entries)
    segs = Segments.load(mem, BASE, len(entries))
    op = data.draw(ops(len(entries)))
    before = np.frombuffer(mem.read(BASE, MEM_SIZE), np.uint8).copy()
    try:
        cycles = run_op(op, segs)
    except EngineError as e:
        event(f"refused {STATUS(e.status).name}")
        assert e.status in STATUS and STATUS(e.status).name.startswith("OP_")
        assert mem.read(BASE, MEM_SIZE) == before.tobytes()
        return
    assert cycles > 0
    event("ran")
    plan = check_op(op, segs)
    seg, off = plan.refs["dst"]
    allowed = np.zeros(MEM_SIZE, bool)
    s = segs.segs[seg]
    assert s.flags & SEG_FLAG.WRITE
    n = int(op["dst"]["size"])
    for e in s.extents:  # host bytes of segment range [off, off + n)
        lo, hi = max(off, e.seg_offset), min(off + n, e.seg_offset + e.length)
        if lo < hi:
            start = e.addr + lo - e.seg_offset - BASE
            allowed[start:start + hi - lo] = True
    after = np.frombuffer(mem.read(BASE, MEM_SIZE), np.uint8)
    assert not np.any((after != before) & ~allowed)


def test_page_table_entries_for_fuzz_fit_below_data():
    assert BASE + 0x1000 + hw.MAX_SEGMENTS * 0x100 <= DATA
