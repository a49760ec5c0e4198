"""The tensor and vector engines: check one resolved op descriptor, run it in float32, return its cycles.

The engines are the last line of defence: the firmware has checked the op already, but a firmware bug
must not let a job read or write outside its segments, so every field is checked again here (per-op
checks of docs/HELPERS-BRIEF.md; what each opcode uses is in op_rules.py). All checks come before the
first write, so a refused op changes nothing.
Info words: the offending value (opcode, act, flags, param, dim, seg, dtype, size), the operand offset for
OP_BOUNDS, and the byte offset of the field inside the descriptor for OP_RESERVED.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from flaxnpu_abi import prog
from flaxnpu_abi.cycles import op_cycles
from flaxnpu_abi.hw import SEG_FLAG, STATUS
from flaxnpu_abi.prog import CONVERT, FUNC, OP_FLAG, OPCODE, POOL, REDUCE

from . import kernels, op_rules
from .errors import EngineError, SegmentError
from .funcs import BINOPS, REDUCES, apply_func
from .mmu import Segments

# plain ints: IntFlag arithmetic costs microseconds per op in the engines' hot path
_BIAS, _QUANT, _RESIDUAL = int(OP_FLAG.BIAS), int(OP_FLAG.QUANT), int(OP_FLAG.RESIDUAL)
_WRITE, _READ = int(SEG_FLAG.WRITE), int(SEG_FLAG.READ)
F32 = np.dtype("<f4")
I32 = np.dtype("<i4")
I8 = np.dtype("i1")
_NP = {prog.DTYPE.F32: F32, prog.DTYPE.I32: I32, prog.DTYPE.I8: I8}
SLOTS = ("src0", "src1", "src2", "dst", "src3")  # checked in this order (src3 sits after params)
_SLOT_OFFSET = {name: prog.OP.fields[name][1] for name in SLOTS}


@dataclass(frozen=True)
class Plan:
    """A checked op: what to read, what to compute, where to write."""

    opcode: OPCODE
    act: int
    flags: int
    dims: tuple[int, ...]
    params: tuple[int, ...]
    shapes: dict[str, tuple[int, ...]]  # used operand -> element shape as stored
    refs: dict[str, tuple[int, int]]  # used operand -> (seg, offset)

    @property
    def bias(self) -> bool:
        return bool(self.flags & _BIAS)

    @property
    def quant(self) -> bool:
        return bool(self.flags & _QUANT)

    def dtype(self, slot: str) -> np.dtype:
        return _NP[op_rules.dtype_of(self.opcode, slot, self.flags, self.params)]


def _check_header(op: np.void) -> tuple[OPCODE, int, int]:
    opcode = int(op["opcode"])
    if opcode not in op_rules.RULES:
        raise EngineError(STATUS.OP_OPCODE, opcode, f"unknown opcode {opcode}")
    opcode = OPCODE(opcode)
    act, flags, scale_mask = int(op["act"]), int(op["flags"]), int(op["scale_mask"])
    if act not in FUNC._value2member_map_:
        raise EngineError(STATUS.OP_FUNC, act, f"unknown act {act}")
    if flags & ~op_rules.RULES[opcode].flags:
        raise EngineError(STATUS.OP_FLAGS, flags, f"op flags 0x{flags:x} not allowed on {opcode.name}")
    if flags & _QUANT and flags & _BIAS:
        raise EngineError(STATUS.OP_FLAGS, flags, "QUANT's requant table holds the bias: BIAS must be clear")
    if flags & _QUANT and opcode == OPCODE.POOL:  # max commutes with the scale; nothing else does
        if act != FUNC.NONE:
            raise EngineError(STATUS.OP_FUNC, act, f"an int8 POOL takes no act, got {FUNC(act).name}")
        if int(op["params"][0]) != POOL.MAX:
            raise EngineError(STATUS.OP_PARAM, int(op["params"][0]), "an int8 POOL must be MAX")
    if scale_mask:  # the firmware applies the batch before the kick
        raise EngineError(STATUS.OP_FLAGS, scale_mask, "scale_mask must be 0 at the engines")
    for name in ("reserved0", "reserved1"):
        if int(op[name]):
            raise EngineError(STATUS.OP_RESERVED, prog.OP.fields[name][1], f"{name} is not zero")
    return opcode, act, flags


def check_op(op: np.void, segments: Segments) -> Plan:
    """All per-op checks, in the documented order; raises EngineError with the first failure."""
    opcode, act, flags = _check_header(op)
    params = tuple(int(p) for p in op["params"])
    op_rules.check_params(opcode, params, flags)
    raw_dims = [int(d) for d in op["dims"]]
    ndims = op_rules.ndims(opcode, params)
    for i, d in enumerate(raw_dims):
        if (i < ndims and not 1 <= d <= prog.MAX_DIM) or (i >= ndims and d):
            raise EngineError(STATUS.OP_DIMS, d, f"{opcode.name} dims[{i}] = {d}")
    dims = tuple(raw_dims[:ndims])
    op_rules.check_geometry(opcode, dims, params)
    shapes = op_rules.shapes(opcode, dims, params, flags)
    refs: dict[str, tuple[int, int]] = {}
    for slot in SLOTS:
        ref = op[slot]
        seg, off, size = int(ref["seg"]), int(ref["offset"]), int(ref["size"])
        dtype, rflags = int(ref["dtype"]), int(ref["flags"])
        if slot not in shapes:
            continue
        if seg >= len(segments):
            raise EngineError(STATUS.OP_SEGMENT, seg, f"{slot} names segment {seg} of {len(segments)}")
        want_dtype = op_rules.dtype_of(opcode, slot, flags, params)
        if dtype != want_dtype:
            raise EngineError(STATUS.OP_DTYPE, dtype, f"{slot} dtype {dtype} is not {prog.DTYPE(want_dtype).name}")
        if rflags:
            raise EngineError(STATUS.OP_FLAGS, rflags, f"{slot} flags 0x{rflags:x} (SCALED is resolved by firmware)")
        try:
            segments.check(seg, off, size, _WRITE if slot == "dst" else _READ)
        except SegmentError as e:
            raise EngineError(e.status, e.info, f"{slot}: {e}") from None
        want = math.prod(shapes[slot]) * op_rules.ITEMSIZE[want_dtype]
        if size != want:
            raise EngineError(STATUS.OP_SIZE, size, f"{slot} has {size} bytes, {opcode.name} needs {want}")
        refs[slot] = (seg, off)
    for slot in SLOTS:
        if slot not in shapes and bytes(op[slot].tobytes()) != bytes(12):
            raise EngineError(STATUS.OP_RESERVED, _SLOT_OFFSET[slot], f"unused operand {slot} is not zero")
    return Plan(opcode, act, flags, dims, params, shapes, refs)


def _load(plan: Plan, segments: Segments, slot: str) -> np.ndarray:
    seg, off = plan.refs[slot]
    shape = plan.shapes[slot]
    return segments.ndarray(seg, off, math.prod(shape), plan.dtype(slot)).reshape(shape)


def _compute_new(plan: Plan, s: dict[str, np.ndarray]) -> np.ndarray:
    """The format 1.1 opcodes (kernels.py)."""
    p, d = plan.params, plan.dims
    pair = op_rules.pair
    if plan.opcode == OPCODE.CONV2D:
        if plan.quant:
            acc = kernels.qconv2d(s["src0"], s["src1"], d[4], d[5], pair(p[2]), pair(p[3]), pair(p[4]), p[5])
            return kernels.requant(acc, s["src2"])
        out = kernels.conv2d(s["src0"], s["src1"], d[4], d[5], pair(p[2]), pair(p[3]), pair(p[4]), p[5])
        return out + s["src2"] if plan.bias else out
    if plan.opcode == OPCODE.POOL and plan.quant:  # int8 in, int8 out: the max of the stored values
        x = s["src0"].astype(F32)
        out = kernels.pool(x, True, d[4], d[5], pair(p[1]), pair(p[2]), pair(p[3]))
        return np.clip(out, -128, 127).astype(I8)  # a window wholly in the padding gives -128
    if plan.opcode == OPCODE.POOL:
        return kernels.pool(s["src0"], p[0] == POOL.MAX, d[4], d[5], pair(p[1]), pair(p[2]), pair(p[3]))
    if plan.opcode == OPCODE.LAYERNORM:
        return kernels.layernorm(s["src0"], s["src1"], s["src2"], op_rules.f32(p[0]))
    if plan.opcode == OPCODE.BMM:
        return kernels.bmm(s["src0"], s["src1"], bool(p[0] & 1), bool(p[0] & 2), op_rules.f32(p[1]))
    if plan.opcode == OPCODE.GATHER:
        return kernels.gather(s["src0"], s["src1"])
    if plan.opcode == OPCODE.CONVERT:  # only dequantizing here: quantizing happens after the act
        x = s["src0"]
        return x * np.float32(op_rules.f32(p[0])) if p[1] == CONVERT.DEQUANTIZE else x
    return kernels.transpose(s["src0"], op_rules.perm(p[0], len(d)))


def _compute(plan: Plan, segments: Segments) -> tuple[np.ndarray, list[np.ndarray]]:
    s = {slot: _load(plan, segments, slot) for slot in plan.refs if slot != "dst"}
    x = s["src0"]
    with np.errstate(all="ignore"):
        if plan.opcode == OPCODE.MATMUL and plan.quant:
            out = kernels.requant(kernels.qmatmul(x, s["src1"]), s["src2"])
        elif plan.opcode == OPCODE.MATMUL:
            out = np.matmul(x, s["src1"])
            if plan.bias:
                out = out + s["src2"]
        elif plan.opcode == OPCODE.BINARY:
            out = BINOPS[plan.params[0]](x, s["src1"])
            out = np.broadcast_to(out, plan.dims)  # SCALAR op SCALAR still fills R x C
        elif plan.opcode == OPCODE.UNARY:
            out = apply_func(plan.params[0], x)
        elif plan.opcode == OPCODE.SOFTMAX:
            e = np.exp(x - x.max(axis=1, keepdims=True))
            out = e / e.sum(axis=1, keepdims=True)
        elif plan.opcode == OPCODE.REDUCE:
            if plan.params[0] == REDUCE.MEAN:
                out = np.sum(x, axis=1, dtype=F32) / np.float32(plan.dims[1])
            else:
                out = REDUCES[plan.params[0]](x, axis=1)
        else:
            out = _compute_new(plan, s)
        if plan.flags & _RESIDUAL:
            out = out + s["src3"]
    if out.dtype == I8:
        return out, list(s.values())
    out = apply_func(plan.act, np.asarray(out, F32))
    scale = _dst_scale(plan)
    return (out if scale is None else kernels.quantize(out, scale)), list(s.values())


def _dst_scale(plan: Plan) -> float | None:
    """The scale an I8 dst is quantized at, None for a F32 dst."""
    if plan.opcode == OPCODE.CONVERT:
        return op_rules.f32(plan.params[0]) if plan.params[1] == CONVERT.QUANTIZE else None
    if plan.quant and plan.params[prog.QSCALE_PARAM]:
        return op_rules.f32(plan.params[prog.QSCALE_PARAM])
    return None


def run_op(op: np.void | bytes, segments: Segments) -> int:
    """Check and run one op (batch applied), write its result, return its cycles. EngineError on refusal,
    and then nothing was written."""
    if not isinstance(op, np.void):
        op = np.frombuffer(bytes(op), prog.OP, 1)[0]
    plan = check_op(op, segments)
    out, srcs = _compute(plan, segments)
    out = np.ascontiguousarray(out, plan.dtype("dst"))
    if any(np.may_share_memory(out, s) for s in srcs):  # identity ops: never copy a buffer onto itself
        out = out.copy()
    seg, off = plan.refs["dst"]
    segments.write_array(seg, off, out)
    return op_cycles(plan.opcode, plan.dims, plan.act, plan.bias, plan.params, bool(plan.flags & _RESIDUAL),
                     plan.quant)
