"""The control core's register block: what the firmware sees of the device (CORE_MMIO_BASE..+0x1000).

Every KICK takes the SRAM address of an argument block, acts at once and leaves CORE_STATUS and
CORE_STATUS_INFO. Bad arguments from the firmware end in a status, like bad input from the host does;
only misuse of the block itself (a read of a WO register, a write to an RO one, an undefined offset, an
IRQ vector that does not exist) is a firmware fault (CoreFault), which stops the core.

Device-owned counters (cq_tail, the job counters, cycles) live here and are written through to the
register window; they are never read back from it, because the host can write anything into shared memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flaxnpu_abi import hw, prog
from flaxnpu_abi.hw import STATUS, CoreReg, Reg
from flaxnpu_abi.regio import RegisterBlock

from .core import ControlCore, CoreFault
from .engines import run_op
from .errors import DeviceError
from .memory import HostMemory
from .mmu import Segments, parse_table

U32 = 0xFFFFFFFF
LOG_LIMIT = 64 << 10  # bytes of firmware log kept (the newest)
_READABLE = {r for r, a in hw.COREREG_ACCESS.items() if a == "RO"}


@dataclass(frozen=True)
class Rings:
    """The ring configuration latched at BOOT: the device never re-reads the host's copy."""

    sq_base: int
    sq_entries: int
    cq_base: int
    cq_entries: int


