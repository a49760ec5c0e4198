"""Access to a 32-bit little-endian register block held in a buffer (the register window or a mirror).

Both sides of the hardware contract use it: the device model writes its RO registers and reads the host's
RW registers through it; the user-space driver does the opposite. The buffer is shared memory, so there
are no read side effects and nothing to cache.
"""

from __future__ import annotations

import struct

_U32 = struct.Struct("<I")


class RegisterBlock:
    """A window of 32-bit registers over a writable buffer (bytearray, mmap or memoryview)."""

    def __init__(self, buf: bytearray | memoryview, size: int) -> None:
        view = memoryview(buf).cast("B")
        if len(view) < size:
            raise ValueError(f"register window needs {size} bytes, buffer has {len(view)}")
        self.buf = view[:size]
        self.size = size

    def _check(self, offset: int, width: int) -> None:
        if offset < 0 or offset % 4 or offset + width > self.size:
            raise ValueError(f"register offset 0x{offset:x} outside the {self.size}-byte window")

    def read(self, offset: int) -> int:
        self._check(offset, 4)
        return _U32.unpack_from(self.buf, offset)[0]

    def write(self, offset: int, value: int) -> None:
        self._check(offset, 4)
        _U32.pack_into(self.buf, offset, value & 0xFFFFFFFF)

    def read64(self, lo_offset: int) -> int:
        """A LO/HI register pair; the high word sits 4 bytes above the low word."""
        return self.read(lo_offset) | self.read(lo_offset + 4) << 32

    def write64(self, lo_offset: int, value: int) -> None:
        self.write(lo_offset, value & 0xFFFFFFFF)
        self.write(lo_offset + 4, value >> 32)
