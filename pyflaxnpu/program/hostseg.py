"""Host segments: the manifest's "segments" and "host_blobs", checked without jax.

A program whose model has parts the NPU cannot run (compile(..., fallback="auto")) is a sequence of
segments in topological order:
    {"kind": "npu", "first": i, "last": j}    ops [i, j) of the op stream, run as one device job
    {"kind": "cpu", "blob": k, "inputs": [...], "outputs": [...], "eqns": [...]}
        host_blobs[k] (base64 of a jax.export serialization, batch axis symbolic) run on the CPU with
        jax; inputs/outputs are tensors {name, shape (per item), dtype, seg, offset, size (per item)}
        in SEG_INPUT/SEG_ARENA (read) or SEG_ARENA/SEG_OUTPUT (written), laid out like scaled refs;
        eqns say which jaxpr equations it runs and why the NPU could not.
The file header's flags carry FILE_FLAG_HOST_SEGMENTS, so a reader that does not know segments refuses
the file instead of running the op stream as one job over an arena nobody filled.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

from flaxnpu_abi import prog

from pyflaxnpu.errors import ProgramFormatError

FILE_FLAG_HOST_SEGMENTS = int(prog.FILE_FLAG.HOST_SEGMENTS)

# numpy dtypes a host tensor may have (what jax computes on the CPU without x64).
ITEMSIZE = {"float32": 4, "int32": 4, "uint32": 4, "float16": 2, "bfloat16": 2, "int16": 2, "uint16": 2,
            "int8": 1, "uint8": 1, "bool": 1}
_IO = {"name": str, "shape": list, "dtype": str, "seg": int, "offset": int, "size": int}
_READ = (prog.SEG_ARENA, prog.SEG_INPUT)
_WRITE = (prog.SEG_ARENA, prog.SEG_OUTPUT)


def _fail(path: str, problem: str) -> ProgramFormatError:
    return ProgramFormatError(f"program manifest: {path} {problem}")


def has_host(manifest: dict[str, Any]) -> bool:
    return any(isinstance(s, dict) and s.get("kind") == "cpu" for s in manifest.get("segments", []) or [])


def header_flags(manifest: dict[str, Any]) -> int:
    return FILE_FLAG_HOST_SEGMENTS if has_host(manifest) else 0


def check_segments(manifest: dict[str, Any], op_count: int, extents: dict[int, int]) -> None:
    """The segments cover the op stream once, in order; every host tensor lies inside its segment."""
    if "segments" not in manifest:
        if "host_blobs" in manifest:
            raise _fail("host_blobs", "is present without 'segments'")
        return
    segments, blobs = manifest["segments"], manifest.get("host_blobs", [])
    if not isinstance(segments, list) or not segments:
        raise _fail("segments", "must be a non-empty list")
    if not isinstance(blobs, list) or not all(isinstance(b, str) for b in blobs):
        raise _fail("host_blobs", "must be a list of base64 strings")
    next_op = 0
    for i, s in enumerate(segments):
        path = f"segments[{i}]"
        if not isinstance(s, dict) or s.get("kind") not in ("npu", "cpu"):
            raise _fail(path, "must be an object with kind 'npu' or 'cpu'")
        if s["kind"] == "npu":
            first, last = s.get("first"), s.get("last")
            if not (_int(first) and _int(last) and first == next_op and first < last <= op_count):
                raise _fail(path, f"covers ops [{first}, {last}); expected [{next_op}, j) with "
                            f"{next_op} < j <= {op_count} (device segments run the op stream once, in order)")
            next_op = last
            continue
        blob = s.get("blob")
        if not (_int(blob) and blob < len(blobs)):
            raise _fail(f"{path}.blob", f"is {blob!r}; host_blobs has {len(blobs)}")
        for key, allowed in (("inputs", _READ), ("outputs", _WRITE)):
            entries = s.get(key)
            if not isinstance(entries, list) or (key == "outputs" and not entries):
                more = " with at least one tensor" if key == "outputs" else ""
                raise _fail(f"{path}.{key}", f"must be a list{more}")
            for j, t in enumerate(entries):
                _tensor(t, f"{path}.{key}[{j}]", allowed, extents)
        if not isinstance(s.get("eqns"), list):
            raise _fail(f"{path}.eqns", "must be a list")
    if next_op != op_count:
        raise _fail("segments", f"run ops [0, {next_op}) on the device; the op stream has {op_count}")
    if len(blobs) != sum(1 for s in segments if s["kind"] == "cpu"):
        raise _fail("host_blobs", f"has {len(blobs)} entries for "
                    f"{sum(1 for s in segments if s['kind'] == 'cpu')} cpu segments")


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _tensor(t: Any, path: str, allowed: tuple[int, ...], extents: dict[int, int]) -> None:
    if not isinstance(t, dict):
        raise _fail(path, "must be a JSON object")
    for key, kind in _IO.items():
        if not isinstance(t.get(key), kind) or (kind is int and not _int(t[key])):
            raise _fail(f"{path}.{key}", f"must be {'a non-negative ' if kind is int else ''}{kind.__name__}")
    if t["dtype"] not in ITEMSIZE:
        raise _fail(f"{path}.dtype", f"is {t['dtype']!r}; this reader knows {sorted(ITEMSIZE)}")
    if not all(_int(d) for d in t["shape"]):
        raise _fail(f"{path}.shape", f"must be a list of non-negative integers, got {t['shape']!r}")
    if t["size"] != math.prod(t["shape"]) * ITEMSIZE[t["dtype"]]:
        raise _fail(f"{path}.size", f"is {t['size']}, but shape {t['shape']} of {t['dtype']} is "
                    f"{math.prod(t['shape']) * ITEMSIZE[t['dtype']]} bytes")
    if t["seg"] not in allowed:
        raise _fail(f"{path}.seg", f"is {t['seg']}; allowed here: {list(allowed)}")
    if t["offset"] % prog.ALIGN or t["offset"] + t["size"] > extents[t["seg"]]:
        raise _fail(path, f"[{t['offset']}, {t['offset'] + t['size']}) is unaligned or outside segment "
                    f"{t['seg']}, which has {extents[t['seg']]} bytes per batch item")


def blob(manifest: dict[str, Any], index: int) -> bytes:
    try:
        return base64.b64decode(manifest["host_blobs"][index], validate=True)
    except (binascii.Error, ValueError) as e:
        raise ProgramFormatError(f"program manifest: host_blobs[{index}] is not base64: {e}") from None
