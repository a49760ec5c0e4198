"""Random op descriptors and ring entries against the real firmware.

Properties: the firmware never faults, hangs or stops serving; every job gets exactly one completion
with a status from hw.STATUS; and for op descriptors the status, info and resolved op equal those of
reference_op() below, a direct reading of the contract's per-op rules written independently of the C.
"""

from __future__ import annotations

import numpy as np
import pytest
from firmware_bus import (
    SEG_BASE,
    SEG_FLAGS,
    SEG_SPAN,
    FirmwareBus,
    bmm,
    conv2d,
    gather,
    job,
    layernorm,
    matmul,
    pool,
    transpose,
    unary,
)
from flaxnpu_abi import hw, prog
from flaxnpu_abi.hw import STATUS
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

REFS = ("src0", "src1", "src2", "dst", "src3")
MAX_RANK = 6


def _pair(v: int) -> bool:
    return v & 0xFFFF >= 1 and v >> 16 >= 1


def _perm(v: int, rank: int) -> bool:
    if not 1 <= rank <= MAX_RANK:
        return True  # the rank word is the one refused
    axes = [v >> 4 * i & 0xF for i in range(rank)]
    return sorted(axes) == list(range(rank)) and v >> 4 * rank == 0


# The contract's params rules, one predicate per word (absent: the word must be 0), in plain Python.
def _max(n: int):
    return lambda v, op: v <= n


PARAMS = {
    prog.OPCODE.BINARY: {0: _max(max(prog.BINOP)), 1: _max(max(prog.BCAST)), 2: _max(max(prog.BCAST))},
    prog.OPCODE.UNARY: {0: _max(max(prog.FUNC))},
    prog.OPCODE.REDUCE: {0: _max(max(prog.REDUCE))},
    prog.OPCODE.CONV2D: {0: lambda v, op: _pair(v), 1: lambda v, op: 1 <= v <= prog.MAX_DIM,
                         2: lambda v, op: _pair(v), 3: lambda v, op: True, 4: lambda v, op: _pair(v),
                         5: lambda v, op: v >= 1},
    prog.OPCODE.POOL: {0: _max(max(prog.POOL)), 1: lambda v, op: _pair(v), 2: lambda v, op: _pair(v),
                       3: lambda v, op: True},
    prog.OPCODE.LAYERNORM: {0: lambda v, op: np.uint32(v).view(np.float32) >= 0 and v >> 31 == 0
                            and np.isfinite(np.uint32(v).view(np.float32))},
    prog.OPCODE.BMM: {0: _max(3), 1: lambda v, op: np.uint32(v).view(np.float32) != 0
                      and np.isfinite(np.uint32(v).view(np.float32))},
    prog.OPCODE.TRANSPOSE: {0: lambda v, op: _perm(v, int(op["params"][1])),
                            1: lambda v, op: 1 <= v <= MAX_RANK},
}
NDIMS = {prog.OPCODE.MATMUL: 3, prog.OPCODE.BINARY: 2, prog.OPCODE.UNARY: 1, prog.OPCODE.SOFTMAX: 2,
         prog.OPCODE.REDUCE: 2, prog.OPCODE.CONV2D: 6, prog.OPCODE.POOL: 6, prog.OPCODE.LAYERNORM: 2,
         prog.OPCODE.BMM: 4, prog.OPCODE.GATHER: 3}
FUSED = {prog.OPCODE.MATMUL, prog.OPCODE.CONV2D}  # BIAS and RESIDUAL
OFF = {name: prog.OP.fields[name][1] for name in prog.OP.names}


def ndims_of(op: np.void) -> int:
    code = int(op["opcode"])
    if code == prog.OPCODE.TRANSPOSE:
        rank = int(op["params"][1])
        return rank if 1 <= rank <= MAX_RANK else MAX_RANK
    return NDIMS[code]


