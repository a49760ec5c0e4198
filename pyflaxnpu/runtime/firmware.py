"""Finding the firmware image and the host's own checks of it before a device sees it."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
from flaxnpu_abi import hw

from ..errors import FirmwareError

IMAGE_NAME = "flaxnpu-fw.bin"
ENV_VAR = "FLAXNPU_FIRMWARE"


def search_paths() -> list[Path]:
    """Where an image is looked for, first match wins."""
    paths = []
    if os.environ.get(ENV_VAR):
        paths.append(Path(os.environ[ENV_VAR]))
    repo = Path(__file__).resolve().parents[2]
    paths += [repo / "firmware" / "build" / IMAGE_NAME,
              Path(__file__).resolve().parent.parent / "firmware" / IMAGE_NAME,
              Path("/lib/firmware/flaxnpu") / IMAGE_NAME]
    return paths


def find_image(path: str | os.PathLike | None = None) -> bytes:
    candidates = [Path(path)] if path is not None else search_paths()
    for p in candidates:
        if p.is_file():
            return p.read_bytes()
    tried = ", ".join(str(p) for p in candidates)
    raise FirmwareError(f"no NPU firmware image found (looked in: {tried}); build it with `make firmware` "
                        f"(needs gcc-riscv64-unknown-elf) or point ${ENV_VAR} at one")


def check_image(image: bytes) -> np.void:
    """Refuse an image the device would refuse, with a message naming the field; returns the header."""
    size = hw.FW_HEADER.itemsize
    if len(image) < size:
        raise FirmwareError(f"firmware image is {len(image)} bytes, shorter than its {size}-byte header")
    hdr = np.frombuffer(image, dtype=hw.FW_HEADER, count=1)[0]
    if int(hdr["magic"]) != hw.FW_MAGIC:
        raise FirmwareError(f"firmware image magic is 0x{int(hdr['magic']):08x}, expected 0x{hw.FW_MAGIC:08x}: "
                            "not a flaxnpu firmware image")
    if int(hdr["abi_major"]) != hw.ABI_MAJOR:
        raise FirmwareError(f"firmware is built for hardware ABI {int(hdr['abi_major'])}.{int(hdr['abi_minor'])}, "
                            f"this stack speaks {hw.ABI_MAJOR}.{hw.ABI_MINOR}: rebuild it with `make firmware`")
    if int(hdr["header_size"]) != size:
        raise FirmwareError(f"firmware header_size is {int(hdr['header_size'])}, expected {size}")
    code = int(hdr["image_size"])
    if code == 0 or code > hw.FW_MAX_IMAGE or size + code > len(image):
        raise FirmwareError(f"firmware image_size {code} does not fit: file holds {len(image) - size} bytes of "
                            f"code, the core at most {hw.FW_MAX_IMAGE}")
    if not int(hdr["load_addr"]) <= int(hdr["entry"]) < int(hdr["load_addr"]) + code:
        raise FirmwareError(f"firmware entry 0x{int(hdr['entry']):x} lies outside its code")
    crc = zlib.crc32(image[size:size + code])
    if crc != int(hdr["crc32"]):
        raise FirmwareError(f"firmware image is corrupted: CRC-32 0x{crc:08x}, header says "
                            f"0x{int(hdr['crc32']):08x}")
    return hdr
