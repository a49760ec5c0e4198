"""Host memory the device can reach: a first-fit allocator of DMA buffers over one DMA window.

In-process the window is the simulator's anonymous memory; under VFIO or QEMU it is memory whose DMA
addresses the host knows. The allocator only hands out ranges; it never touches their bytes.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..errors import DeviceError


class DmaWindow(Protocol):
    """What the allocator needs of a memory: its DMA range and a writable zero-copy view."""

    base: int
    size: int

    def view(self, addr: int, n: int) -> memoryview: ...


@dataclass(eq=False)
class DmaBuffer:
    """One allocated range; `view` and `array` are zero-copy windows on its bytes."""

    addr: int
    size: int
    _window: DmaWindow

    @property
    def view(self) -> memoryview:
        return self._window.view(self.addr, self.size)

    def array(self, dtype: np.dtype | type, count: int, offset: int = 0) -> np.ndarray:
        itemsize = np.dtype(dtype).itemsize
        if offset < 0 or offset + count * itemsize > self.size:
            raise ValueError(f"array of {count} x {itemsize} B at +{offset} exceeds the {self.size}-byte buffer")
        return np.frombuffer(self.view, dtype=dtype, count=count, offset=offset)


class DmaAllocator:
    """First-fit allocation with alignment; frees coalesce with their neighbours."""

    def __init__(self, window: DmaWindow, *, start: int | None = None, end: int | None = None) -> None:
        self.window = window
        lo = window.base if start is None else start
        hi = window.base + window.size if end is None else end
        self._free: list[tuple[int, int]] = [(lo, hi)]  # sorted, non-adjacent [start, end) ranges
        self._used: dict[int, int] = {}

    def alloc(self, size: int, align: int = 4096) -> DmaBuffer:
        if size <= 0:
            raise ValueError(f"DMA buffer size must be positive, got {size}")
        for i, (lo, hi) in enumerate(self._free):
            start = -(-lo // align) * align
            if start + size <= hi:
                pieces = [(a, b) for a, b in ((lo, start), (start + size, hi)) if b > a]
                self._free[i:i + 1] = pieces
                self._used[start] = size
                return DmaBuffer(start, size, self.window)
        free = sum(b - a for a, b in self._free)
        raise DeviceError(f"out of device-visible memory: {size} bytes wanted, {free} free in "
                          f"fragments; unload models or use a smaller batch")

    def free(self, buf: DmaBuffer) -> None:
        size = self._used.pop(buf.addr, None)
        if size is None:
            raise ValueError(f"DMA buffer at 0x{buf.addr:x} is not allocated here (double free?)")
        lo, hi = buf.addr, buf.addr + size
        i = bisect.bisect(self._free, (lo, hi))
        if i < len(self._free) and self._free[i][0] == hi:
            hi = self._free.pop(i)[1]
        if i > 0 and self._free[i - 1][1] == lo:
            lo = self._free.pop(i - 1)[0]
            i -= 1
        self._free.insert(i, (lo, hi))

    @property
    def used_bytes(self) -> int:
        return sum(self._used.values())
