"""The manifest of a .fnpu file: its schema, and its consistency with the header and the op stream.

Every check raises ProgramFormatError naming the key (as a path like "tensors[3].offset") and the problem,
so a damaged or hand-edited file fails at load time with a message rather than later on the device.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from flaxnpu_abi import prog

from pyflaxnpu.errors import ProgramFormatError
from pyflaxnpu.program.hostseg import check_segments

DTYPES = {"float32": 4, "int32": 4, "int8": 1}   # int32: token indices (GATHER); int8: quantized (1.2)
_IO_KEYS = {"name": str, "shape": list, "dtype": str, "offset": int, "size": int}
_TENSOR_KEYS = {**_IO_KEYS, "seg": int, "scaled": bool}
_OP_KEYS = {"index": int, "opcode": str, "module": str, "primitives": list, "act": str}
_SEG_NAMES = {prog.SEG_PROGRAM: "PROGRAM", prog.SEG_ARENA: "ARENA", prog.SEG_INPUT: "INPUT",
              prog.SEG_OUTPUT: "OUTPUT"}


def _fail(path: str, problem: str) -> ProgramFormatError:
    return ProgramFormatError(f"program manifest: {path} {problem}" if path else f"program manifest {problem}")


def _is(value: Any, kind: type) -> bool:
    # bool is an int subclass in Python; a JSON true is never a valid size or offset.
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _record(obj: Any, path: str, keys: dict[str, type]) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise _fail(path, f"must be a JSON object, got {type(obj).__name__}")
    for key, kind in keys.items():
        if key not in obj:
            raise _fail(path, f"is missing key {key!r}")
        if not _is(obj[key], kind):
            raise _fail(f"{path}.{key}", f"must be {kind.__name__}, got {type(obj[key]).__name__}")
        if kind is int and obj[key] < 0:
            raise _fail(f"{path}.{key}", f"must be >= 0, got {obj[key]}")
    return obj


def _shape(obj: dict[str, Any], path: str) -> list[int]:
    shape = obj["shape"]
    if not all(_is(d, int) and d >= 0 for d in shape):
        raise _fail(f"{path}.shape", f"must be a list of non-negative integers, got {shape!r}")
    if obj["dtype"] not in DTYPES:
        raise _fail(f"{path}.dtype", f"is {obj['dtype']!r}; this reader knows {sorted(DTYPES)}")
    want = math.prod(shape) * DTYPES[obj["dtype"]]
    if obj["size"] != want:
        raise _fail(f"{path}.size", f"is {obj['size']}, but shape {shape} of {obj['dtype']} is {want} bytes")
    if obj["offset"] % prog.ALIGN:
        raise _fail(f"{path}.offset", f"{obj['offset']} is not {prog.ALIGN}-byte aligned")
    return shape


def _list(manifest: dict[str, Any], key: str) -> list[Any]:
    if key not in manifest:
        raise _fail("", f"is missing key {key!r}")
    if not isinstance(manifest[key], list):
        raise _fail(key, f"must be a list, got {type(manifest[key]).__name__}")
    return manifest[key]


def _int(manifest: dict[str, Any], key: str) -> int:
    if key not in manifest:
        raise _fail("", f"is missing key {key!r}")
    if not _is(manifest[key], int) or manifest[key] < 0:
        raise _fail(key, f"must be a non-negative integer, got {manifest[key]!r}")
    return manifest[key]


def _io(manifest: dict[str, Any], key: str) -> int:
    """Check inputs/outputs; return the per-item extent of their segment."""
    entries = _list(manifest, key)
    if not entries:
        raise _fail(key, "is empty: a program has at least one")
    end = 0
    for i, e in enumerate(entries):
        _record(e, f"{key}[{i}]", _IO_KEYS)
        _shape(e, f"{key}[{i}]")
        end = max(end, e["offset"] + e["size"])
    return end


def _tree(node: Any, n_outputs: int, path: str = "output_tree") -> None:
    if _is(node, int):
        if not 0 <= node < n_outputs:
            raise _fail(path, f"names output {node}, the program has {n_outputs}")
    elif isinstance(node, list):
        for i, child in enumerate(node):
            _tree(child, n_outputs, f"{path}[{i}]")
    elif isinstance(node, dict):
        for k, child in node.items():
            _tree(child, n_outputs, f"{path}[{k!r}]")
    else:
        raise _fail(path, f"must be an output index, a list or an object, got {type(node).__name__}")


def check_manifest(manifest: Any, version: tuple[int, int], image: bytes, op_count: int) -> None:
    """Check the manifest's schema and that it, the header and the op descriptors agree."""
    if not isinstance(manifest, dict):
        raise ProgramFormatError(f"program manifest must be a JSON object, got {type(manifest).__name__}")
    fv = manifest.get("format_version")
    if not (isinstance(fv, list) and len(fv) == 2 and all(_is(v, int) for v in fv)):
        raise _fail("format_version", f"must be [major, minor], got {fv!r}")
    if tuple(fv) != version:
        raise _fail("format_version", f"is {fv[0]}.{fv[1]}, the header says {version[0]}.{version[1]}")
    if not isinstance(manifest.get("producer"), str):
        raise _fail("producer", f"must be a string, got {manifest.get('producer')!r}")
    extents = {prog.SEG_PROGRAM: len(image), prog.SEG_ARENA: _int(manifest, "arena_size"),
               prog.SEG_INPUT: _io(manifest, "inputs"), prog.SEG_OUTPUT: _io(manifest, "outputs")}
    if extents[prog.SEG_ARENA] % prog.ALIGN:
        raise _fail("arena_size", f"{extents[prog.SEG_ARENA]} is not {prog.ALIGN}-byte aligned")
    ops_end = -(-op_count * prog.OP_SIZE // prog.ALIGN) * prog.ALIGN
    weights = _int(manifest, "weights_size")
    if ops_end + weights > len(image):
        raise _fail("weights_size", f"{weights} does not fit: ops end at {ops_end}, the image has "
                    f"{len(image)} bytes")
    if "output_tree" in manifest:
        _tree(manifest["output_tree"], len(manifest["outputs"]))
    for i, t in enumerate(_list(manifest, "tensors")):
        path = f"tensors[{i}]"
        _record(t, path, _TENSOR_KEYS)
        _shape(t, path)
        _ref(path, t["seg"], t["offset"], t["size"], t["scaled"], extents)
    ops = _list(manifest, "ops")
    if len(ops) != op_count:
        raise _fail("ops", f"has {len(ops)} entries, the header says {op_count} ops")
    descs = np.frombuffer(image, dtype=prog.OP, count=op_count)
    for i, (meta, desc) in enumerate(zip(ops, descs, strict=True)):
        _op(i, meta, desc, extents)
    check_segments(manifest, op_count, extents)
    _quantization(manifest)


def _quantization(manifest: dict[str, Any]) -> None:
    """The int8 compile's accuracy record (format 1.2), shown by the report: optional."""
    q = manifest.get("quantization")
    if q is None:
        return
    if not isinstance(q, dict) or not isinstance(q.get("outputs"), list):
        raise _fail("quantization", "must be an object with an 'outputs' list")
    for i, o in enumerate(q["outputs"]):
        if not isinstance(o, dict) or not all(_is(o.get(k), float) or _is(o.get(k), int)
                                              for k in ("max_abs_error", "rms_error", "float_rms")):
            raise _fail(f"quantization.outputs[{i}]", "must give max_abs_error, rms_error and float_rms as numbers")


def _op(i: int, meta: Any, desc: np.void, extents: dict[int, int]) -> None:
    path = f"ops[{i}]"
    _record(meta, path, _OP_KEYS)
    if meta["index"] != i:
        raise _fail(f"{path}.index", f"is {meta['index']}, expected {i}")
    if not all(isinstance(p, str) for p in meta["primitives"]):
        raise _fail(f"{path}.primitives", "must be a list of strings")
    if meta.get("source") is not None and not isinstance(meta["source"], str):
        raise _fail(f"{path}.source", f"must be a string or null, got {type(meta['source']).__name__}")
    opcode = int(desc["opcode"])
    if opcode not in prog.OPCODE.__members__.values():
        raise ProgramFormatError(f"program op {i}: opcode {opcode} is not an OPCODE")
    if meta["opcode"] != prog.OPCODE(opcode).name:
        raise _fail(f"{path}.opcode", f"is {meta['opcode']!r}, the descriptor says {prog.OPCODE(opcode).name}")
    if int(desc["act"]) not in prog.FUNC.__members__.values():
        raise ProgramFormatError(f"program op {i}: act {int(desc['act'])} is not a FUNC")
    for operand in ("src0", "src1", "src2", "src3", "dst"):
        ref = desc[operand]
        offset, size, seg, flags = int(ref["offset"]), int(ref["size"]), int(ref["seg"]), int(ref["flags"])
        if size == 0 and offset == 0 and seg == 0 and flags == 0 and int(ref["dtype"]) == 0:
            continue  # unused operand
        _ref(f"op {i} {operand}", seg, offset, size, bool(flags & prog.REF_FLAG.SCALED), extents,
             manifest=False)


def _ref(where: str, seg: int, offset: int, size: int, scaled: bool, extents: dict[int, int],
         manifest: bool = True) -> None:
    prefix = f"program manifest: {where}" if manifest else f"program {where}"
    if seg not in extents:
        raise ProgramFormatError(f"{prefix}: segment {seg} is not one of SEG_PROGRAM..SEG_OUTPUT (0..3)")
    if scaled == (seg == prog.SEG_PROGRAM):
        what = "weights in SEG_PROGRAM are not scaled" if seg == prog.SEG_PROGRAM else (
            f"tensors in SEG_{_SEG_NAMES[seg]} are per batch item and must be scaled")
        raise ProgramFormatError(f"{prefix}: {what}")
    if offset + size > extents[seg]:
        raise ProgramFormatError(
            f"{prefix}: [{offset}, {offset + size}) lies outside SEG_{_SEG_NAMES[seg]}, which has "
            f"{extents[seg]} bytes{' per batch item' if scaled else ''}")
