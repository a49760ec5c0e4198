"""A program loaded on a device: its buffers, and inference calls that split any batch into jobs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from flaxnpu_abi import hw, prog

from ..errors import JobError
from . import host
from .dma import DmaBuffer
from .udriver import UserDriver

if TYPE_CHECKING:
    from ..program import Program

# A loaded model keeps buffers for its largest job: at most MAX_JOB_BATCH items and JOB_MEMORY_BUDGET
# bytes of arena + inputs + outputs. Larger calls are split into several jobs; past ~1k items a job's
# fixed cost is already small against its work, so bigger jobs would only hold memory.
JOB_MEMORY_BUDGET = 16 << 20
MAX_JOB_BATCH = 1024


def default_max_batch(per_item: int) -> int:
    return max(1, min(MAX_JOB_BATCH, JOB_MEMORY_BUDGET // max(per_item, 1)))


@dataclass(frozen=True)
class IoSpec:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int  # per batch item
    size: int  # per batch item

    @classmethod
    def from_manifest(cls, d: dict) -> IoSpec:
        return cls(d["name"], tuple(d["shape"]), np.dtype(d["dtype"]), int(d["offset"]), int(d["size"]))


def _seg_bytes(per_item: int, batch: int) -> int:
    # A segment may not be empty; a program without arena tensors still names the segment.
    return max(per_item * batch, prog.ALIGN)


class LoadedModel:
    """Callable: numpy arrays in (leading batch axis of any size), numpy arrays out."""

    def __init__(self, driver: UserDriver, program: Program, *, max_batch: int | None = None) -> None:
        self.driver = driver
        self.program = program
        self.inputs = [IoSpec.from_manifest(d) for d in program.inputs]
        self.outputs = [IoSpec.from_manifest(d) for d in program.outputs]
        self._arena_item = int(program.arena_size)
        self._in_item = max((s.offset + s.size for s in self.inputs), default=0)
        self._out_item = max((s.offset + s.size for s in self.outputs), default=0)
        per_item = self._arena_item + self._in_item + self._out_item
        self.max_batch = max_batch or default_max_batch(per_item)
        alloc = driver.alloc
        self._buffers: list[DmaBuffer] = []
        self._image = self._keep(alloc.alloc(len(program.image)))
        self._image.view[:] = program.image
        self._table = self._keep(alloc.alloc(prog.SEG_COUNT * hw.SEG_ENTRY.itemsize))
        self._arena = self._keep(alloc.alloc(_seg_bytes(self._arena_item, self.max_batch)))
        self._in = self._keep(alloc.alloc(_seg_bytes(self._in_item, self.max_batch)))
        self._out = self._keep(alloc.alloc(_seg_bytes(self._out_item, self.max_batch)))
        self.last_cycles = 0
        self._segments = host.plan(program)  # imports jax only when the program has host segments

    def _keep(self, buf: DmaBuffer) -> DmaBuffer:
        self._buffers.append(buf)
        return buf

    def _check_inputs(self, xs: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        if len(xs) != len(self.inputs):
            raise TypeError(f"model takes {len(self.inputs)} input(s) "
                            f"({', '.join(s.name for s in self.inputs)}), got {len(xs)}")
        out, batch = [], None
        for x, spec in zip(xs, self.inputs, strict=True):
            a = np.asarray(x)
            if a.shape[1:] != spec.shape:
                raise ValueError(f"input {spec.name!r} must have shape (batch, {', '.join(map(str, spec.shape))}), "
                                 f"got {a.shape}")
            if batch is not None and a.shape[0] != batch:
                raise ValueError(f"inputs disagree on the batch size: {batch} vs {a.shape[0]}")
            batch = a.shape[0]
            out.append(np.ascontiguousarray(a, dtype=spec.dtype))
        return out

    def __call__(self, *xs: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        arrays = self._check_inputs(xs)
        batch = arrays[0].shape[0] if arrays else 0
        results = [np.empty((batch, *s.shape), dtype=s.dtype) for s in self.outputs]
        self.last_cycles = 0
        for start in range(0, batch, self.max_batch):
            n = min(self.max_batch, batch - start)
            self._run_chunk([a[start:start + n] for a in arrays], [r[start:start + n] for r in results], n)
        return results[0] if len(results) == 1 else tuple(results)

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

    def _explain(self, e: JobError, first: int = 0) -> JobError:
        """Name the Flax module behind a failing op: that is where a user can act."""
        ops = self.program.manifest.get("ops", [])
        if first and e.op_index is not None:  # the job ran ops [first, ...): its index is relative
            e = JobError(str(e).replace(f"at op {e.op_index}", f"at op {e.op_index + first}"), e.status,
                         e.op_index + first, e.info)
        if e.op_index is not None and 0 <= e.op_index < len(ops):
            meta = ops[e.op_index]
            where = f" (op {e.op_index}: {meta.get('opcode')} from {meta.get('module') or '?'}"
            where += f", {meta['source']})" if meta.get("source") else ")"
            return JobError(str(e) + where, e.status, e.op_index, e.info)
        return e

    def unload(self) -> None:
        for buf in self._buffers:
            self.driver.alloc.free(buf)
        self._buffers.clear()
