"""Estimated device cycles of an op, for the compile report: a mirror of the device's cycle model.

The model itself lives in the device (sim/flaxnpu_sim/cycles.py, documented there and in
docs/hardware.md); the compiler must not import the device, so this pure function restates the
documented formulas, and tests/unit/test_compiler_fallback.py checks it against the device's model op
by op. An opcode this mirror does not know yet gets no estimate (None) rather than a wrong one.
"""

from __future__ import annotations

ARRAY = 16     # the MAC array is ARRAY x ARRAY
LANES = 16     # vector unit lanes
OP_SETUP = 64  # descriptor decode and address generation, every op

# What report totals assume for "per item": a job of this many items, divided by it.
PER_ITEM_BATCH = 64

MATMUL, BINARY, UNARY, SOFTMAX, REDUCE = 1, 2, 3, 4, 5


def _vec(elements: int) -> int:
    return -(-elements // LANES)


def op_cycles(opcode: int, dims: list[int], act: int, bias: bool = False) -> int | None:
    """Cycles of one op with its dims already multiplied by the batch; None when not modelled here."""
    act_pass = 0 if act == 0 else 1
    if opcode == MATMUL:
        m, k, n = dims[:3]
        return OP_SETUP + -(-m // ARRAY) * -(-n // ARRAY) * k + _vec(m * n) * (int(bias) + act_pass)
    if opcode == BINARY:
        return OP_SETUP + _vec(dims[0] * dims[1]) * (1 + act_pass)
    if opcode == UNARY:
        return OP_SETUP + _vec(dims[0]) * (1 + act_pass)
    if opcode == SOFTMAX:
        return OP_SETUP + _vec(dims[0] * dims[1]) * (3 + act_pass) + dims[0]
    if opcode == REDUCE:
        return OP_SETUP + _vec(dims[0] * dims[1]) + dims[0] + _vec(dims[0]) * act_pass
    return None


def scaled_cycles(opcode: int, dims: list[int], scale_mask: int, act: int, bias: bool,
                  batch: int) -> int | None:
    """op_cycles for a job of `batch` items: dims with scale_mask bit i are multiplied by it."""
    used = [d * batch if scale_mask >> i & 1 else d for i, d in enumerate(dims)]
    return op_cycles(opcode, used, act, bias)
