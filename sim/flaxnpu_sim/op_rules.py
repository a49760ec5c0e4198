"""What each opcode uses, for the engines' re-check: dims, operands and their element shapes, flags, params.

The rules are those of docs/HELPERS-BRIEF.md (per-op checks and "Issue 4"), the same ones the firmware
applies; only the geometry of CONV2D and POOL (implied bottom/right padding > -stride) is checked here alone.
Info words follow the engines' convention: the offending value.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass

from flaxnpu_abi import prog
from flaxnpu_abi.hw import STATUS
from flaxnpu_abi.prog import BCAST, BINOP, CONVERT, FUNC, OP_FLAG, OPCODE, POOL, REDUCE

from .errors import EngineError

# plain ints: IntFlag arithmetic costs microseconds per op in the engines' hot path
_QUANT, _BIAS, _RESIDUAL = int(OP_FLAG.QUANT), int(OP_FLAG.BIAS), int(OP_FLAG.RESIDUAL)
MAX_RANK = 6
FUSED = _BIAS | _RESIDUAL | _QUANT


def f32(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def pair(word: int) -> tuple[int, int]:
    """The two 16-bit fields of a params word: (low, high) = (height, width)."""
    return word & 0xFFFF, word >> 16


def _max(n: int) -> Callable[[int, tuple[int, ...]], bool]:
    return lambda v, p: v <= n


def _pair_ok(v: int, p: tuple[int, ...]) -> bool:
    return min(pair(v)) >= 1


def perm(v: int, rank: int) -> tuple[int, ...]:
    return tuple(v >> 4 * i & 0xF for i in range(rank))


def _perm_ok(v: int, p: tuple[int, ...]) -> bool:
    rank = p[1]
    if not 1 <= rank <= MAX_RANK:
        return True  # params[1] is the word refused
    return sorted(perm(v, rank)) == list(range(rank)) and v >> 4 * rank == 0


def _eps_ok(v: int, p: tuple[int, ...]) -> bool:
    return v < 0x7F80_0000  # +0 or a positive finite float32


def _alpha_ok(v: int, p: tuple[int, ...]) -> bool:
    return math.isfinite(f32(v)) and f32(v) != 0


def _any(v: int, p: tuple[int, ...]) -> bool:
    return True


def _scale_ok(v: int, p: tuple[int, ...]) -> bool:
    return 0 < v < 0x7F80_0000  # a positive finite float32


def _qscale_ok(v: int, p: tuple[int, ...], flags: int) -> bool:
    return v == 0 or (bool(flags & _QUANT) and _scale_ok(v, p))


ParamRule = Callable[[int, tuple[int, ...]], bool]


@dataclass(frozen=True)
class Rule:
    ndims: int  # 0: params[1] (TRANSPOSE's rank)
    flags: int = 0  # OP_FLAGs allowed
    params: tuple[ParamRule, ...] = ()  # params[i] rule; words past the tuple must be 0


RULES: dict[int, Rule] = {
    OPCODE.MATMUL: Rule(3, FUSED),
    OPCODE.BINARY: Rule(2, 0, (_max(max(BINOP)), _max(max(BCAST)), _max(max(BCAST)))),
    OPCODE.UNARY: Rule(1, 0, (_max(max(FUNC)),)),
    OPCODE.SOFTMAX: Rule(2),
    OPCODE.REDUCE: Rule(2, 0, (_max(max(REDUCE)),)),
    OPCODE.CONV2D: Rule(6, FUSED, (_pair_ok, lambda v, p: 1 <= v <= prog.MAX_DIM, _pair_ok, _any, _pair_ok,
                                   lambda v, p: v >= 1)),
    OPCODE.POOL: Rule(6, int(OP_FLAG.QUANT), (_max(max(POOL)), _pair_ok, _pair_ok, _any)),
    OPCODE.LAYERNORM: Rule(2, 0, (_eps_ok,)),
    OPCODE.BMM: Rule(4, 0, (_max(3), _alpha_ok)),
    OPCODE.GATHER: Rule(3),
    OPCODE.TRANSPOSE: Rule(0, 0, (_perm_ok, lambda v, p: 1 <= v <= MAX_RANK)),
    OPCODE.CONVERT: Rule(1, 0, (_scale_ok, _max(max(CONVERT)))),
}


def ndims(opcode: int, params: tuple[int, ...]) -> int:
    n = RULES[opcode].ndims
    if n:
        return n
    return params[1] if 1 <= params[1] <= MAX_RANK else MAX_RANK


def check_params(opcode: OPCODE, params: tuple[int, ...], flags: int = 0) -> None:
    rules = RULES[opcode].params
    for i, v in enumerate(params):
        if i == prog.QSCALE_PARAM and opcode in (OPCODE.MATMUL, OPCODE.CONV2D):
            ok = _qscale_ok(v, params, flags)
        else:
            ok = rules[i](v, params) if i < len(rules) else v == 0
        if not ok:
            raise EngineError(STATUS.OP_PARAM, v, f"{opcode.name} params[{i}] = 0x{v:x} is out of range")


def _implied_pad(size: int, out: int, k: int, stride: int, dil: int, pad: int) -> int:
    """Bottom/right padding that `out` windows imply: the last window ends at size + pad_end - 1.
    Negative when the windows stop before the end of the input (a strided VALID conv or pool)."""
    return (out - 1) * stride + (k - 1) * dil + 1 - size - pad


def check_geometry(opcode: OPCODE, dims: tuple[int, ...], params: tuple[int, ...]) -> None:
    """CONV2D groups divide C and OC (OP_PARAM); CONV2D/POOL windows imply padding > -stride (OP_DIMS)."""
    if opcode not in (OPCODE.CONV2D, OPCODE.POOL):
        return
    _, h, w, c, oh, ow = dims
    if opcode == OPCODE.CONV2D:
        groups = params[5]
        if c % groups or params[1] % groups:
            raise EngineError(STATUS.OP_PARAM, groups, f"CONV2D groups {groups} must divide C {c} and OC {params[1]}")
        (kh, kw), (sh, sw), (pt, pl), (dh, dw) = pair(params[0]), pair(params[2]), pair(params[3]), pair(params[4])
    else:
        (kh, kw), (sh, sw), (pt, pl), (dh, dw) = pair(params[1]), pair(params[2]), pair(params[3]), (1, 1)
    for axis, size, out, k, s, d, p in (("OH", h, oh, kh, sh, dh, pt), ("OW", w, ow, kw, sw, dw, pl)):
        end = _implied_pad(size, out, k, s, d, p)
        # > -stride is jax's output length floor((size + pads - extent) / stride) + 1 for any padding >= 0:
        # the last stride-1 rows may go unread, but a padding of -stride or less leaves room for one more
        # whole window inside the input, so OH/OW is not the length of any convolution.
        if end <= -s:
            raise EngineError(STATUS.OP_DIMS, out, f"{opcode.name} {axis} = {out} implies padding {end} <= -{s} "
                              f"at the end of an axis of {size} (kernel {k}, stride {s}, dilation {d}, padding "
                              f"{p}): one more window would end inside the input")


def shapes(opcode: OPCODE, dims: tuple[int, ...], params: tuple[int, ...], flags: int) -> dict[str, tuple]:
    """Element shape of every used operand (as stored)."""
    if opcode == OPCODE.MATMUL:
        m, k, n = dims
        out = {"src0": (m, k), "src1": (k, n), "src2": (n,), "dst": (m, n)}
    elif opcode == OPCODE.BINARY:
        r, c = dims
        by = {BCAST.FULL: (r, c), BCAST.ROW: (1, c), BCAST.COL: (r, 1), BCAST.SCALAR: (1, 1)}
        out = {"src0": by[params[1]], "src1": by[params[2]], "dst": (r, c)}
    elif opcode in (OPCODE.UNARY, OPCODE.SOFTMAX, OPCODE.CONVERT):
        out = {"src0": dims, "dst": dims}
    elif opcode == OPCODE.REDUCE:
        out = {"src0": dims, "dst": dims[:1]}
    elif opcode == OPCODE.CONV2D:
        n, _, _, c, oh, ow = dims
        kh, kw = pair(params[0])
        oc, groups = params[1], params[5]
        out = {"src0": dims[:4], "src1": (kh, kw, c // groups, oc), "src2": (oc,), "dst": (n, oh, ow, oc)}
    elif opcode == OPCODE.POOL:
        n, _, _, c, oh, ow = dims
        out = {"src0": dims[:4], "dst": (n, oh, ow, c)}
    elif opcode == OPCODE.LAYERNORM:
        out = {"src0": dims, "src1": dims[1:], "src2": dims[1:], "dst": dims}
    elif opcode == OPCODE.BMM:
        b, m, k, n = dims
        out = {"src0": (b, k, m) if params[0] & 1 else (b, m, k), "src1": (b, n, k) if params[0] & 2 else (b, k, n),
               "dst": (b, m, n)}
    elif opcode == OPCODE.GATHER:
        r, v, d = dims
        out = {"src0": (r,), "src1": (v, d), "dst": (r, d)}
    else:  # TRANSPOSE
        axes = perm(params[0], len(dims))
        out = {"src0": dims, "dst": tuple(dims[a] for a in axes)}
    if opcode in (OPCODE.MATMUL, OPCODE.CONV2D):
        if flags & _QUANT:
            out["src2"] = (2, *out["src2"])  # the requant table: scale row, bias row
        elif not flags & _BIAS:
            del out["src2"]
        if flags & _RESIDUAL:
            out["src3"] = out["dst"]
    return out


def dtype_of(opcode: int, slot: str, flags: int = 0, params: tuple[int, ...] = (0,) * 8) -> int:
    """The dtype an operand must have (params checked already): I32 for GATHER's indices, I8 on the int8
    side of CONVERT and for QUANT's activations, weights and scaled dst, F32 for everything else."""
    if (opcode, slot) == (OPCODE.GATHER, "src0"):
        return prog.DTYPE.I32
    if opcode == OPCODE.CONVERT:
        return prog.DTYPE.I8 if (slot == "src0") == (params[1] == CONVERT.DEQUANTIZE) else prog.DTYPE.F32
    if flags & _QUANT and (slot in ("src0", "src1") or (slot == "dst" and params[prog.QSCALE_PARAM])
                                  or (slot == "dst" and opcode == OPCODE.POOL)):
        return prog.DTYPE.I8
    return prog.DTYPE.F32


ITEMSIZE = {prog.DTYPE.F32: 4, prog.DTYPE.I32: 4, prog.DTYPE.I8: 1}
