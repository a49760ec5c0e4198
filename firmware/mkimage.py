"""Wrap the firmware's flat binary into the image the device boots: fw_header (64 bytes) then the code.

The header layout and FW_MAGIC come from the hardware contract (flaxnpu_abi.hw.FW_HEADER); the version
from version.h; the entry point from the ELF header. Usage (the Makefile runs it):
    python mkimage.py --elf build/flaxnpu-fw.elf --code build/flaxnpu-code.bin --version version.h -o OUT
"""

from __future__ import annotations

import argparse
import re
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from flaxnpu_abi import hw

LOAD_ADDR = hw.CORE_IMEM_BASE
HEADER_SIZE = hw.FW_HEADER.itemsize
EM_RISCV = 0xF3


def elf_entry(elf: bytes) -> int:
    """e_entry of a 32-bit little-endian RISC-V ELF."""
    if elf[:4] != b"\x7fELF" or elf[4] != 1 or elf[5] != 1:
        raise ValueError("not a 32-bit little-endian ELF file: build the firmware with -march=rv32imac")
    machine, _version, entry = struct.unpack_from("<HII", elf, 18)
    if machine != EM_RISCV:
        raise ValueError(f"ELF machine is 0x{machine:x}, not RISC-V (0xf3)")
    return entry


def fw_version(version_h: str) -> int:
    """major << 16 | minor << 8 | patch from the FW_VERSION_* lines of version.h."""
    parts = []
    for name in ("MAJOR", "MINOR", "PATCH"):
        m = re.search(rf"^#define FW_VERSION_{name} (\d+)$", version_h, re.MULTILINE)
        if m is None or int(m.group(1)) > 255:
            raise ValueError(f"version.h needs a line '#define FW_VERSION_{name} <0..255>'")
        parts.append(int(m.group(1)))
    return parts[0] << 16 | parts[1] << 8 | parts[2]


def make_image(code: bytes, entry: int, version: int) -> bytes:
    if not 0 < len(code) <= hw.FW_MAX_IMAGE:
        raise ValueError(f"firmware code is {len(code)} bytes; it must be 1..{hw.FW_MAX_IMAGE} (IMEM)")
    if not LOAD_ADDR <= entry < LOAD_ADDR + len(code):
        raise ValueError(f"entry 0x{entry:x} lies outside the code [0x{LOAD_ADDR:x}, "
                         f"0x{LOAD_ADDR + len(code):x}): check link.ld")
    header = np.zeros((), dtype=hw.FW_HEADER)
    header["magic"] = hw.FW_MAGIC
    header["abi_major"] = hw.ABI_MAJOR
    header["abi_minor"] = hw.ABI_MINOR
    header["fw_version"] = version
    header["header_size"] = HEADER_SIZE
    header["image_size"] = len(code)
    header["load_addr"] = LOAD_ADDR
    header["entry"] = entry
    header["crc32"] = zlib.crc32(code)
    return header.tobytes() + code


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--elf", type=Path, required=True)
    ap.add_argument("--code", type=Path, required=True, help="objcopy -O binary output")
    ap.add_argument("--version", type=Path, required=True, help="version.h")
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        image = make_image(args.code.read_bytes(), elf_entry(args.elf.read_bytes()),
                           fw_version(args.version.read_text()))
    except (OSError, ValueError) as exc:
        print(f"mkimage: {exc}", file=sys.stderr)
        return 1
    args.output.write_bytes(image)
    print(f"mkimage: {args.output}: {len(image) - HEADER_SIZE} bytes of code + {HEADER_SIZE}-byte header")
    return 0


if __name__ == "__main__":
    sys.exit(main())
