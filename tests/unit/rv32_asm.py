"""A few RV32I instructions, encoded by hand: enough to write tiny test firmwares for the device model
(handshakes, faults, hangs) without the toolchain or the real firmware."""

from __future__ import annotations

import struct

T0, T1, T2 = 5, 6, 7


def lui(rd: int, imm20: int) -> int:
    return (imm20 & 0xFFFFF) << 12 | rd << 7 | 0x37


def addi(rd: int, rs1: int, imm: int) -> int:
    return (imm & 0xFFF) << 20 | rs1 << 15 | rd << 7 | 0x13


def sw(rs2: int, imm: int, rs1: int) -> int:
    imm &= 0xFFF
    return (imm >> 5) << 25 | rs2 << 20 | rs1 << 15 | 2 << 12 | (imm & 0x1F) << 7 | 0x23


def lw(rd: int, imm: int, rs1: int) -> int:
    return (imm & 0xFFF) << 20 | rs1 << 15 | 2 << 12 | rd << 7 | 0x03


def jal0(offset: int) -> int:
    """jal x0, offset (a jump relative to this instruction)."""
    o = offset & 0x1FFFFF
    imm = (o >> 20 & 1) << 31 | (o >> 1 & 0x3FF) << 21 | (o >> 11 & 1) << 20 | (o >> 12 & 0xFF) << 12
    return imm | 0x6F


WFI = 0x10500073


def li(rd: int, value: int) -> list[int]:
    value &= 0xFFFFFFFF
    hi = (value + 0x800) >> 12
    lo = value - (hi << 12)
    return [lui(rd, hi), addi(rd, rd, lo)]


def mmio_write(base_reg: int, offset: int, value: int) -> list[int]:
    return [*li(T1, value), sw(T1, offset, base_reg)]


def assemble(words: list[int]) -> bytes:
    return struct.pack(f"<{len(words)}I", *words)