class CoreBus:
    """mmio_read / mmio_write of the control core, and the device state they act on."""

    def __init__(self, memory: HostMemory, regs: RegisterBlock, raise_irq: Callable[[int], None],
                 on_ready: Callable[[], None]) -> None:
        self.memory = memory
        self.regs = regs
        self._raise_irq = raise_irq
        self._on_ready = on_ready
        self.core: ControlCore | None = None
        self.log = bytearray()
        self.reset()

    def reset(self) -> None:
        """Power-on values of everything the bus owns (the log survives: it explains what went wrong)."""
        self.rings: Rings | None = None
        self.segments = Segments(self.memory)
        self.status = self.status_info = self.cycles = 0
        self.cq_tail = self.jobs_done = self.jobs_failed = self.total_cycles = 0
        self.hang_armed = False
        self.hung = False

    # ------------------------------------------------------------------ bus entry points

    def read(self, offset: int) -> int:
        if offset not in _READABLE:
            raise CoreFault(STATUS.FW_FAULT, hw.CORE_MMIO_BASE + offset)
        if offset == CoreReg.HW_ABI:
            return hw.ABI_MAJOR << 16 | hw.ABI_MINOR
        if offset == CoreReg.SQ_TAIL:
            return self.regs.read(Reg.SQ_TAIL)
        if offset == CoreReg.CQ_HEAD:
            return self.regs.read(Reg.CQ_HEAD)
        rings = self.rings
        if offset == CoreReg.SQ_ENTRIES:
            return rings.sq_entries if rings else 0
        if offset == CoreReg.CQ_ENTRIES:
            return rings.cq_entries if rings else 0
        if offset == CoreReg.STATUS:
            return self.status
        if offset == CoreReg.STATUS_INFO:
            return self.status_info
        return self.cycles  # CoreReg.CYCLES

    def write(self, offset: int, value: int) -> None:
        handler = _WRITES.get(offset)
        if handler is None:
            raise CoreFault(STATUS.FW_FAULT, hw.CORE_MMIO_BASE + offset)
        handler(self, value & U32)

    # ------------------------------------------------------------------ handshake and counters

    def _fw_version(self, v: int) -> None:
        self.regs.write(Reg.FW_VERSION, v)

    def _fw_abi(self, v: int) -> None:
        self.regs.write(Reg.FW_ABI, v)

    def _fw_ready(self, v: int) -> None:
        if v != 1:
            raise CoreFault(STATUS.FW_FAULT, v)
        fw_abi = self.regs.read(Reg.FW_ABI)
        if fw_abi >> 16 != hw.ABI_MAJOR:
            raise CoreFault(STATUS.FW_ABI, fw_abi)  # the device faults with ERROR_INFO = the firmware's ABI
        self._on_ready()

    def _heartbeat(self, v: int) -> None:
        self.regs.write(Reg.HEARTBEAT, v)

    def _sq_head(self, v: int) -> None:
        self.regs.write(Reg.SQ_HEAD, v)

    def _irq(self, v: int) -> None:
        if v not in (hw.IRQ_COMPLETION, hw.IRQ_EVENT):
            raise CoreFault(STATUS.FW_FAULT, v)
        self._raise_irq(v)

    def _job_done(self, status: int) -> None:
        if status == STATUS.OK:
            self.jobs_done = (self.jobs_done + 1) & U32
            self.regs.write(Reg.JOBS_DONE, self.jobs_done)
        else:
            self.jobs_failed = (self.jobs_failed + 1) & U32
            self.regs.write(Reg.JOBS_FAILED, self.jobs_failed)

    def _log(self, v: int) -> None:
        self.log.append(v & 0xFF)
        if len(self.log) > 2 * LOG_LIMIT:
            del self.log[:-LOG_LIMIT]

    # ------------------------------------------------------------------ kicks

    def _kick(self, fn: Callable[[int], int], addr: int) -> None:
        """Run one unit; its DeviceError becomes CORE_STATUS / CORE_STATUS_INFO."""
        try:
            self.cycles = fn(addr)
            self.status = self.status_info = 0
        except DeviceError as e:
            self.status, self.status_info, self.cycles = int(e.status), e.info, 0

    def _sram(self, addr: int, n: int) -> bytes:
        assert self.core is not None
        try:
            return self.core.sram_read(addr, n)
        except ValueError:
            raise DeviceError(STATUS.ENGINE_ARG, addr, "argument block outside SRAM") from None

    def _sram_fits(self, addr: int, n: int) -> bool:
        return hw.CORE_SRAM_BASE <= addr and n <= hw.CORE_SRAM_SIZE and \
            addr - hw.CORE_SRAM_BASE <= hw.CORE_SRAM_SIZE - n

    def _sq_fetch(self, addr: int) -> int:
        a = np.frombuffer(self._sram(addr, hw.SQ_FETCH_ARGS.itemsize), hw.SQ_FETCH_ARGS)[0]
        index, dst = int(a["index"]), int(a["dst"])
        size = hw.SQ_ENTRY.itemsize
        if not self._sram_fits(dst, size):
            raise DeviceError(STATUS.ENGINE_ARG, dst, "SQ fetch destination outside SRAM")
        rings = self.rings
        ahead = (self.regs.read(Reg.SQ_TAIL) - index) & U32
        if rings is None or not 0 < ahead <= rings.sq_entries:
            raise DeviceError(STATUS.SQ_EMPTY, index, f"ring index {index} not produced by the host")
        assert self.core is not None
        self.core.sram_write(dst, self.memory.read(rings.sq_base + (index % rings.sq_entries) * size, size))
        return 0

    def _mmu(self, addr: int) -> int:
        self.segments = Segments(self.memory)  # any failure leaves the job with no segments
        a = np.frombuffer(self._sram(addr, hw.MMU_ARGS.itemsize), hw.MMU_ARGS)[0]
        table, count, dst = int(a["table"]), int(a["count"]), int(a["dst"])
        if not 1 <= count <= hw.MAX_SEGMENTS:
            raise DeviceError(STATUS.SEG_COUNT, count, "segment count")
        if not self._sram_fits(dst, count * hw.SEG_ENTRY.itemsize):
            raise DeviceError(STATUS.ENGINE_ARG, dst, "segment table copy destination outside SRAM")
        segs, raw = parse_table(self.memory, table, count)
        assert self.core is not None
        self.core.sram_write(dst, raw)
        self.segments = Segments(self.memory, segs)
        return 0

    def _dma(self, addr: int) -> int:
        a = np.frombuffer(self._sram(addr, hw.DMA_ARGS.itemsize), hw.DMA_ARGS)[0]
        seg, off, n, dst = int(a["seg"]), int(a["offset"]), int(a["len"]), int(a["dst"])
        if not self._sram_fits(dst, n):
            raise DeviceError(STATUS.DMA_BOUNDS, off, "DMA destination outside SRAM")
        try:
            data = self.segments.read(seg, off, n)
        except DeviceError as e:
            raise DeviceError(STATUS.DMA_BOUNDS, off, str(e)) from None
        assert self.core is not None
        self.core.sram_write(dst, data)
        return 0

    def _hang_here(self) -> bool:
        """Fault injection: the armed hang takes hold at this kick; the core stops and stays stopped."""
        if not self.hang_armed:
            return False
        self.hang_armed, self.hung = False, True
        assert self.core is not None
        self.core.stop()
        return True

    def _engine(self, addr: int) -> int:
        op = np.frombuffer(self._sram(addr, prog.OP_SIZE), prog.OP)[0]
        if self._hang_here():
            return 0
        cycles = run_op(op, self.segments)
        self.total_cycles += cycles
        self.regs.write64(Reg.CYCLES_LO, self.total_cycles & 0xFFFF_FFFF_FFFF_FFFF)
        return cycles

    def _cq_push(self, addr: int) -> int:
        rec = np.frombuffer(self._sram(addr, hw.CQ_ENTRY.itemsize), hw.CQ_ENTRY).copy()
        if self._hang_here():
            return 0
        rings = self.rings
        if rings is None or (self.cq_tail - self.regs.read(Reg.CQ_HEAD)) & U32 >= rings.cq_entries:
            raise DeviceError(STATUS.CQ_FULL, self.cq_tail, "completion ring full")
        rec["seq"] = self.cq_tail  # the hardware owns the completion index
        self.memory.write(rings.cq_base + (self.cq_tail % rings.cq_entries) * rec.itemsize, rec.tobytes())
        self.cq_tail = (self.cq_tail + 1) & U32
        self.regs.write(Reg.CQ_TAIL, self.cq_tail)
        return 0


def _kicker(fn: Callable[[CoreBus, int], int]) -> Callable[[CoreBus, int], None]:
    return lambda bus, addr: bus._kick(lambda a: fn(bus, a), addr)


_WRITES: dict[int, Callable[[CoreBus, int], None]] = {
    CoreReg.FW_VERSION: CoreBus._fw_version,
    CoreReg.FW_ABI: CoreBus._fw_abi,
    CoreReg.FW_READY: CoreBus._fw_ready,
    CoreReg.HEARTBEAT: CoreBus._heartbeat,
    CoreReg.SQ_HEAD: CoreBus._sq_head,
    CoreReg.SQ_KICK: _kicker(CoreBus._sq_fetch),
    CoreReg.MMU_KICK: _kicker(CoreBus._mmu),
    CoreReg.DMA_KICK: _kicker(CoreBus._dma),
    CoreReg.ENG_KICK: _kicker(CoreBus._engine),
    CoreReg.CQ_KICK: _kicker(CoreBus._cq_push),
    CoreReg.IRQ: CoreBus._irq,
    CoreReg.JOB_DONE: CoreBus._job_done,
    CoreReg.LOG: CoreBus._log,
}
