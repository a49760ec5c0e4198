"""Test helper: one job's worth of segments in an AnonymousMemory, tensors placed in them, op records."""

from __future__ import annotations

import numpy as np
from flaxnpu_abi import prog
from flaxnpu_abi.hw import SEG_FLAG
from flaxnpu_sim.memory import AnonymousMemory
from flaxnpu_sim.mmu import Segments
from segtable import write_table

BASE = 0x1000_0000
DATA = BASE + 0x1000
RW = SEG_FLAG.READ | SEG_FLAG.WRITE


class Arena:
    """Segment 0: read-write data; segment 1: read-only; segment 2: write-only."""

    def __init__(self, size: int = 1 << 21) -> None:
        self.mem = AnonymousMemory(size + 0x1000 + 3 * 4096, base=BASE)
        third = (size // 3) & ~0xFFF
        self.bases = [DATA, DATA + third, DATA + 2 * third]
        write_table(self.mem, BASE, [(DATA, third, RW), (DATA + third, third, SEG_FLAG.READ),
                                     (DATA + 2 * third, third, SEG_FLAG.WRITE)])
        self.segments = Segments.load(self.mem, BASE, 3)
        self.cursor = 0

    def put(self, arr: np.ndarray, seg: int = 0) -> tuple:
        a = np.ascontiguousarray(arr, dtype="<f4")
        off = self.cursor
        self.mem.write(self.bases[seg] + off, a.tobytes())
        self.cursor += -(-a.nbytes // 64) * 64 or 64
        return (off, a.nbytes, seg, prog.DTYPE.F32, 0)

    def out(self, n: int, seg: int = 0) -> tuple:
        return self.put(np.full(n, np.nan, "<f4"), seg)

    def get(self, ref: tuple, shape: tuple) -> np.ndarray:
        off, size, seg = ref[:3]
        return np.frombuffer(self.mem.read(self.bases[seg] + off, size), "<f4").reshape(shape).copy()


def make_op(opcode: int, dims: tuple, src0: tuple, dst: tuple, src1: tuple | None = None,
            src2: tuple | None = None, act: int = 0, flags: int = 0, params: tuple = ()) -> np.void:
    op = np.zeros(1, prog.OP)[0]
    op["opcode"], op["act"], op["flags"] = opcode, act, flags
    op["dims"][:len(dims)] = dims
    op["params"][:len(params)] = params
    for name, ref in (("src0", src0), ("src1", src1), ("src2", src2), ("dst", dst)):
        if ref is not None:
            op[name] = ref
    return op
