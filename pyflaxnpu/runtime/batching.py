"""What every loaded model does the same way on every backend: check the inputs, split any batch into
jobs of at most max_batch items, join the outputs, and name the Flax module behind a failing op."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from flaxnpu_abi import prog

from ..errors import DeviceError, JobError

if TYPE_CHECKING:
    from ..program import Program

# A loaded model keeps buffers for its largest job: at most MAX_JOB_BATCH items and JOB_MEMORY_BUDGET
# bytes of arena + inputs + outputs. Larger calls are split into several jobs; past ~1k items a job's
# fixed cost is already small against its work, so bigger jobs would only hold memory.
JOB_MEMORY_BUDGET = 16 << 20
MAX_JOB_BATCH = 1024


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


class BatchedModel:
    """Callable: numpy arrays in (leading batch axis of any size), numpy arrays out. Subclasses run one
    job of n items in _run_chunk."""

    def __init__(self, program: Program, max_batch: int | None) -> None:
        self.program = program
        self.inputs = [IoSpec.from_manifest(d) for d in program.inputs]
        self.outputs = [IoSpec.from_manifest(d) for d in program.outputs]
        self._arena_item = int(program.arena_size)
        self._in_item = max((s.offset + s.size for s in self.inputs), default=0)
        self._out_item = max((s.offset + s.size for s in self.outputs), default=0)
        per_item = self._arena_item + self._in_item + self._out_item
        self.max_batch = max_batch or max(1, min(MAX_JOB_BATCH, JOB_MEMORY_BUDGET // max(per_item, 1)))
        self.last_cycles = 0

    def _check_caps(self, caps: int, device: str) -> None:
        """Refuse, at load time, a program with opcodes the device's engines lack (its CAPS register): a
        newer program on an older device would otherwise fail mid-job with OP_OPCODE."""
        used = {int(op) for op in np.unique(self.program.ops["opcode"])} if self.program.op_count else set()
        missing = sorted(op for op in used if not caps >> op & 1)
        if missing:
            names = ", ".join(prog.OPCODE(op).name if op in prog.OPCODE._value2member_map_ else str(op)
                              for op in missing)
            major, minor = self.program.version
            raise DeviceError(f"this program (format {major}.{minor}) uses {names}, which the NPU behind {device} "
                              f"does not have (CAPS 0x{caps:x}): run it on a device with newer engines, or "
                              "recompile it for this one (CONVERT comes with quantize='int8')")

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
        raise NotImplementedError

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
