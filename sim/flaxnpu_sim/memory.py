"""The device's view of host RAM: a flat range of DMA addresses backed by one buffer.

In-process the buffer is an anonymous mmap (AnonymousMemory); under QEMU it is the guest-RAM file, where a
DMA address is a file offset. The device model sees nothing else of the host, so it does not care which.
Every range check is written so that it cannot wrap: the host controls every address and size it gives us.
"""

from __future__ import annotations

import mmap


class HostMemoryError(ValueError):
    """An access outside host memory. The device model checks ranges first, so this is a model bug."""


class HostMemory:
    """DMA addresses [base, base + size) over a writable buffer (mmap, bytearray or memoryview)."""

    def __init__(self, buf: mmap.mmap | bytearray | memoryview, base: int = 0) -> None:
        self._buf = memoryview(buf).cast("B")
        if self._buf.readonly:
            raise ValueError("host memory must be writable: the device writes completions and results")
        if base < 0:
            raise ValueError(f"host memory base 0x{base:x} is negative")
        self.base = base
        self.size = len(self._buf)

    def contains(self, addr: int, n: int) -> bool:
        """True when [addr, addr + n) lies inside host memory; never true for a range that would wrap."""
        if addr < self.base or n < 0 or n > self.size:
            return False
        return addr - self.base <= self.size - n

    def _offset(self, addr: int, n: int) -> int:
        if not self.contains(addr, n):
            raise HostMemoryError(
                f"host memory access [0x{addr:x}, +0x{n:x}) outside [0x{self.base:x}, +0x{self.size:x})")
        return addr - self.base

    def view(self, addr: int, n: int) -> memoryview:
        """Zero-copy, writable view of [addr, addr + n)."""
        off = self._offset(addr, n)
        return self._buf[off:off + n]

    def read(self, addr: int, n: int) -> bytes:
        return bytes(self.view(addr, n))

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        src = memoryview(data).cast("B")
        self.view(addr, len(src))[:] = src


class AnonymousMemory(HostMemory):
    """Host memory for the in-process device: one anonymous mmap, zero-filled, at a non-zero base so that
    a DMA address 0 (the commonest bug) is outside it."""

    def __init__(self, size: int, base: int = 0x1000_0000) -> None:
        if size <= 0:
            raise ValueError(f"host memory size {size} must be positive")
        self._map = mmap.mmap(-1, size)
        super().__init__(self._map, base)
