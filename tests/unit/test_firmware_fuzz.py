"""Random op descriptors and ring entries against the real firmware.

Properties: the firmware never faults, hangs or stops serving; every job gets exactly one completion
with a status from hw.STATUS; and for op descriptors the status, info and resolved op equal those of
reference_op() below, a direct reading of the contract's per-op rules written independently of the C.
"""

from __future__ import annotations

import numpy as np
import pytest
from firmware_bus import SEG_BASE, SEG_FLAGS, SEG_SPAN, FirmwareBus, firmware_image, job, matmul, unary
from flaxnpu_abi import hw, prog
from flaxnpu_abi.hw import STATUS
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

REFS = ("src0", "src1", "src2", "dst")
# opcode: (dims used, params upper bounds (None: must be 0))
SHAPES = {
    prog.OPCODE.MATMUL: (3, {}),
    prog.OPCODE.BINARY: (2, {0: max(prog.BINOP), 1: max(prog.BCAST), 2: max(prog.BCAST)}),
    prog.OPCODE.UNARY: (1, {0: max(prog.FUNC)}),
    prog.OPCODE.SOFTMAX: (2, {}),
    prog.OPCODE.REDUCE: (2, {0: max(prog.REDUCE)}),
}
OFF = {name: prog.OP.fields[name][1] for name in prog.OP.names}


def element_counts(op: np.void, d: list[int]) -> dict[str, int]:
    code = int(op["opcode"])
    if code == prog.OPCODE.MATMUL:
        counts = {"src0": d[0] * d[1], "src1": d[1] * d[2], "dst": d[0] * d[2]}
        if op["flags"] & prog.OP_FLAG.BIAS:
            counts["src2"] = d[2]
        return counts
    if code == prog.OPCODE.BINARY:
        by = {0: d[0] * d[1], 1: d[1], 2: d[0], 3: 1}
        return {"src0": by[int(op["params"][1])], "src1": by[int(op["params"][2])], "dst": d[0] * d[1]}
    if code == prog.OPCODE.UNARY:
        return {"src0": d[0], "dst": d[0]}
    if code == prog.OPCODE.SOFTMAX:
        return {"src0": d[0] * d[1], "dst": d[0] * d[1]}
    return {"src0": d[0] * d[1], "dst": d[0]}


def reference_op(op: np.void, batch: int, segs: np.ndarray) -> tuple[int, int, np.void | None]:
    """(status, info, resolved op or None) for one op descriptor, by the contract's rules."""
    code = int(op["opcode"])
    if code not in SHAPES:
        return STATUS.OP_OPCODE, code, None
    ndims, param_max = SHAPES[code]
    if op["act"] not in prog.FUNC.__members__.values():
        return STATUS.OP_FUNC, int(op["act"]), None
    flags = int(op["flags"])
    if flags & ~int(prog.OP_FLAG.BIAS) or (flags and code != prog.OPCODE.MATMUL):
        return STATUS.OP_FLAGS, flags, None
    if int(op["scale_mask"]) >> ndims:
        return STATUS.OP_FLAGS, int(op["scale_mask"]), None
    if op["reserved0"]:
        return STATUS.OP_RESERVED, OFF["reserved0"], None
    for i, v in enumerate(op["reserved1"]):
        if v:
            return STATUS.OP_RESERVED, OFF["reserved1"] + 4 * i, None
    for i, v in enumerate(op["params"]):
        if v > param_max.get(i, 0):
            return STATUS.OP_PARAM, OFF["params"] + 4 * i, None
    dims = [int(v) * (batch if op["scale_mask"] >> i & 1 else 1) for i, v in enumerate(op["dims"])]
    for i, v in enumerate(dims):
        if (i < ndims and not 1 <= v <= prog.MAX_DIM) or (i >= ndims and v):
            return STATUS.OP_DIMS, OFF["dims"] + 4 * i, None
    counts = element_counts(op, dims)
    resolved = op.copy()
    resolved["scale_mask"] = 0
    resolved["dims"] = dims
    for name in REFS:
        if name not in counts:
            continue
        r = op[name]
        if r["seg"] >= len(segs):
            return STATUS.OP_SEGMENT, int(r["seg"]), None
        if r["dtype"] != prog.DTYPE.F32:
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
def bus() -> FirmwareBus:
    try:
        image = firmware_image()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
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


def ops_from_valid() -> st.SearchStrategy[bytes]:
    """A valid op with a few fields overwritten by random values: reaches the deeper checks."""
    base = st.sampled_from([matmul(), matmul(bias=False), unary()]).map(lambda op: bytearray(op.tobytes()))
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
