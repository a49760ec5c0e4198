"""Test helpers: segment tables and page lists written into a HostMemory."""

from __future__ import annotations

import numpy as np
from flaxnpu_abi import hw
from flaxnpu_sim.memory import HostMemory


def write_table(mem: HostMemory, at: int, entries: list[tuple[int, int, int] | tuple[int, int, int, int]]) -> int:
    """Write (addr, size, flags[, reserved]) records at `at`; returns `at`."""
    t = np.zeros(len(entries), hw.SEG_ENTRY)
    for i, e in enumerate(entries):
        t[i] = (*e, 0) if len(e) == 3 else e
    mem.write(at, t.tobytes())
    return at


def write_pages(mem: HostMemory, at: int, pages: list[int]) -> int:
    """Write a page list (u64 page addresses) at `at`; returns `at`."""
    mem.write(at, np.array(pages, "<u8").tobytes())
    return at
