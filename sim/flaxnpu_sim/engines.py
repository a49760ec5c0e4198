"""The tensor and vector engines: check one resolved op descriptor, run it in float32, return its cycles.

The engines are the last line of defence: the firmware has checked the op already, but a firmware bug
must not let a job read or write outside its segments, so every field is checked again here (per-op
checks of docs/HELPERS-BRIEF.md). All checks come before the first write, so a refused op changes nothing.
Info words: the offending value (opcode, act, flags, param, dim, seg, dtype, size), the operand offset for
OP_BOUNDS, and the byte offset of the field inside the descriptor for OP_RESERVED.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from flaxnpu_abi import prog
from flaxnpu_abi.hw import SEG_FLAG, STATUS
from flaxnpu_abi.prog import BCAST, BINOP, FUNC, OP_FLAG, OPCODE, REDUCE

from .cycles import op_cycles
from .errors import EngineError, SegmentError
from .funcs import BINOPS, REDUCES, apply_func
from .mmu import Segments

F32 = np.dtype("<f4")
SLOTS = ("src0", "src1", "src2", "dst")
_SLOT_OFFSET = {name: prog.OP.fields[name][1] for name in SLOTS}
_NDIMS = {OPCODE.MATMUL: 3, OPCODE.BINARY: 2, OPCODE.UNARY: 1, OPCODE.SOFTMAX: 2, OPCODE.REDUCE: 2}
# Allowed values of params[i] per opcode; every other params word must be zero.
_PARAMS: dict[int, tuple[frozenset[int], ...]] = {
    OPCODE.BINARY: (frozenset(BINOP), frozenset(BCAST), frozenset(BCAST)),
    OPCODE.UNARY: (frozenset(FUNC),),
    OPCODE.REDUCE: (frozenset(REDUCE),),
}
_BCAST_SHAPE = {
    BCAST.FULL: lambda r, c: (r, c),
    BCAST.ROW: lambda r, c: (1, c),
    BCAST.COL: lambda r, c: (r, 1),
    BCAST.SCALAR: lambda r, c: (1, 1),
}


@dataclass(frozen=True)
class Plan:
    """A checked op: what to read, what to compute, where to write."""

    opcode: OPCODE
    act: int
    bias: bool
    dims: tuple[int, ...]
    params: tuple[int, ...]
    shapes: dict[str, tuple[int, ...]]  # used operand -> element shape
    refs: dict[str, tuple[int, int]]  # used operand -> (seg, offset)


def _shapes(opcode: OPCODE, dims: tuple[int, ...], params: tuple[int, ...], bias: bool) -> dict:
    if opcode == OPCODE.MATMUL:
        m, k, n = dims
        shapes = {"src0": (m, k), "src1": (k, n), "dst": (m, n)}
        if bias:
            shapes["src2"] = (n,)
        return shapes
    if opcode == OPCODE.BINARY:
        r, c = dims
        return {"src0": _BCAST_SHAPE[params[1]](r, c), "src1": _BCAST_SHAPE[params[2]](r, c), "dst": (r, c)}
    if opcode == OPCODE.UNARY:
        return {"src0": dims, "dst": dims}
    if opcode == OPCODE.SOFTMAX:
        return {"src0": dims, "dst": dims}
    return {"src0": dims, "dst": dims[:1]}  # REDUCE


def check_op(op: np.void, segments: Segments) -> Plan:
    """All per-op checks, in the documented order; raises EngineError with the first failure."""
    opcode = int(op["opcode"])
    if opcode not in _NDIMS:
        raise EngineError(STATUS.OP_OPCODE, opcode, f"unknown opcode {opcode}")
    opcode = OPCODE(opcode)
    act, flags, scale_mask = int(op["act"]), int(op["flags"]), int(op["scale_mask"])
    if act not in FUNC._value2member_map_:
        raise EngineError(STATUS.OP_FUNC, act, f"unknown act {act}")
    if flags & ~int(OP_FLAG.BIAS) or (flags and opcode != OPCODE.MATMUL):
        raise EngineError(STATUS.OP_FLAGS, flags, f"op flags 0x{flags:x} not allowed on {opcode.name}")
    if scale_mask:  # the firmware applies the batch before the kick
        raise EngineError(STATUS.OP_FLAGS, scale_mask, "scale_mask must be 0 at the engines")
    if int(op["reserved0"]):
        raise EngineError(STATUS.OP_RESERVED, prog.OP.fields["reserved0"][1], "reserved0 is not zero")
    for i, word in enumerate(op["reserved1"]):
        if int(word):
            raise EngineError(STATUS.OP_RESERVED, prog.OP.fields["reserved1"][1] + 4 * i, "reserved1 not zero")
    params = tuple(int(p) for p in op["params"])
    allowed = _PARAMS.get(opcode, ())
    for i, p in enumerate(params):
        if (i < len(allowed) and p not in allowed[i]) or (i >= len(allowed) and p):
            raise EngineError(STATUS.OP_PARAM, p, f"{opcode.name} params[{i}] = {p} is out of range")
    raw_dims = [int(d) for d in op["dims"]]
    ndims = _NDIMS[opcode]
    for i, d in enumerate(raw_dims):
        if (i < ndims and not 1 <= d <= prog.MAX_DIM) or (i >= ndims and d):
            raise EngineError(STATUS.OP_DIMS, d, f"{opcode.name} dims[{i}] = {d}")
    dims = tuple(raw_dims[:ndims])
    bias = bool(flags & OP_FLAG.BIAS)
    shapes = _shapes(opcode, dims, params, bias)
    refs: dict[str, tuple[int, int]] = {}
    for slot in SLOTS:
        ref = op[slot]
        seg, off, size = int(ref["seg"]), int(ref["offset"]), int(ref["size"])
        dtype, rflags = int(ref["dtype"]), int(ref["flags"])
        if slot not in shapes:
            if seg or off or size or dtype or rflags:
                raise EngineError(STATUS.OP_RESERVED, _SLOT_OFFSET[slot], f"unused operand {slot} is not zero")
            continue
        if seg >= len(segments):
            raise EngineError(STATUS.OP_SEGMENT, seg, f"{slot} names segment {seg} of {len(segments)}")
        if dtype != prog.DTYPE.F32:
            raise EngineError(STATUS.OP_DTYPE, dtype, f"{slot} dtype {dtype} is not F32")
        if rflags:
            raise EngineError(STATUS.OP_FLAGS, rflags, f"{slot} flags 0x{rflags:x} (SCALED is resolved by firmware)")
        try:
            segments.check(seg, off, size, SEG_FLAG.WRITE if slot == "dst" else SEG_FLAG.READ)
        except SegmentError as e:
            raise EngineError(e.status, e.info, f"{slot}: {e}") from None
        want = math.prod(shapes[slot]) * F32.itemsize
        if size != want:
            raise EngineError(STATUS.OP_SIZE, size, f"{slot} has {size} bytes, {opcode.name} needs {want}")
        refs[slot] = (seg, off)
    return Plan(opcode, act, bias, dims, params, shapes, refs)


def _load(plan: Plan, segments: Segments, slot: str) -> np.ndarray:
    seg, off = plan.refs[slot]
    shape = plan.shapes[slot]
    return segments.ndarray(seg, off, math.prod(shape), F32).reshape(shape)


def _compute(plan: Plan, segments: Segments) -> tuple[np.ndarray, list[np.ndarray]]:
    srcs = [_load(plan, segments, s) for s in ("src0", "src1", "src2") if s in plan.refs]
    x = srcs[0]
    with np.errstate(all="ignore"):
        if plan.opcode == OPCODE.MATMUL:
            out = np.matmul(x, srcs[1])
            if plan.bias:
                out = out + srcs[2]
        elif plan.opcode == OPCODE.BINARY:
            out = BINOPS[plan.params[0]](x, srcs[1])
            out = np.broadcast_to(out, plan.dims)  # SCALAR op SCALAR still fills R x C
        elif plan.opcode == OPCODE.UNARY:
            out = apply_func(plan.params[0], x)
        elif plan.opcode == OPCODE.SOFTMAX:
            e = np.exp(x - x.max(axis=1, keepdims=True))
            out = e / e.sum(axis=1, keepdims=True)
        else:
            out = REDUCES[plan.params[0]](x, axis=1)
    return apply_func(plan.act, np.asarray(out, F32)), srcs


def run_op(op: np.void | bytes, segments: Segments) -> int:
    """Check and run one op (batch applied), write its result, return its cycles. EngineError on refusal,
    and then nothing was written."""
    if not isinstance(op, np.void):
        op = np.frombuffer(bytes(op), prog.OP, 1)[0]
    plan = check_op(op, segments)
    out, srcs = _compute(plan, segments)
    out = np.ascontiguousarray(out, F32)
    if any(np.may_share_memory(out, s) for s in srcs):  # identity ops: never copy a buffer onto itself
        out = out.copy()
    seg, off = plan.refs["dst"]
    segments.write_array(seg, off, out)
    return op_cycles(plan.opcode, plan.dims, plan.act, plan.bias)
