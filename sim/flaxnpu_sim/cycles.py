"""The cycle model: what one op would cost on the NPU this model stands for.

The imagined hardware is a 16x16 systolic MAC array (256 float32 MACs per cycle) and a 16-lane vector
unit, both at 1 GHz, fed from on-chip buffers. Memory traffic is not modelled: the numbers are compute
time, good for comparing programs and for the CYCLES counters, not a prediction of wall time.

    MATMUL  ceil(M/16) * ceil(N/16) * K           array passes, one K-long wavefront per 16x16 tile
            + ceil(M*N/16) * (bias + act passes)  epilogue on the vector unit
    BINARY  ceil(R*C/16) * (1 + act)
    UNARY   ceil(n/16) * (1 + act)
    SOFTMAX ceil(R*C/16) * 3 + R                  max pass, exp-and-sum pass, divide pass; a row drain each
    REDUCE  ceil(R*C/16) + R
    every op + OP_SETUP cycles (descriptor decode, operand address generation)
"""

from __future__ import annotations

from flaxnpu_abi.prog import FUNC, OPCODE

CLOCK_HZ = 1_000_000_000
ARRAY = 16  # the MAC array is ARRAY x ARRAY
LANES = 16  # vector unit lanes
OP_SETUP = 64


def _vec(elements: int) -> int:
    return -(-elements // LANES)


def op_cycles(opcode: int, dims: tuple[int, ...], act: int, bias: bool = False) -> int:
    """Cycles of one validated op; dims are the op's used dimensions (batch applied)."""
    act_pass = 0 if act == FUNC.NONE else 1
    if opcode == OPCODE.MATMUL:
        m, k, n = dims[:3]
        tiles = -(-m // ARRAY) * -(-n // ARRAY)
        return OP_SETUP + tiles * k + _vec(m * n) * (int(bias) + act_pass)
    if opcode == OPCODE.BINARY:
        return OP_SETUP + _vec(dims[0] * dims[1]) * (1 + act_pass)
    if opcode == OPCODE.UNARY:
        return OP_SETUP + _vec(dims[0]) * (1 + act_pass)
    if opcode == OPCODE.SOFTMAX:
        return OP_SETUP + _vec(dims[0] * dims[1]) * (3 + act_pass) + dims[0]
    if opcode == OPCODE.REDUCE:
        return OP_SETUP + _vec(dims[0] * dims[1]) + dims[0] + _vec(dims[0]) * act_pass
    raise ValueError(f"no cycle model for opcode {opcode}")


def cycles_to_seconds(cycles: int) -> float:
    return cycles / CLOCK_HZ