def element_counts(op: np.void, d: list[int]) -> dict[str, int] | int:
    """Elements per used operand; or the params offset of a params/dims combination that is refused."""
    code, p = int(op["opcode"]), [int(v) for v in op["params"]]
    if code == prog.OPCODE.MATMUL:
        counts = {"src0": d[0] * d[1], "src1": d[1] * d[2], "src2": d[2], "dst": d[0] * d[2]}
    elif code == prog.OPCODE.BINARY:
        by = {0: d[0] * d[1], 1: d[1], 2: d[0], 3: 1}
        counts = {"src0": by[p[1]], "src1": by[p[2]], "dst": d[0] * d[1]}
    elif code in (prog.OPCODE.UNARY, prog.OPCODE.SOFTMAX, prog.OPCODE.TRANSPOSE):
        n = int(np.prod(d[:ndims_of(op)], dtype=object))
        counts = {"src0": n, "dst": n}
    elif code == prog.OPCODE.REDUCE:
        counts = {"src0": d[0] * d[1], "dst": d[0]}
    elif code == prog.OPCODE.CONV2D:
        oc, groups = p[1], p[5]
        if d[3] % groups or oc % groups:
            return OFF["params"] + 20
        counts = {"src0": d[0] * d[1] * d[2] * d[3], "src1": (p[0] & 0xFFFF) * (p[0] >> 16) * d[3] // groups * oc,
                  "src2": oc, "dst": d[0] * d[4] * d[5] * oc}
    elif code == prog.OPCODE.POOL:
        counts = {"src0": d[0] * d[1] * d[2] * d[3], "dst": d[0] * d[4] * d[5] * d[3]}
    elif code == prog.OPCODE.LAYERNORM:
        counts = {"src0": d[0] * d[1], "src1": d[1], "src2": d[1], "dst": d[0] * d[1]}
    elif code == prog.OPCODE.BMM:
        counts = {"src0": d[0] * d[1] * d[2], "src1": d[0] * d[2] * d[3], "dst": d[0] * d[1] * d[3]}
    else:  # GATHER
        counts = {"src0": d[0], "src1": d[1] * d[2], "dst": d[0] * d[2]}
    if code in FUSED and not op["flags"] & prog.OP_FLAG.BIAS:
        del counts["src2"]
    if code in FUSED and op["flags"] & prog.OP_FLAG.RESIDUAL:
        counts["src3"] = counts["dst"]
    return counts


def reference_op(op: np.void, batch: int, segs: np.ndarray) -> tuple[int, int, np.void | None]:
    """(status, info, resolved op or None) for one op descriptor, by the contract's rules."""
    code = int(op["opcode"])
    if code not in prog.OPCODE.__members__.values():
        return STATUS.OP_OPCODE, code, None
    ndims = ndims_of(op)
    if op["act"] not in prog.FUNC.__members__.values():
        return STATUS.OP_FUNC, int(op["act"]), None
    flags = int(op["flags"])
    if flags & ~int(prog.OP_FLAG.BIAS | prog.OP_FLAG.RESIDUAL) or (flags and code not in FUSED):
        return STATUS.OP_FLAGS, flags, None
    if int(op["scale_mask"]) >> ndims:
        return STATUS.OP_FLAGS, int(op["scale_mask"]), None
    if op["reserved0"]:
        return STATUS.OP_RESERVED, OFF["reserved0"], None
    if op["reserved1"]:
        return STATUS.OP_RESERVED, OFF["reserved1"], None
    rules = PARAMS.get(code, {})
    for i, v in enumerate(op["params"]):
        ok = rules[i](int(v), op) if i in rules else v == 0
        if not ok:
            return STATUS.OP_PARAM, OFF["params"] + 4 * i, None
    dims = [int(v) * (batch if op["scale_mask"] >> i & 1 else 1) for i, v in enumerate(op["dims"])]
    for i, v in enumerate(dims):
        if (i < ndims and not 1 <= v <= prog.MAX_DIM) or (i >= ndims and v):
            return STATUS.OP_DIMS, OFF["dims"] + 4 * i, None
    counts = element_counts(op, dims)
    if isinstance(counts, int):
        return STATUS.OP_PARAM, counts, None
    resolved = op.copy()
    resolved["scale_mask"] = 0
    resolved["dims"] = dims
    for name in REFS:
        if name not in counts:
            continue
        r = op[name]
        if r["seg"] >= len(segs):
            return STATUS.OP_SEGMENT, int(r["seg"]), None
        want = prog.DTYPE.I32 if (code, name) == (prog.OPCODE.GATHER, "src0") else prog.DTYPE.F32
        if r["dtype"] != want:
            return STATUS.OP_DTYPE, int(r["dtype"]), None
        if int(r["flags"]) & ~int(prog.REF_FLAG.SCALED):
            return STATUS.OP_FLAGS, int(r["flags"]), None
        need = hw.SEG_FLAG.WRITE if name == "dst" else hw.SEG_FLAG.READ
        seg = segs[int(r["seg"])]
        if not seg["flags"] & need:
            return STATUS.OP_RIGHTS, int(r["seg"]), None
        scale = batch if r["flags"] else 1
        offset, size = int(r["offset"]) * scale, int(r["size"]) * scale
        if offset + size > seg["size"]:
            return STATUS.OP_BOUNDS, min(offset, 0xFFFFFFFF), None
        if size != counts[name] * 4:
            return STATUS.OP_SIZE, size, None
        resolved[name]["offset"], resolved[name]["size"], resolved[name]["flags"] = offset, size, 0
    for name in REFS:
        if name not in counts and op[name].tobytes() != bytes(12):
            return STATUS.OP_RESERVED, OFF[name], None
    return STATUS.OK, 0, resolved


@pytest.fixture(scope="module")
def bus(image) -> FirmwareBus:
    b = FirmwareBus(sq_entries=4, cq_entries=4)
    assert b.boot(image).reason == "idle"
    return b


