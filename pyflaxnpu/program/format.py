"""Bytes of a .fnpu file: pack and parse, with every check a loader must make.

Layout: prog.FILE_HEADER | device image (op stream, then weights) | manifest (UTF-8 JSON); each section
starts at an ALIGN multiple. crc32 (zlib) covers the whole file with the crc32 field zeroed.
Depends on the standard library, numpy and flaxnpu_abi.prog only: a runtime loads programs without jax.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from flaxnpu_abi import prog

from pyflaxnpu.errors import ProgramFormatError
from pyflaxnpu.program.hostseg import FILE_FLAG_HOST_SEGMENTS, has_host, header_flags
from pyflaxnpu.program.manifest import check_manifest

HEADER_SIZE = prog.FILE_HEADER.itemsize
_CRC_OFFSET = prog.FILE_HEADER.fields["crc32"][1]


@dataclass(frozen=True)
class Parsed:
    """A checked file: version, device image, op count and manifest."""

    version: tuple[int, int]
    image: bytes
    op_count: int
    manifest: dict[str, Any]


def align(n: int) -> int:
    return -(-n // prog.ALIGN) * prog.ALIGN


def crc32(data: bytes | bytearray | memoryview) -> int:
    """CRC-32 of a whole file with its crc32 field taken as zero."""
    buf = bytes(data)
    return zlib.crc32(buf[:_CRC_OFFSET] + b"\0\0\0\0" + buf[_CRC_OFFSET + 4:]) & 0xFFFFFFFF


def pack(image: bytes, op_count: int, manifest: dict[str, Any],
         version: tuple[int, int] = (prog.ABI_MAJOR, prog.ABI_MINOR)) -> bytes:
    """Frame an image and a manifest as a .fnpu file (no semantic checks: Program does those)."""
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    image_offset = align(HEADER_SIZE)
    manifest_offset = align(image_offset + len(image))
    file_size = manifest_offset + len(text)
    hdr = np.zeros((), dtype=prog.FILE_HEADER)
    hdr["magic"] = prog.FILE_MAGIC
    hdr["version_major"], hdr["version_minor"] = version
    hdr["header_size"] = HEADER_SIZE
    hdr["flags"] = header_flags(manifest)
    hdr["file_size"] = file_size
    hdr["image_offset"], hdr["image_size"] = image_offset, len(image)
    hdr["op_count"] = op_count
    hdr["manifest_offset"], hdr["manifest_size"] = manifest_offset, len(text)
    out = bytearray(file_size)
    out[:HEADER_SIZE] = hdr.tobytes()
    out[image_offset:image_offset + len(image)] = image
    out[manifest_offset:] = text
    out[_CRC_OFFSET:_CRC_OFFSET + 4] = crc32(out).to_bytes(4, "little")
    return bytes(out)


def parse(data: bytes | bytearray | memoryview) -> Parsed:
    """Check a whole file and return its parts; any problem raises ProgramFormatError naming it."""
    data = bytes(data)
    hdr = _header(data)
    image_offset, image_size = int(hdr["image_offset"]), int(hdr["image_size"])
    manifest_offset, manifest_size = int(hdr["manifest_offset"]), int(hdr["manifest_size"])
    header_size = int(hdr["header_size"])
    _section("image", image_offset, image_size, header_size, len(data))
    _section("manifest", manifest_offset, manifest_size, header_size, len(data))
    if image_offset < manifest_offset + manifest_size and manifest_offset < image_offset + image_size:
        raise ProgramFormatError(
            f"program file is inconsistent: image [{image_offset}, {image_offset + image_size}) and manifest "
            f"[{manifest_offset}, {manifest_offset + manifest_size}) overlap")
    op_count = int(hdr["op_count"])
    if op_count == 0:
        raise ProgramFormatError("program file has no ops: op_count is 0 (a program needs at least one op)")
    if op_count * prog.OP_SIZE > image_size:
        raise ProgramFormatError(
            f"program file is inconsistent: {op_count} ops need {op_count * prog.OP_SIZE} bytes, "
            f"the image has {image_size}")
    try:
        manifest = json.loads(data[manifest_offset:manifest_offset + manifest_size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ProgramFormatError(f"program manifest is not UTF-8 JSON: {e}") from None
    version = (int(hdr["version_major"]), int(hdr["version_minor"]))
    image = data[image_offset:image_offset + image_size]
    check_manifest(manifest, version, image, op_count)
    if int(hdr["flags"]) != header_flags(manifest):
        raise ProgramFormatError(
            f"program header flags are 0x{int(hdr['flags']):x}, but the manifest "
            f"{'has' if has_host(manifest) else 'has no'} host segments (flag 0x{FILE_FLAG_HOST_SEGMENTS:x})")
    return Parsed(version, image, op_count, manifest)


def _header(data: bytes) -> np.void:
    if len(data) < HEADER_SIZE:
        raise ProgramFormatError(
            f"program file is truncated: {len(data)} bytes, smaller than the {HEADER_SIZE}-byte header")
    hdr = np.frombuffer(data, dtype=prog.FILE_HEADER, count=1)[0]
    if int(hdr["magic"]) != prog.FILE_MAGIC:
        raise ProgramFormatError(
            f"not a flaxnpu program: magic is 0x{int(hdr['magic']):08x}, expected 0x{prog.FILE_MAGIC:08x} "
            "('FNPG'); is this a .fnpu file written by pyflaxnpu.compile?")
    major, minor = int(hdr["version_major"]), int(hdr["version_minor"])
    if major != prog.ABI_MAJOR:
        raise ProgramFormatError(
            f"program format version {major}.{minor} is not supported: this pyflaxnpu reads format "
            f"{prog.ABI_MAJOR}.x (it is {prog.ABI_MAJOR}.{prog.ABI_MINOR}); recompile the model with this "
            "pyflaxnpu, or use a pyflaxnpu that reads the file's format")
    file_size = int(hdr["file_size"])
    if file_size > len(data):
        raise ProgramFormatError(
            f"program file is truncated: header says {file_size} bytes, file has {len(data)}")
    if file_size < len(data):
        raise ProgramFormatError(
            f"program file has {len(data) - file_size} trailing bytes: header says {file_size} bytes, "
            f"file has {len(data)}")
    stored, actual = int(hdr["crc32"]), crc32(data)
    if stored != actual:
        raise ProgramFormatError(
            f"program file is corrupted: CRC-32 is 0x{actual:08x}, header says 0x{stored:08x}")
    # A newer minor may grow the header; this reader then ignores the fields it does not know.
    header_size = int(hdr["header_size"])
    if header_size < HEADER_SIZE or header_size > file_size or (
            minor <= prog.ABI_MINOR and header_size != HEADER_SIZE):
        raise ProgramFormatError(
            f"program header is inconsistent: header_size is {header_size}, expected {HEADER_SIZE}")
    for field in ("flags", "reserved0", "reserved1"):
        known = FILE_FLAG_HOST_SEGMENTS if field == "flags" else 0
        if int(hdr[field]) & ~known:
            raise ProgramFormatError(
                f"program header field {field} is 0x{int(hdr[field]):x}, must be 0 in format "
                f"{prog.ABI_MAJOR}.x" + (" (0x1 = host segments; other bits are unknown to this reader)"
                                         if known else ""))
    return hdr


def _section(name: str, offset: int, size: int, header_size: int, file_size: int) -> None:
    if offset % prog.ALIGN:
        raise ProgramFormatError(
            f"program file is inconsistent: {name} offset {offset} is not {prog.ALIGN}-byte aligned")
    if offset < header_size or offset + size > file_size:
        raise ProgramFormatError(
            f"program file is inconsistent: {name} section [{offset}, {offset + size}) lies outside "
            f"the file's body [{header_size}, {file_size})")
