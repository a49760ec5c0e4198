"""Test helper: run a Program's op stream on the device model's engines, without firmware or runtime.

It does what the firmware does to each op (apply the batch: dims in scale_mask and SCALED refs times B)
and what the runtime does with segments (program image, arena, input, output in one AnonymousMemory),
then hands each op to flaxnpu_sim.engines.run_op, which re-checks everything like the hardware.
"""

from __future__ import annotations

import numpy as np
from flaxnpu_abi import prog
from flaxnpu_abi.hw import SEG_FLAG
from flaxnpu_sim.engines import run_op
from flaxnpu_sim.memory import AnonymousMemory
from flaxnpu_sim.mmu import Segments
from segtable import write_table

from pyflaxnpu.program import Program

BASE = 0x1000_0000
_REFS = ("src0", "src1", "src2", "src3", "dst")


def _page(n: int) -> int:
    return max(4096, -(-n // 4096) * 4096)


def scale(op: np.void, batch: int) -> np.void:
    """The firmware's batch rule: dims with scale_mask bit i and SCALED refs are multiplied by batch."""
    out = op.copy()
    mask = int(op["scale_mask"])
    for i in range(6):
        if mask >> i & 1:
            out["dims"][i] = int(op["dims"][i]) * batch
    for r in _REFS:
        if int(op[r]["flags"]) & prog.REF_FLAG.SCALED:
            out[r]["offset"] = int(op[r]["offset"]) * batch
            out[r]["size"] = int(op[r]["size"]) * batch
            out[r]["flags"] = int(op[r]["flags"]) & ~prog.REF_FLAG.SCALED
    out["scale_mask"] = 0
    return out


def run(program: Program, x: np.ndarray) -> list[np.ndarray]:
    """Outputs of program on x (shape [B, *input shape]), one array [B, *output shape] per output."""
    inp = program.inputs[0]
    x = np.ascontiguousarray(x, dtype="<i4" if inp["dtype"] == "int32" else "<f4")
    batch = x.shape[0]
    assert x.shape[1:] == tuple(inp["shape"]), (x.shape, inp["shape"])
    out_extent = max(o["offset"] + o["size"] for o in program.outputs)
    sizes = [len(program.image), program.arena_size * batch, inp["size"] * batch, out_extent * batch]
    rights = [SEG_FLAG.READ, SEG_FLAG.READ | SEG_FLAG.WRITE, SEG_FLAG.READ, SEG_FLAG.WRITE]
    addrs, at = [], BASE + 4096
    for size in sizes:
        addrs.append(at)
        at += _page(size)
    mem = AnonymousMemory(at - BASE, base=BASE)
    write_table(mem, BASE, [(a, max(s, 4), int(f)) for a, s, f in zip(addrs, sizes, rights, strict=True)])
    segments = Segments.load(mem, BASE, prog.SEG_COUNT)
    mem.write(addrs[prog.SEG_PROGRAM], program.image)
    mem.write(addrs[prog.SEG_INPUT] + inp["offset"] * batch, x.tobytes())
    # Poison the arena and outputs: a value read before it is written shows up as NaN.
    mem.write(addrs[prog.SEG_ARENA], np.full(sizes[1] // 4, np.nan, "<f4").tobytes())
    mem.write(addrs[prog.SEG_OUTPUT], np.full(sizes[3] // 4, np.nan, "<f4").tobytes())
    for op in program.ops:
        run_op(scale(op, batch), segments)
    outs = []
    for o in program.outputs:
        raw = mem.read(addrs[prog.SEG_OUTPUT] + o["offset"] * batch, o["size"] * batch)
        outs.append(np.frombuffer(raw, "<f4").reshape(batch, *o["shape"]).copy())
    return outs
