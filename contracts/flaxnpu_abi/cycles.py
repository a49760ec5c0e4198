"""The cycle model: what one op would cost on the NPU this model stands for.

The imagined hardware is a 16x16 systolic MAC array (256 float32 MACs per cycle) and a 16-lane vector
unit, both at 1 GHz, fed from on-chip buffers. Memory traffic is not modelled: the numbers are compute
time, good for comparing programs and for the CYCLES counters, not a prediction of wall time.

    MATMUL    ceil(M/16) * ceil(N/16) * K           array passes, one K-long wavefront per 16x16 tile
              + ceil(M*N/16) * (bias + residual + act passes)   epilogue on the vector unit
    BINARY    ceil(R*C/16) * (1 + act)
    UNARY     ceil(n/16) * (1 + act)
    SOFTMAX   ceil(R*C/16) * 3 + R                  max pass, exp-and-sum pass, divide pass; a row drain each
    REDUCE    ceil(R*C/16) + R (+ ceil(R/16) for MEAN's divide)
    CONV2D    groups * ceil(N*OH*OW/16) * ceil(OC/groups/16) * KH*KW*C/groups   an implicit-im2col MATMUL
              + ceil(N*OH*OW*OC/16) * (bias + residual + act)
    POOL      ceil(N*OH*OW*C/16) * (KH*KW + AVG's divide + act)   one vector pass per window tap
    LAYERNORM ceil(R*C/16) * (4 + act) + 2R         mean, variance, normalise, scale-and-shift; two row drains
    BMM       B * ceil(M/16) * ceil(N/16) * K + ceil(B*M*N/16) * (alpha != 1 + act)
    GATHER    R + ceil(R*D/16) * (1 + act)          one row fetch per index, then the copy
    TRANSPOSE ceil(n/16) * (2 + act)                through the transpose buffer: a read pass and a write pass
    CONVERT   ceil(n/16) * (1 + act)
    QUANT     MATMUL and CONV2D on int8: each cell does 4 int8 MACs a cycle (array term / 4, rounded up);
              the requant table costs one epilogue pass (as a bias would), an I8 dst one more
    every op + OP_SETUP cycles (descriptor decode, operand address generation)
"""

from __future__ import annotations

import math

from flaxnpu_abi.prog import FUNC, OPCODE, POOL, QSCALE_PARAM, REDUCE

CLOCK_HZ = 1_000_000_000
ARRAY = 16  # the MAC array is ARRAY x ARRAY
LANES = 16  # vector unit lanes
OP_SETUP = 64
ALPHA_ONE = 0x3F80_0000  # 1.0f: BMM needs no scaling pass


def _vec(elements: int) -> int:
    return -(-elements // LANES)


def _tiles(m: int, n: int) -> int:
    return -(-m // ARRAY) * -(-n // ARRAY)


def op_cycles(opcode: int, dims: tuple[int, ...], act: int, bias: bool = False, params: tuple[int, ...] = (),
              residual: bool = False, quant: bool = False) -> int:
    """Cycles of one validated op; dims are the op's used dimensions (batch applied), params its params."""
    p = tuple(params) + (0,) * (8 - len(params))
    act_pass = 0 if act == FUNC.NONE else 1
    macs_per_cell = 4 if quant else 1
    if quant:  # the requant table is the bias pass; an I8 dst (scale in params[7]) adds the quantize pass
        bias, act_pass = True, act_pass + int(p[QSCALE_PARAM] != 0)
    if opcode == OPCODE.MATMUL:
        m, k, n = dims[:3]
        return (OP_SETUP + -(-_tiles(m, n) * k // macs_per_cell)
                + _vec(m * n) * (int(bias) + int(residual) + act_pass))
    if opcode == OPCODE.BINARY:
        return OP_SETUP + _vec(dims[0] * dims[1]) * (1 + act_pass)
    if opcode == OPCODE.UNARY:
        return OP_SETUP + _vec(dims[0]) * (1 + act_pass)
    if opcode == OPCODE.SOFTMAX:
        return OP_SETUP + _vec(dims[0] * dims[1]) * (3 + act_pass) + dims[0]
    if opcode == OPCODE.REDUCE:
        divide = int(p[0] == REDUCE.MEAN)
        return OP_SETUP + _vec(dims[0] * dims[1]) + dims[0] + _vec(dims[0]) * (act_pass + divide)
    if opcode == OPCODE.CONV2D:
        n, _, _, c, oh, ow = dims
        taps, oc, groups = (p[0] & 0xFFFF) * (p[0] >> 16), p[1], p[5]
        positions = n * oh * ow
        mac = -(-groups * _tiles(positions, oc // groups) * taps * (c // groups) // macs_per_cell)
        return OP_SETUP + mac + _vec(positions * oc) * (int(bias) + int(residual) + act_pass)
    if opcode == OPCODE.POOL:
        n, _, _, c, oh, ow = dims
        taps = (p[1] & 0xFFFF) * (p[1] >> 16)
        return OP_SETUP + _vec(n * oh * ow * c) * (taps + int(p[0] == POOL.AVG) + act_pass)
    if opcode == OPCODE.LAYERNORM:
        return OP_SETUP + _vec(dims[0] * dims[1]) * (4 + act_pass) + 2 * dims[0]
    if opcode == OPCODE.BMM:
        b, m, k, n = dims[:4]
        return OP_SETUP + b * _tiles(m, n) * k + _vec(b * m * n) * (int(p[1] != ALPHA_ONE) + act_pass)
    if opcode == OPCODE.GATHER:
        r, _, d = dims[:3]
        return OP_SETUP + r + _vec(r * d) * (1 + act_pass)
    if opcode == OPCODE.CONVERT:
        return OP_SETUP + _vec(dims[0]) * (1 + act_pass)
    if opcode == OPCODE.TRANSPOSE:
        return OP_SETUP + _vec(math.prod(dims)) * (2 + act_pass)
    raise ValueError(f"no cycle model for opcode {opcode}")


def cycles_to_seconds(cycles: int) -> float:
    return cycles / CLOCK_HZ
