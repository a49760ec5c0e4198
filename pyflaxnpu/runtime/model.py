"""A program loaded on a device: its buffers, and inference calls that split any batch into jobs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from flaxnpu_abi import hw, prog

from ..errors import JobError
from . import host
from .batching import BatchedModel
from .dma import DmaBuffer
from .udriver import UserDriver

if TYPE_CHECKING:
    from ..program import Program

def _seg_bytes(per_item: int, batch: int) -> int:
    # A segment may not be empty; a program without arena tensors still names the segment.
    return max(per_item * batch, prog.ALIGN)


class LoadedModel(BatchedModel):
    """A program on a device this process drives through the user-space driver (the in-process sim)."""

    def __init__(self, driver: UserDriver, program: Program, *, max_batch: int | None = None) -> None:
        super().__init__(program, max_batch)
        self._check_caps(driver.regs.read(hw.Reg.CAPS), "this device")
        self.driver = driver
        alloc = driver.alloc
        self._buffers: list[DmaBuffer] = []
        self._image = self._keep(alloc.alloc(len(program.image)))
        self._image.view[:] = program.image
        self._table = self._keep(alloc.alloc(prog.SEG_COUNT * hw.SEG_ENTRY.itemsize))
        self._arena = self._keep(alloc.alloc(_seg_bytes(self._arena_item, self.max_batch)))
        self._in = self._keep(alloc.alloc(_seg_bytes(self._in_item, self.max_batch)))
        self._out = self._keep(alloc.alloc(_seg_bytes(self._out_item, self.max_batch)))
        self._segments = host.plan(program)  # imports jax only when the program has host segments

    def _keep(self, buf: DmaBuffer) -> DmaBuffer:
        self._buffers.append(buf)
        return buf

    def _run_chunk(self, xs: list[np.ndarray], ys: list[np.ndarray], n: int) -> None:
        for x, spec in zip(xs, self.inputs, strict=True):
            self._in.view[spec.offset * n:(spec.offset + spec.size) * n] = x.reshape(-1).view(np.uint8)
        table = np.zeros(prog.SEG_COUNT, dtype=hw.SEG_ENTRY)
        table[prog.SEG_PROGRAM] = (self._image.addr, len(self.program.image), hw.SEG_FLAG.READ, 0)
        table[prog.SEG_ARENA] = (self._arena.addr, _seg_bytes(self._arena_item, n),
                                 hw.SEG_FLAG.READ | hw.SEG_FLAG.WRITE, 0)
        table[prog.SEG_INPUT] = (self._in.addr, _seg_bytes(self._in_item, n), hw.SEG_FLAG.READ, 0)
        table[prog.SEG_OUTPUT] = (self._out.addr, _seg_bytes(self._out_item, n), hw.SEG_FLAG.WRITE, 0)
        self._table.view[:] = table.tobytes()
        views = {prog.SEG_ARENA: self._arena.view, prog.SEG_INPUT: self._in.view, prog.SEG_OUTPUT: self._out.view}
        for seg in self._segments:  # one device job, or jobs with host segments between them
            if seg.kind == "cpu":
                host.run(seg, views, n)
                continue
            try:
                done = self.driver.run(opcode=hw.JOB_OP.RUN, seg_table=self._table.addr,
                                       seg_count=prog.SEG_COUNT, prog_seg=prog.SEG_PROGRAM,
                                       prog_offset=seg.first * prog.OP_SIZE, op_count=seg.last - seg.first,
                                       batch=n)
            except JobError as e:
                raise self._explain(e, seg.first) from None
            self.last_cycles += done.cycles
        for y, spec in zip(ys, self.outputs, strict=True):
            y.reshape(-1).view(np.uint8)[:] = self._out.view[spec.offset * n:(spec.offset + spec.size) * n]

    def unload(self) -> None:
        for buf in self._buffers:
            self.driver.alloc.free(buf)
        self._buffers.clear()
