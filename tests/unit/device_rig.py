"""Test rig: an NpuDevice over AnonymousMemory with rings, a firmware buffer and a host-side control helper."""

from __future__ import annotations

from flaxnpu_abi import hw
from flaxnpu_abi.hw import CoreReg, Reg
from flaxnpu_sim.device import NpuDevice
from flaxnpu_sim.firmware_image import build_image
from flaxnpu_sim.memory import AnonymousMemory
from rv32_asm import T0, WFI, assemble, jal0, li, mmio_write

BASE = 0x1000_0000
FW_AT, SQ_AT, CQ_AT, FREE = BASE, BASE + 0x20000, BASE + 0x30000, BASE + 0x40000
ABI = hw.ABI_MAJOR << 16 | hw.ABI_MINOR


def handshake_code(version: int = 0x010203, abi: int = ABI, ready: int = 1) -> bytes:
    """Firmware that answers the boot handshake, then idles forever (one wfi per wake)."""
    return assemble([*li(T0, hw.CORE_MMIO_BASE), *mmio_write(T0, CoreReg.FW_VERSION, version),
                     *mmio_write(T0, CoreReg.FW_ABI, abi), *mmio_write(T0, CoreReg.FW_READY, ready),
                     WFI, jal0(-4)])


class Rig:
    def __init__(self, mem_size: int = 1 << 20, budget: int = 1_000_000, sq: int = 8, cq: int = 8) -> None:
        self.mem = AnonymousMemory(mem_size, base=BASE)
        self.irqs: list[int] = []
        self.dev = NpuDevice(self.mem, irq=self.irqs.append, peer_id=7, budget=budget)
        self.regs = self.dev.regs
        self.seq = 0
        self.rings(SQ_AT, sq, CQ_AT, cq)

    def rings(self, sq_base: int, sq_n: int, cq_base: int, cq_n: int) -> None:
        r = self.regs
        r.write64(Reg.SQ_BASE_LO, sq_base)
        r.write(Reg.SQ_ENTRIES, sq_n)
        r.write64(Reg.CQ_BASE_LO, cq_base)
        r.write(Reg.CQ_ENTRIES, cq_n)

    def firmware(self, image: bytes, addr: int = FW_AT, size: int | None = None) -> None:
        self.mem.write(addr, image)
        self.regs.write64(Reg.FW_ADDR_LO, addr)
        self.regs.write(Reg.FW_SIZE, len(image) if size is None else size)

    def control(self, cmd: int) -> None:
        self.seq += 1
        self.regs.write(Reg.CTRL, cmd)
        self.regs.write(Reg.CTRL_SEQ, self.seq)
        self.dev.doorbell(hw.DOORBELL_CONTROL)
        assert self.regs.read(Reg.CTRL_ACK) == self.seq, "control command not acknowledged"

    def boot(self, code: bytes | None = None) -> None:
        self.firmware(build_image(handshake_code() if code is None else code))
        self.control(hw.CTRL.BOOT)

    @property
    def state(self) -> hw.STATE:
        return hw.STATE(self.regs.read(Reg.STATE))

    @property
    def error(self) -> tuple[int, int]:
        return self.regs.read(Reg.ERROR), self.regs.read(Reg.ERROR_INFO)
