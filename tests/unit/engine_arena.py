"""Test helper: one job's worth of segments in an AnonymousMemory, tensors placed in them, op records."""

from __future__ import annotations

import numpy as np
import pytest
from flaxnpu_abi import prog
from flaxnpu_abi.hw import SEG_FLAG
from flaxnpu_sim.engines import run_op
from flaxnpu_sim.errors import EngineError
from flaxnpu_sim.memory import AnonymousMemory
from flaxnpu_sim.mmu import Segments
from segtable import write_table

BASE = 0x1000_0000
DATA = BASE + 0x1000
RW = SEG_FLAG.READ | SEG_FLAG.WRITE
NUMPY = {prog.DTYPE.F32: np.dtype("<f4"), prog.DTYPE.I32: np.dtype("<i4"), prog.DTYPE.I8: np.dtype("i1")}
DTYPES = {v: k for k, v in NUMPY.items()}


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

    def put(self, arr: np.ndarray, seg: int = 0, dtype: str = "<f4") -> tuple:
        a = np.ascontiguousarray(arr, dtype=dtype)
        off = self.cursor
        self.mem.write(self.bases[seg] + off, a.tobytes())
        self.cursor += -(-a.nbytes // 64) * 64 or 64
        return (off, a.nbytes, seg, DTYPES[np.dtype(dtype)], 0)

    def out(self, n: int, seg: int = 0, dtype: str = "<f4") -> tuple:
        fill = np.nan if np.dtype(dtype).kind == "f" else 0x55
        return self.put(np.full(n, fill, dtype), seg, dtype)

    def get(self, ref: tuple, shape: tuple) -> np.ndarray:
        off, size, seg, dtype = ref[:4]
        raw = self.mem.read(self.bases[seg] + off, size)
        return np.frombuffer(raw, NUMPY[dtype]).reshape(shape).copy()


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


def refused(a: Arena, op: np.void) -> tuple[int, int]:
    """(status, info) of an op the engines refuse; the refusal must leave every byte as it was."""
    before = a.mem.read(a.mem.base, a.mem.size)
    with pytest.raises(EngineError) as e:
        run_op(op, a.segments)
    assert a.mem.read(a.mem.base, a.mem.size) == before
    return e.value.status, e.value.info
