"""The device MMU: the current job's segment table, checked once, and every access through it.

A job reaches host memory only through its segments (contract 1). The table and the page lists are copied
when the job installs them, so a host that rewrites them afterwards changes nothing. Each segment becomes
a sorted list of physically contiguous extents (a contiguous segment is one extent; a page list is one
extent per run of adjacent pages), which is what makes zero-copy views possible where the memory allows.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np
from flaxnpu_abi import hw
from flaxnpu_abi.hw import SEG_FLAG, STATUS

from .errors import SegmentError
from .memory import HostMemory

# plain ints: IntFlag arithmetic costs microseconds per op in the engines' hot path
_PAGES, _READ, _WRITE = int(SEG_FLAG.PAGES), int(SEG_FLAG.READ), int(SEG_FLAG.WRITE)
# Plain ints: ~ of an IntFlag complements within its members only, which would hide unknown bits.
_KNOWN_FLAGS = _READ | _WRITE | _PAGES
_RIGHTS = _READ | _WRITE


@dataclass(frozen=True)
class Extent:
    seg_offset: int  # first byte of the extent inside the segment
    addr: int  # host DMA address of that byte
    length: int


@dataclass(frozen=True)
class Segment:
    size: int
    flags: SEG_FLAG
    extents: tuple[Extent, ...]
    starts: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "starts", tuple(e.seg_offset for e in self.extents))

    def locate(self, off: int) -> int:
        """Index of the extent holding segment byte `off` (0 <= off < size)."""
        return bisect.bisect_right(self.starts, off) - 1


def _extents_from_pages(pages: list[int], size: int) -> tuple[Extent, ...]:
    out: list[Extent] = []
    for i, page in enumerate(pages):
        length = min(hw.PAGE_SIZE, size - i * hw.PAGE_SIZE)
        last = out[-1] if out else None
        if last is not None and last.addr + last.length == page:
            out[-1] = Extent(last.seg_offset, last.addr, last.length + length)
        else:
            out.append(Extent(i * hw.PAGE_SIZE, page, length))
    return tuple(out)


def parse_table(memory: HostMemory, table: int, count: int) -> tuple[list[Segment], bytes]:
    """Check a segment table in host memory (MMU_KICK semantics); returns the segments and the table bytes.

    Raises SegmentError: SEG_COUNT (info = count), SEG_TABLE (info = table address, low word), or
    SEG_FLAGS / SEG_SIZE / SEG_PAGES with info = index of the first bad entry.
    """
    if not 1 <= count <= hw.MAX_SEGMENTS:
        raise SegmentError(STATUS.SEG_COUNT, count, f"seg_count {count} is not in 1..{hw.MAX_SEGMENTS}")
    nbytes = count * hw.SEG_ENTRY.itemsize
    if not memory.contains(table, nbytes):
        raise SegmentError(STATUS.SEG_TABLE, table, f"segment table 0x{table:x} lies outside host memory")
    raw = memory.read(table, nbytes)  # one snapshot: later host writes cannot change what we checked
    segs: list[Segment] = []
    for i, e in enumerate(np.frombuffer(raw, hw.SEG_ENTRY)):
        addr, size, flags = int(e["addr"]), int(e["size"]), int(e["flags"])
        if flags & ~_KNOWN_FLAGS or not flags & _RIGHTS or int(e["reserved"]):
            raise SegmentError(STATUS.SEG_FLAGS, i, f"segment {i}: flags 0x{flags:x}, reserved {e['reserved']}")
        if size == 0:
            raise SegmentError(STATUS.SEG_SIZE, i, f"segment {i} is empty")
        if not flags & _PAGES:
            if not memory.contains(addr, size):
                raise SegmentError(STATUS.SEG_SIZE, i, f"segment {i} [0x{addr:x}, +0x{size:x}) leaves host memory")
            segs.append(Segment(size, SEG_FLAG(flags), (Extent(0, addr, size),)))
            continue
        npages = -(-size // hw.PAGE_SIZE)
        if not memory.contains(addr, npages * 8):
            raise SegmentError(STATUS.SEG_PAGES, i, f"segment {i}: page list at 0x{addr:x} is unreadable")
        pages = [int(p) for p in np.frombuffer(memory.read(addr, npages * 8), "<u8")]
        for p in pages:
            if p % hw.PAGE_SIZE or not memory.contains(p, hw.PAGE_SIZE):
                raise SegmentError(STATUS.SEG_PAGES, i, f"segment {i}: page 0x{p:x} unaligned or outside memory")
        segs.append(Segment(size, SEG_FLAG(flags), _extents_from_pages(pages, size)))
    return segs, raw


class Segments:
    """The installed segments of the current job, with checked access. Nothing is touched on failure."""

    def __init__(self, memory: HostMemory, segs: list[Segment] | None = None) -> None:
        self.memory = memory
        self.segs: list[Segment] = list(segs or [])

    @classmethod
    def load(cls, memory: HostMemory, table: int, count: int) -> Segments:
        return cls(memory, parse_table(memory, table, count)[0])

    def __len__(self) -> int:
        return len(self.segs)

    def check(self, seg: int, off: int, n: int, need: SEG_FLAG) -> Segment:
        """The segment, if [off, off + n) lies inside it and it grants `need`; else SegmentError with
        OP_SEGMENT (info = seg), OP_RIGHTS (info = seg) or OP_BOUNDS (info = off)."""
        seg, off, n = int(seg), int(off), int(n)
        if not 0 <= seg < len(self.segs):
            raise SegmentError(STATUS.OP_SEGMENT, seg, f"segment {seg} not in the job's {len(self.segs)}")
        s = self.segs[seg]
        missing = int(need) & ~int(s.flags)
        if missing:
            raise SegmentError(STATUS.OP_RIGHTS, seg, f"segment {seg} lacks {SEG_FLAG(missing)!r}")
        # Subtraction form: off + n may not wrap in the 32-bit firmware either.
        if off < 0 or n < 0 or n > s.size or off > s.size - n:
            raise SegmentError(STATUS.OP_BOUNDS, off, f"[0x{off:x}, +0x{n:x}) outside segment {seg} (0x{s.size:x})")
        return s

    def _pieces(self, s: Segment, off: int, n: int) -> list[memoryview]:
        """Host views covering segment bytes [off, off + n), in order (range already checked)."""
        out: list[memoryview] = []
        if n == 0:
            return out
        i = s.locate(off)
        while n > 0:
            e = s.extents[i]
            skip = off - e.seg_offset
            take = min(n, e.length - skip)
            out.append(self.memory.view(e.addr + skip, take))
            off, n, i = off + take, n - take, i + 1
        return out

    def read(self, seg: int, off: int, n: int) -> bytes:
        s = self.check(seg, off, n, _READ)
        return b"".join(bytes(v) for v in self._pieces(s, int(off), int(n)))

    def write(self, seg: int, off: int, data: bytes | bytearray | memoryview) -> None:
        src = memoryview(data).cast("B")
        s = self.check(seg, off, len(src), _WRITE)
        pos = 0
        for v in self._pieces(s, int(off), len(src)):
            v[:] = src[pos:pos + len(v)]
            pos += len(v)

    def ndarray(self, seg: int, off: int, count: int, dtype: np.dtype | str) -> np.ndarray:
        """`count` elements read from the segment: a read-only zero-copy view when the bytes are physically
        contiguous, a gathered copy otherwise."""
        dt = np.dtype(dtype)
        n = int(count) * dt.itemsize
        s = self.check(seg, off, n, _READ)
        pieces = self._pieces(s, int(off), n)
        if len(pieces) == 1:
            arr = np.frombuffer(pieces[0], dt, int(count))
            arr.flags.writeable = False
            return arr
        return np.frombuffer(b"".join(bytes(v) for v in pieces), dt, int(count))

    def write_array(self, seg: int, off: int, arr: np.ndarray) -> None:
        """Store an array's bytes in the segment (scattered through the page list when needed)."""
        self.write(seg, off, np.ascontiguousarray(arr).view(np.uint8).reshape(-1).data)
