"""Firmware image check, field by field, as the device does it at BOOT (the driver does the same first).

Each field has its own status and info, so the host learns exactly what is wrong with the image it sent.
The image is parsed from a snapshot: the host cannot change it between the check and the load.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from flaxnpu_abi import hw
from flaxnpu_abi.hw import STATUS

from .errors import FirmwareImageError

HEADER_SIZE = hw.FW_HEADER.itemsize
_RESERVED = ("flags", "reserved0", "reserved1", "reserved2", "reserved3")


@dataclass(frozen=True)
class FirmwareImage:
    version: int  # major << 16 | minor << 8 | patch
    abi_major: int
    abi_minor: int
    load_addr: int
    entry: int
    code: bytes


def parse_image(buf: bytes | bytearray | memoryview) -> FirmwareImage:
    """Check an image (header + code); raises FirmwareImageError naming the first bad field.

    FW_HEADER: buffer shorter than the header (info = buffer size), magic (info = magic), header_size
    (info = header_size), flags or a reserved field not zero (info = byte offset of the field);
    FW_ABI: abi_major differs from the device's (info = abi_major << 16 | abi_minor);
    FW_SIZE: image_size zero, above FW_MAX_IMAGE or past the buffer (info = image_size);
    FW_ENTRY: load_addr..+image_size outside IMEM, or entry outside the code or odd (info = the address);
    FW_CRC: CRC-32 of the code differs (info = the CRC computed).
    """
    data = bytes(buf)
    if len(data) < HEADER_SIZE:
        raise FirmwareImageError(STATUS.FW_HEADER, len(data), f"image is {len(data)} bytes, header {HEADER_SIZE}")
    h = np.frombuffer(data, hw.FW_HEADER, 1)[0]
    magic, header_size = int(h["magic"]), int(h["header_size"])
    if magic != hw.FW_MAGIC:
        raise FirmwareImageError(STATUS.FW_HEADER, magic, f"magic 0x{magic:08x}, want 0x{hw.FW_MAGIC:08x}")
    if header_size != HEADER_SIZE:
        raise FirmwareImageError(STATUS.FW_HEADER, header_size, f"header_size {header_size}, want {HEADER_SIZE}")
    major, minor = int(h["abi_major"]), int(h["abi_minor"])
    if major != hw.ABI_MAJOR:
        raise FirmwareImageError(STATUS.FW_ABI, major << 16 | minor,
                                 f"firmware built for hardware ABI {major}.{minor}, device is "
                                 f"{hw.ABI_MAJOR}.{hw.ABI_MINOR}: rebuild it (make -C firmware)")
    size = int(h["image_size"])
    if not 0 < size <= hw.FW_MAX_IMAGE or size > len(data) - HEADER_SIZE:
        raise FirmwareImageError(STATUS.FW_SIZE, size, f"image_size {size}: buffer has {len(data) - HEADER_SIZE} "
                                 f"code bytes, IMEM {hw.FW_MAX_IMAGE}")
    load, entry = int(h["load_addr"]), int(h["entry"])
    imem_end = hw.CORE_IMEM_BASE + hw.FW_MAX_IMAGE
    if load < hw.CORE_IMEM_BASE or load > imem_end - size:
        raise FirmwareImageError(STATUS.FW_ENTRY, load, f"code [0x{load:x}, +0x{size:x}) leaves IMEM")
    if not load <= entry < load + size or entry % 2:  # rv32c: instructions are 2-byte aligned
        raise FirmwareImageError(STATUS.FW_ENTRY, entry, f"entry 0x{entry:x} outside [0x{load:x}, +0x{size:x})")
    code = data[HEADER_SIZE:HEADER_SIZE + size]
    crc = zlib.crc32(code)
    if crc != int(h["crc32"]):
        raise FirmwareImageError(STATUS.FW_CRC, crc, f"code CRC-32 0x{crc:08x}, header says 0x{int(h['crc32']):08x}")
    for name in _RESERVED:
        if int(h[name]):
            raise FirmwareImageError(STATUS.FW_HEADER, hw.FW_HEADER.fields[name][1], f"header field {name} not zero")
    return FirmwareImage(int(h["fw_version"]), major, minor, load, entry, code)


def build_image(code: bytes, load_addr: int = hw.CORE_IMEM_BASE, entry: int | None = None,
                version: int = 0x000100, abi: tuple[int, int] = (hw.ABI_MAJOR, hw.ABI_MINOR)) -> bytes:
    """A well-formed image around `code` (tests and tools; the real one comes from make -C firmware)."""
    h = np.zeros(1, hw.FW_HEADER)
    h["magic"], h["abi_major"], h["abi_minor"], h["fw_version"] = hw.FW_MAGIC, abi[0], abi[1], version
    h["header_size"], h["image_size"], h["load_addr"] = HEADER_SIZE, len(code), load_addr
    h["entry"] = load_addr if entry is None else entry
    h["crc32"] = zlib.crc32(code)
    return h.tobytes() + code