def run_one(bus: FirmwareBus, entry: np.void | bytes) -> np.void:
    done = bus.sq_head
    bus.submit(entry)
    stop = bus.doorbell()
    assert stop.reason == "idle", stop
    cpls = bus.take_completions()
    assert len(cpls) == 1 and bus.sq_head == done + 1
    assert cpls[0]["status"] in STATUS.__members__.values()
    return cpls[0]


VALID = [matmul(), matmul(bias=False), unary(), conv2d(), conv2d(bias=False, residual=True),
         conv2d(c=4, oc=8, groups=4, stride=2, dil=2, pad=2), pool(), pool(kind=prog.POOL.AVG, k=3, stride=1, pad=1),
         layernorm(), bmm(), bmm(trans=3, alpha=0.5), gather(), transpose(), transpose((1, 2, 1, 3, 2, 1),
                                                                                       (0, 5, 4, 3, 2, 1))]


def ops_from_valid() -> st.SearchStrategy[bytes]:
    """A valid op with a few fields overwritten by random values: reaches the deeper checks."""
    base = st.sampled_from(VALID).map(lambda op: bytearray(op.tobytes()))
    field = st.tuples(st.integers(0, 127), st.sampled_from([1, 2, 4]),
                      st.one_of(st.integers(0, 3), st.integers(0, 2**32 - 1), st.sampled_from(
                          [0x8000_0000, 0xFFFF_FFFF, prog.MAX_DIM, prog.MAX_DIM + 1, 0x1_0000])))

    def apply(parts: tuple[bytearray, list[tuple[int, int, int]]]) -> bytes:
        raw, edits = parts
        for at, width, value in edits:
            at -= at % width
            raw[at:at + width] = (value % (1 << 8 * width)).to_bytes(width, "little")
        return bytes(raw)

    return st.tuples(base, st.lists(field, min_size=1, max_size=3)).map(apply)


OP_BYTES = st.one_of(st.binary(min_size=128, max_size=128), ops_from_valid())
BATCH = st.one_of(st.integers(1, 4), st.integers(1, 2**32 - 1), st.sampled_from([2, 0x8000, 0x1_0000]))
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(raw=OP_BYTES, batch=BATCH)
def test_random_op_matches_the_reference(bus, raw, batch):
    bus.engine_ops.clear()
    op = np.frombuffer(raw, prog.OP)[0]
    e = job(bus, [op], batch=batch)
    status, info, resolved = reference_op(op, batch, np.frombuffer(bus.host_read(
        int(e["seg_table"]), 16 * len(SEG_FLAGS)), hw.SEG_ENTRY))
    event(STATUS(status).name)  # --hypothesis-show-statistics: which checks the examples reached
    cpl = run_one(bus, e)
    assert (cpl["status"], cpl["info"]) == (status, info)
    assert cpl["op_index"] == (hw.OP_NONE if status == STATUS.OK else 0)
    if resolved is None:
        assert bus.engine_ops == []
    else:
        (sent,) = bus.engine_ops
        assert sent.tobytes() == resolved.tobytes()
        assert all(0 < d <= prog.MAX_DIM for d in sent["dims"][:1])


@SETTINGS
@given(raw=st.binary(min_size=64, max_size=64), keep_seq=st.booleans(), run=st.booleans())
def test_random_ring_entry_always_completes(bus, raw, keep_seq, run):
    entry = np.frombuffer(raw, hw.SQ_ENTRY)[0].copy()
    if keep_seq:  # get past the seq check to the deeper ones
        entry["seq"] = bus.sq_tail
        if run:
            entry["opcode"], entry["flags"] = hw.JOB_OP.RUN, 0
            entry["reserved0"] = entry["reserved1"] = entry["reserved2"] = 0
    cpl = run_one(bus, entry)
    assert cpl["sq_seq"] == bus.sq_head - 1
    if cpl["status"] == STATUS.OK:
        assert entry["opcode"] == hw.JOB_OP.NOP or bus.engine_ops
    # the firmware still serves: a plain NOP job right after succeeds
    assert run_one(bus, job(bus))["status"] == STATUS.OK


@SETTINGS
@given(prog_offset=st.integers(0, 2**32 - 1), op_count=st.integers(0, 2**32 - 1))
def test_op_stream_range_is_checked_without_wrapping(bus, prog_offset, op_count):
    bus.engine_ops.clear()
    bus.host_write(SEG_BASE, bytes(SEG_SPAN))  # zeros: the first op fetched fails OP_OPCODE
    e = job(bus, [], prog_offset=prog_offset, op_count=op_count)
    cpl = run_one(bus, e)
    fits = op_count >= 1 and prog_offset + op_count * prog.OP_SIZE <= SEG_SPAN
    if not fits:
        assert (cpl["status"], cpl["op_index"]) == (STATUS.JOB_PROGRAM, hw.OP_NONE)
    else:  # whatever the segment holds there gets fetched and checked (it is zeros: OP_OPCODE)
        assert (cpl["status"], cpl["op_index"]) == (STATUS.OP_OPCODE, 0)
