"""How a lax elementwise op's operands map onto BINARY's 2-D broadcast modes.

A per-item output of shape S is seen as R x C with R = prod(S[:k]) (times the batch) and C = prod(S[k:])
for a split point k. A batch-dependent operand of shape E (E[i] is 1 or S[i]) is FULL when E == S and COL
when it varies only over the first k axes; a weight is ROW when it is constant over the first k axes and
SCALAR when it has one element. choose_split picks a k that every operand can live with.
"""

from __future__ import annotations

import math

import numpy as np
from flaxnpu_abi.prog import BCAST


def tensor_modes(e: tuple[int, ...], s: tuple[int, ...]) -> dict[int, BCAST]:
    """Split points k (0..n) at which a per-item operand of shape e broadcasts to s, with its mode."""
    n = len(s)
    modes: dict[int, BCAST] = {}
    for k in range(n + 1):
        if tuple(e) == tuple(s):
            modes[k] = BCAST.FULL
        elif tuple(e[:k]) == tuple(s[:k]) and all(d == 1 for d in e[k:]):
            modes[k] = BCAST.COL
    return modes


def weight_modes(e: tuple[int, ...], s: tuple[int, ...], copy: bool = False) -> dict[int, BCAST]:
    """Split points at which a weight of per-item shape e is a ROW (or SCALAR).

    Without copy, only where it already has the row's shape; with copy, wherever it is constant over
    the first k axes (materialize_row then repeats it along the others).
    """
    if math.prod(e) == 1:
        return dict.fromkeys(range(len(s) + 1), BCAST.SCALAR)
    return {k: BCAST.ROW for k in range(len(s) + 1)
            if all(d == 1 for d in e[:k]) and (copy or tuple(e[k:]) == tuple(s[k:]))}


def choose_split(options: list[dict[int, BCAST]], n: int) -> int | None:
    """The split every operand accepts, preferring rows of the last axis (what REDUCE and SOFTMAX use)."""
    for k in [n - 1, n, *range(n - 2, -1, -1)]:
        if k >= 0 and all(k in o for o in options):
            return k
    return None


def materialize_row(value: np.ndarray, s: tuple[int, ...], k: int) -> np.ndarray:
    """A weight of per-item shape e (constant over the first k axes) as the row s[k:] it stands for."""
    full = np.broadcast_to(value, s)
    return np.ascontiguousarray(full[(0,) * k], dtype=np.float32)
