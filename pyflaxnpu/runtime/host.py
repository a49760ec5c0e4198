"""Run a program's host segments (CPU fallback) between its device jobs.

jax is imported here, lazily, and only when a program has host segments: a program that runs wholly on
the NPU needs neither jax nor the compiler, and this module never imports pyflaxnpu.compiler either. A
host segment is a jax.export'ed function (batch axis symbolic) of tensors that live in the job's
segments; a backend hands run() a byte view per segment (the DMA buffer in-process, an mmap'd buffer
object through the kernel driver), and the tensors are read and written in place, laid out like the
device's scaled refs: [offset*n, (offset+size)*n) holds the n items, row-major.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ProgramFormatError
from ..program.hostseg import blob

if TYPE_CHECKING:
    from ..program import Program


@dataclass(frozen=True)
class Segment:
    """One step of a mixed program: ops [first, last) on the device, or host function `fn`."""

    kind: str                              # "npu" or "cpu"
    first: int = 0
    last: int = 0
    fn: Any = None                         # jax.export.Exported
    inputs: tuple[dict[str, Any], ...] = ()
    outputs: tuple[dict[str, Any], ...] = ()


def plan(program: Program) -> list[Segment]:
    """The program as segments: one device segment for a program without host segments."""
    m = program.manifest
    if "segments" not in m:
        return [Segment("npu", 0, program.op_count)]
    out = []
    for s in m["segments"]:
        if s["kind"] == "npu":
            out.append(Segment("npu", s["first"], s["last"]))
        else:
            out.append(Segment("cpu", fn=_load(m, s["blob"]), inputs=tuple(s["inputs"]),
                               outputs=tuple(s["outputs"])))
    return out


def _load(manifest: dict[str, Any], index: int) -> Any:
    try:
        from jax import export
    except ImportError:
        raise ProgramFormatError("this program runs part of the model on the CPU (host segments): install "
                                 "jax to run it (pip install jax flatbuffers)") from None
    try:
        return export.deserialize(bytearray(blob(manifest, index)))
    except ImportError as e:  # jax without flatbuffers
        raise ProgramFormatError(f"cannot load host segment {index}: {e}") from None
    except Exception as e:
        raise ProgramFormatError(f"program manifest: host_blobs[{index}] is not a jax.export serialization "
                                 f"this jax can read: {e}") from None


def _array(view: memoryview, t: dict[str, Any], n: int) -> np.ndarray:
    dt = _dtype(t["dtype"])
    return np.frombuffer(view, dtype=dt, count=n * (t["size"] // dt.itemsize),
                         offset=t["offset"] * n).reshape(n, *t["shape"])


def _dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes  # ships with jax, which host segments need anyway

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def run(seg: Segment, views: Mapping[int, memoryview], n: int) -> None:
    """Run host segment `seg` for a chunk of n items over the job's segment views (seg index -> bytes)."""
    args = [_array(views[t["seg"]], t, n).copy() for t in seg.inputs]
    results = seg.fn.call(*args)
    for t, r in zip(seg.outputs, results, strict=True):
        dst = np.frombuffer(views[t["seg"]], dtype=np.uint8, count=t["size"] * n, offset=t["offset"] * n)
        dst[:] = np.ascontiguousarray(np.asarray(r), dtype=_dtype(t["dtype"])).reshape(-1).view(np.uint8)
