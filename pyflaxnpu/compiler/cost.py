"""Estimated device cycles of an op, for the compile report.

The cycle model is part of the hardware contract (flaxnpu_abi/cycles.py, docs/hardware.md): the device
model charges these cycles to every op it runs, and the compiler estimates with the very same function,
so an estimate cannot drift from what the device reports.
"""

from __future__ import annotations

from collections.abc import Sequence

from flaxnpu_abi.cycles import op_cycles

# What report totals assume for "per item": a job of this many items, divided by it.
PER_ITEM_BATCH = 64


def scaled_cycles(opcode: int, dims: Sequence[int], scale_mask: int, act: int, bias: bool, batch: int,
                  params: Sequence[int] = (), residual: bool = False, quant: bool = False) -> int | None:
    """Cycles of one op in a job of `batch` items (dims with scale_mask bit i are multiplied by it);
    None for an opcode the model does not know."""
    used = tuple(d * batch if scale_mask >> i & 1 else d for i, d in enumerate(dims))
    try:
        return op_cycles(opcode, used, act, bias, tuple(params), residual, quant)
    except ValueError:
        return None
