"""The .fnpu format: round trips, and every damaged file refused with a ProgramFormatError naming why."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from flaxnpu_abi import prog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyflaxnpu.errors import ProgramFormatError
from pyflaxnpu.program import Program
from pyflaxnpu.program import format as fmt

N = 12  # floats per item


def _ref(seg: int, offset: int, size: int) -> tuple:
    return (offset, size, seg, prog.DTYPE.F32, 0 if seg == prog.SEG_PROGRAM else prog.REF_FLAG.SCALED)


def make_program() -> Program:
    """Two ops without jax: arena = input + weight row; output = relu(arena)."""
    ops = np.zeros(2, prog.OP)
    ops[0]["opcode"], ops[0]["scale_mask"] = prog.OPCODE.BINARY, 1
    ops[0]["dims"][:2] = (1, N)
    ops[0]["params"][:3] = (prog.BINOP.ADD, prog.BCAST.FULL, prog.BCAST.ROW)
    ops[0]["src0"], ops[0]["src1"] = _ref(prog.SEG_INPUT, 0, 4 * N), _ref(prog.SEG_PROGRAM, 256, 4 * N)
    ops[0]["dst"] = _ref(prog.SEG_ARENA, 0, 4 * N)
    ops[1]["opcode"], ops[1]["scale_mask"], ops[1]["act"] = prog.OPCODE.UNARY, 1, prog.FUNC.RELU
    ops[1]["dims"][0] = N
    ops[1]["src0"], ops[1]["dst"] = _ref(prog.SEG_ARENA, 0, 4 * N), _ref(prog.SEG_OUTPUT, 0, 4 * N)
    image = ops.tobytes() + np.arange(N, dtype="<f4").tobytes() + bytes(16)
    io = {"shape": [N], "dtype": "float32", "offset": 0, "size": 4 * N}
    manifest = {
        "format_version": [1, 0], "producer": "test", "name": "hand",
        "inputs": [{"name": "x", **io}], "outputs": [{"name": "y", **io}],
        "arena_size": 64, "weights_size": 64,
        "tensors": [{"name": "w", "shape": [N], "dtype": "float32", "seg": 0, "offset": 256, "size": 4 * N,
                     "scaled": False}],
        "ops": [{"index": i, "opcode": k, "module": "Dense_0", "primitives": ["add"], "source": None,
                 "act": a} for i, (k, a) in enumerate([("BINARY", "NONE"), ("UNARY", "RELU")])],
    }
    return Program(image, 2, manifest, (1, 0))   # a format 1.0 program: newer readers still load it


GOOD = make_program().to_bytes()
HEADER = prog.FILE_HEADER


def with_header(data: bytes, crc: bool = True, **fields: int) -> bytes:
    hdr = np.frombuffer(data[:64], HEADER)[0].copy()
    for k, v in fields.items():
        hdr[k] = v
    out = bytearray(hdr.tobytes() + data[64:])
    if crc:
        out[44:48] = fmt.crc32(out).to_bytes(4, "little")
    return bytes(out)


def with_manifest(manifest: object, data: bytes = GOOD) -> bytes:
    hdr = np.frombuffer(data[:64], HEADER)[0]
    text = json.dumps(manifest).encode() if not isinstance(manifest, bytes) else manifest
    body = bytearray(data[: int(hdr["manifest_offset"])] + text)
    return with_header(bytes(body), file_size=len(body), manifest_size=len(text))


def refuses(data: bytes, *words: str) -> str:
    with pytest.raises(ProgramFormatError) as e:
        Program.from_bytes(data)
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    return str(e.value)


def test_round_trip_and_properties(tmp_path):
    p = Program.from_bytes(GOOD)
    assert p.to_bytes() == GOOD
    assert p.op_count == 2 and p.ops.dtype == prog.OP and p.ops[1]["act"] == prog.FUNC.RELU
    assert p.arena_size == 64 and p.inputs[0]["name"] == "x" and p.outputs[0]["shape"] == [N]
    assert np.frombuffer(GOOD[:64], HEADER)[0]["image_offset"] % prog.ALIGN == 0
    p.save(tmp_path / "m.fnpu")
    assert Program.load(tmp_path / "m.fnpu").to_bytes() == GOOD
    assert os.listdir(tmp_path) == ["m.fnpu"]  # the temporary file was renamed, nothing left over
    report = p.report()
    assert "BINARY" in report and "UNARY+RELU" in report and "Dense_0" in report and "48" in report


def test_named_errors():
    refuses(GOOD[:4000] if len(GOOD) > 4000 else GOOD[:-5], "truncated", f"header says {len(GOOD)} bytes")
    refuses(GOOD[:10], "truncated", "64-byte header")
    refuses(GOOD + b"x", "trailing")
    refuses(with_header(GOOD, magic=0x12345678), "not a flaxnpu program", "0x12345678")
    msg = refuses(with_header(GOOD, version_major=2, version_minor=3), "2.3", f"1.{prog.ABI_MINOR}")
    assert "recompile" in msg
    refuses(GOOD[:100] + bytes([GOOD[100] ^ 1]) + GOOD[101:], "corrupted", "CRC-32")
    refuses(with_header(GOOD, op_count=1000), "1000 ops need 128000 bytes")
    refuses(with_header(GOOD, op_count=0), "op_count is 0")
    refuses(with_header(GOOD, image_size=10**6), "image section", "outside")
    refuses(with_header(GOOD, image_offset=65), "not 64-byte aligned")
    refuses(with_header(GOOD, flags=1), "flags")
    refuses(with_manifest(b"{not json"), "not UTF-8 JSON")
    refuses(with_manifest(b"\xff\xfe"), "not UTF-8 JSON")
    refuses(with_manifest([1, 2]), "JSON object")


def test_newer_minor_loads_and_keeps_its_version():
    m = Program.from_bytes(GOOD).manifest | {"format_version": [1, 7], "new_key": 1}
    data = with_header(with_manifest(m), version_minor=7)
    p = Program.from_bytes(data)
    assert p.version == (1, 7) and p.manifest["new_key"] == 1
    assert Program.from_bytes(p.to_bytes()).manifest == p.manifest


def _manifest() -> dict:
    return json.loads(json.dumps(Program.from_bytes(GOOD).manifest))


@pytest.mark.parametrize(("path", "value", "words"), [
    (("inputs",), None, ["missing key 'inputs'"]),
    (("ops",), [], ["ops has 0 entries"]),
    (("arena_size",), -1, ["arena_size"]),
    (("arena_size",), True, ["arena_size"]),
    (("inputs", 0, "shape"), [N, "a"], ["inputs[0].shape"]),
    (("inputs", 0, "size"), 4, ["inputs[0].size", "48 bytes"]),
    (("tensors", 0, "offset"), 1 << 20, ["tensors[0]", "outside SEG_PROGRAM"]),
    (("tensors", 0, "scaled"), True, ["not scaled"]),
    (("ops", 1, "opcode"), "MATMUL", ["ops[1].opcode", "UNARY"]),
    (("format_version",), [1, 1], ["format_version", "header says 1.0"]),
    (("weights_size",), 10**6, ["weights_size"]),
    (("arena_size",), 0, ["op 0 dst", "SEG_ARENA"]),
    (("output_tree",), {"a": 5}, ["output_tree['a']"]),
])
def test_manifest_problems_are_named(path, value, words):
    m = _manifest()
    target = m
    for k in path[:-1]:
        target = target[k]
    if value is None:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    refuses(with_manifest(m), *words)


def test_op_refs_outside_their_segment_are_refused():
    p = Program.from_bytes(GOOD)
    ops = p.ops.copy()
    ops[0]["src1"]["offset"] = 1 << 16
    image = ops.tobytes() + p.image[ops.nbytes:]
    with pytest.raises(ProgramFormatError, match=r"op 0 src1.*outside SEG_PROGRAM"):
        Program(image, 2, p.manifest, p.version)


def test_every_truncation_point_is_refused():
    for n in range(len(GOOD)):
        refuses(GOOD[:n], "truncated")


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(GOOD) - 1), st.integers(1, 255))
def test_any_byte_flip_is_refused(at, xor):
    data = bytearray(GOOD)
    data[at] ^= xor
    msg = refuses(bytes(data))
    assert any(w in msg for w in ("corrupted", "magic", "version", "truncated", "trailing"))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([n for n in HEADER.names if n != "crc32"]), st.integers(0, 2**64 - 1))
def test_random_header_values_load_or_are_refused_by_name(field, value):
    value %= 1 << (8 * HEADER.fields[field][0].itemsize)
    data = with_header(GOOD, **{field: value})
    try:
        p = Program.from_bytes(data)
    except ProgramFormatError as e:
        assert str(e)
    else:
        assert p.to_bytes() == GOOD  # only the original value (or an equivalent) loads


json_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 1 << 33) | st.text(max_size=4),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
                           max_leaves=6)


def _paths(obj: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


PATHS = [p for p in _paths(_manifest()) if p]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(PATHS), st.one_of(st.just("delete"), json_values))
def test_random_manifest_mutations_load_or_are_refused_by_name(path, value):
    m = _manifest()
    target = m
    for k in path[:-1]:
        target = target[k]
    if value == "delete":
        del target[path[-1]]
    else:
        target[path[-1]] = value
    try:
        Program.from_bytes(with_manifest(m))
    except ProgramFormatError as e:
        assert str(e).startswith(("program manifest", "program op"))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2 * prog.OP_SIZE - 1), st.integers(0, 255))
def test_random_op_bytes_load_or_are_refused_by_name(at, byte):
    p = Program.from_bytes(GOOD)
    image = bytearray(p.image)
    image[at] = byte
    try:
        Program(bytes(image), 2, p.manifest)
    except ProgramFormatError as e:
        assert str(e).startswith(("program manifest", "program op"))
