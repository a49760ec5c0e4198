"""The NPU's control core: an rv32imac CPU (unicorn) that runs the firmware image.

Memory map (core addresses, from the hardware contract): IMEM at CORE_IMEM_BASE (64 KiB, R+X) holds the
code, SRAM at CORE_SRAM_BASE (R+W) holds data, stack and the argument blocks of the KICK registers, and
the core register block at CORE_MMIO_BASE (4 KiB) is answered by the bus callbacks given to ControlCore.

The core runs only inside run(): until the firmware executes `wfi` (idle), faults, or spends its
instruction budget (watchdog). Nothing runs per instruction in Python, so firmware code costs
nanoseconds and each register access about half a microsecond.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from flaxnpu_abi import hw
from flaxnpu_abi.hw import STATUS
from unicorn import (
    UC_ARCH_RISCV,
    UC_HOOK_INTR,
    UC_HOOK_MEM_PROT,
    UC_HOOK_MEM_UNMAPPED,
    UC_MODE_RISCV32,
    UC_PROT_EXEC,
    UC_PROT_READ,
    UC_PROT_WRITE,
    Uc,
    UcError,
)
from unicorn.riscv_const import UC_RISCV_REG_PC, UC_RISCV_REG_X1, UC_RISCV_REG_X31

IMEM_SIZE = hw.FW_MAX_IMAGE
MMIO_SIZE = 0x1000
WFI = 0x10500073
# emu_start stops when PC reaches `until`; no instruction lives at this (odd, unmapped) address.
_NEVER = 0xFFFFFFFF & ~1
TCG_BUFFER_SIZE = 16 << 20


class CoreFault(Exception):
    """Raised by a bus callback when the firmware misuses the register block; run() reports a fault."""

    def __init__(self, status: int, info: int) -> None:
        name = STATUS(status).name if status in STATUS.__members__.values() else hex(status)
        super().__init__(f"control core fault: {name}, info 0x{info & 0xFFFFFFFF:x}")
        self.status = status
        self.info = info


class CoreStop(NamedTuple):
    """Why run() returned: "idle" (at wfi), "fault", "watchdog" or "stopped" (stop() from a callback)."""

    reason: str
    status: int
    info: int


_IDLE = CoreStop("idle", 0, 0)
_STOPPED = CoreStop("stopped", 0, 0)


class ControlCore:
    """One control core. mmio_read/mmio_write get offsets within the core register block."""

    def __init__(self, mmio_read: Callable[[int], int], mmio_write: Callable[[int, int], None],
                 budget: int = 20_000_000) -> None:
        if budget < 1:
            raise ValueError(f"instruction budget must be >= 1, got {budget}")
        self._bus_read = mmio_read
        self._bus_write = mmio_write
        self.budget = budget
        uc = Uc(UC_ARCH_RISCV, UC_MODE_RISCV32)
        # unicorn reserves 1 GiB for translated code by default; the firmware is a few KiB, and a 1 GiB
        # reservation fails outright on small hosts (a 512 MiB QEMU guest running the simulator).
        uc.ctl_set_tcg_buffer_size(TCG_BUFFER_SIZE)
        uc.mem_map(hw.CORE_IMEM_BASE, IMEM_SIZE, UC_PROT_READ | UC_PROT_EXEC)
        uc.mem_map(hw.CORE_SRAM_BASE, hw.CORE_SRAM_SIZE, UC_PROT_READ | UC_PROT_WRITE)
        uc.mmio_map(hw.CORE_MMIO_BASE, MMIO_SIZE, self._on_read, None, self._on_write, None)
        # Hooks go in before any code is translated: translated blocks do not see hooks added later.
        uc.hook_add(UC_HOOK_MEM_UNMAPPED | UC_HOOK_MEM_PROT, self._on_bad_access)
        uc.hook_add(UC_HOOK_INTR, self._on_exception)
        self._uc = uc
        self._wfi_pcs: set[int] = set()
        self._loaded = False
        self._reset_state()

    # -- lifecycle ------------------------------------------------------------------------------------
    def _reset_state(self) -> None:
        self._pc = hw.CORE_IMEM_BASE
        self._fault: CoreStop | None = None
        self._stop_requested = False
        self._stop_resume: int | None = None
        self._in_write = False
        self._error: Exception | None = None

    def reset(self) -> None:
        """Drop all state: registers, SRAM and the loaded code. load() must come before the next run()."""
        uc = self._uc
        uc.mem_write(hw.CORE_IMEM_BASE, bytes(IMEM_SIZE))
        uc.mem_write(hw.CORE_SRAM_BASE, bytes(hw.CORE_SRAM_SIZE))
        for reg in range(UC_RISCV_REG_X1, UC_RISCV_REG_X31 + 1):
            uc.reg_write(reg, 0)
        uc.ctl_flush_tb()
        self._wfi_pcs.clear()
        self._loaded = False
        self._reset_state()

    def load(self, code: bytes, load_addr: int, entry: int) -> None:
        """Reset the core and put code into IMEM at load_addr; the next run() starts at entry."""
        end = load_addr + len(code)
        if not code or load_addr < hw.CORE_IMEM_BASE or end > hw.CORE_IMEM_BASE + IMEM_SIZE:
            raise ValueError(f"firmware code of {len(code)} bytes at 0x{load_addr:x} does not fit IMEM "
                             f"[0x{hw.CORE_IMEM_BASE:x}, 0x{hw.CORE_IMEM_BASE + IMEM_SIZE:x})")
        if not load_addr <= entry < end or entry % 2:
            raise ValueError(f"entry 0x{entry:x} is not an instruction inside the code "
                             f"[0x{load_addr:x}, 0x{end:x})")
        self.reset()
        self._uc.mem_write(load_addr, bytes(code))
        self._uc.ctl_flush_tb()
        self._pc = entry
        self._loaded = True

    # -- running --------------------------------------------------------------------------------------
    def run(self) -> CoreStop:
        """Run the firmware until it idles at wfi, faults, is stopped, or spends the instruction budget.

        A fault sticks until reset() or load(): the firmware cannot continue past it. After "idle",
        "stopped" or "watchdog" the next run() resumes where the core left off.
        """
        if not self._loaded:
            raise RuntimeError("control core has no firmware: call load() before run()")
        if self._fault is not None:
            return self._fault
        uc = self._uc
        self._stop_requested = False
        self._stop_resume = None
        try:
            uc.emu_start(self._pc, _NEVER, count=self.budget)
        except UcError:
            if self._fault is None:  # a hook records the precise cause; this is the fallback
                pc = uc.reg_read(UC_RISCV_REG_PC)
                self._fault = CoreStop("fault", STATUS.FW_FAULT, pc & 0xFFFFFFFF)
        if self._error is not None:  # a bug in a bus callback: not the firmware's fault
            error, self._error = self._error, None
            raise error
        if self._fault is not None:
            return self._fault
        if self._stop_requested:
            # emu_stop() in an MMIO callback leaves PC on the access. A write already took effect, so
            # resume after it; a read has not reached its register yet, so it runs again (reads of the
            # core block have no side effects).
            self._pc = self._stop_resume if self._stop_resume is not None else uc.reg_read(UC_RISCV_REG_PC)
            return _STOPPED
        pc = uc.reg_read(UC_RISCV_REG_PC)
        self._pc = pc
        if pc in self._wfi_pcs:
            return _IDLE
        if self._word_before(pc) == WFI:
            self._wfi_pcs.add(pc)
            return _IDLE
        return CoreStop("watchdog", STATUS.FW_WATCHDOG, pc)

    def stop(self) -> None:
        """Called from inside a bus callback: run() returns CoreStop("stopped") after this access."""
        uc = self._uc
        self._stop_requested = True
        if self._in_write:
            pc = uc.reg_read(UC_RISCV_REG_PC)
            insn = int.from_bytes(uc.mem_read(pc, 2), "little")
            self._stop_resume = pc + (4 if insn & 3 == 3 else 2)
        uc.emu_stop()

    def _word_before(self, pc: int) -> int | None:
        if not hw.CORE_IMEM_BASE + 4 <= pc <= hw.CORE_IMEM_BASE + IMEM_SIZE:
            return None
        return int.from_bytes(self._uc.mem_read(pc - 4, 4), "little")

    # -- SRAM access for the device model -------------------------------------------------------------
    def _check_sram(self, addr: int, n: int) -> None:
        base, size = hw.CORE_SRAM_BASE, hw.CORE_SRAM_SIZE
        if n < 0 or addr < base or addr > base + size or n > base + size - addr:
            raise ValueError(f"SRAM access of {n} bytes at 0x{addr:x} outside SRAM "
                             f"[0x{base:x}, 0x{base + size:x})")

    def sram_read(self, addr: int, n: int) -> bytes:
        self._check_sram(addr, n)
        return bytes(self._uc.mem_read(addr, n)) if n else b""

    def sram_write(self, addr: int, data: bytes) -> None:
        self._check_sram(addr, len(data))
        if data:
            self._uc.mem_write(addr, bytes(data))

    # -- unicorn callbacks ----------------------------------------------------------------------------
    def _check_access(self, offset: int, size: int) -> None:
        if size != 4 or offset % 4:
            raise CoreFault(STATUS.FW_FAULT, hw.CORE_MMIO_BASE + offset)

    def _on_read(self, uc: Uc, offset: int, size: int, _user: Any) -> int:
        try:
            self._check_access(offset, size)
            self._in_write = False
            return self._bus_read(offset) & 0xFFFFFFFF
        except Exception as exc:
            # unicorn cannot pass an exception out of a read callback cleanly (it warns about the
            # missing return value), so both callbacks stop the core and run() deals with it.
            self._raise_after_stop(exc)
            return 0

    def _on_write(self, uc: Uc, offset: int, size: int, value: int, _user: Any) -> None:
        try:
            self._check_access(offset, size)
            self._in_write = True
            self._bus_write(offset, value & 0xFFFFFFFF)
        except Exception as exc:
            self._raise_after_stop(exc)
        finally:
            self._in_write = False

    def _raise_after_stop(self, exc: Exception) -> None:
        if isinstance(exc, CoreFault):
            self._fault = CoreStop("fault", exc.status, exc.info & 0xFFFFFFFF)
        else:
            self._error = exc
        self._uc.emu_stop()

    def _on_bad_access(self, uc: Uc, access: int, address: int, size: int, value: int, _user: Any) -> bool:
        self._fault = CoreStop("fault", STATUS.FW_FAULT, address & 0xFFFFFFFF)
        return False

    def _on_exception(self, uc: Uc, intno: int, _user: Any) -> None:
        # unicorn delivers no trap to the guest (mtvec is never entered), so any exception -- illegal
        # instruction, ecall, ebreak, misaligned access -- ends the firmware. The PC here may already be
        # past the faulting instruction; it is reported as a hint, not an exact address.
        self._fault = CoreStop("fault", STATUS.FW_FAULT, uc.reg_read(UC_RISCV_REG_PC) & 0xFFFFFFFF)
        uc.emu_stop()
