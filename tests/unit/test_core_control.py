"""ControlCore (sim/flaxnpu_sim/core.py) with tiny purpose-built RISC-V programs.

The programs are assembled with the RISC-V binutils the firmware build needs anyway.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from flaxnpu_abi import hw
from flaxnpu_abi.hw import STATUS, CoreReg
from flaxnpu_sim.core import ControlCore, CoreFault, CoreStop

AS = "riscv64-unknown-elf-as"
OBJCOPY = "riscv64-unknown-elf-objcopy"
MMIO = hw.CORE_MMIO_BASE
SRAM = hw.CORE_SRAM_BASE

pytestmark = pytest.mark.skipif(shutil.which(AS) is None,
                                reason=f"{AS} missing: sudo apt-get install -y gcc-riscv64-unknown-elf")


def assemble(source: str, tmp_path: Path) -> bytes:
    src, obj, out = tmp_path / "t.S", tmp_path / "t.o", tmp_path / "t.bin"
    src.write_text(".globl _start\n_start:\n" + source + "\n")
    subprocess.run([AS, "-march=rv32imac", "-mabi=ilp32", str(src), "-o", str(obj)], check=True)
    subprocess.run([OBJCOPY, "-O", "binary", str(obj), str(out)], check=True)
    return out.read_bytes()


class Bus:
    """Records register traffic; reads return values from a dict."""

    def __init__(self) -> None:
        self.values: dict[int, int] = {}
        self.reads: list[int] = []
        self.writes: list[tuple[int, int]] = []
        self.on_write = None
        self.on_read = None
        self.core = ControlCore(self.read, self.write, budget=100_000)

    def read(self, offset: int) -> int:
        self.reads.append(offset)
        if self.on_read:
            self.on_read(offset)
        return self.values.get(offset, 0)

    def write(self, offset: int, value: int) -> None:
        self.writes.append((offset, value))
        if self.on_write:
            self.on_write(offset, value)


@pytest.fixture
def bus() -> Bus:
    return Bus()


def load(bus: Bus, source: str, tmp_path: Path) -> None:
    bus.core.load(assemble(source, tmp_path), 0, 0)


HEARTBEAT_LOOP = f"""
    li t0, {MMIO:#x}
1:  lw a0, {CoreReg.SQ_TAIL:#x}(t0)
    addi a0, a0, 1
    sw a0, {CoreReg.HEARTBEAT:#x}(t0)
    wfi
    j 1b
"""


def test_idle_at_wfi_then_resume(bus, tmp_path):
    load(bus, HEARTBEAT_LOOP, tmp_path)
    bus.values[CoreReg.SQ_TAIL] = 41
    assert bus.core.run() == CoreStop("idle", 0, 0)
    assert bus.writes == [(CoreReg.HEARTBEAT, 42)]
    bus.values[CoreReg.SQ_TAIL] = 99
    assert bus.core.run() == CoreStop("idle", 0, 0)
    assert bus.writes == [(CoreReg.HEARTBEAT, 42), (CoreReg.HEARTBEAT, 100)]
    assert bus.reads == [CoreReg.SQ_TAIL, CoreReg.SQ_TAIL]


def test_watchdog_on_infinite_loop_reports_pc_and_can_resume(bus, tmp_path):
    load(bus, "nop\nnop\n1: j 1b", tmp_path)
    stop = bus.core.run()
    assert stop == CoreStop("watchdog", STATUS.FW_WATCHDOG, 4)
    assert bus.core.run() == stop


def test_unmapped_load_faults_with_the_address(bus, tmp_path):
    load(bus, "li t0, 0x40000010\nlw a0, 0(t0)\nwfi", tmp_path)
    assert bus.core.run() == CoreStop("fault", STATUS.FW_FAULT, 0x40000010)


def test_store_to_imem_faults(bus, tmp_path):
    load(bus, "li a0, 1\nsw a0, 0x100(zero)\nwfi", tmp_path)
    assert bus.core.run() == CoreStop("fault", STATUS.FW_FAULT, 0x100)


def test_jump_into_sram_faults_on_fetch(bus, tmp_path):
    load(bus, f"li t0, {SRAM + 0x40:#x}\njr t0", tmp_path)
    assert bus.core.run() == CoreStop("fault", STATUS.FW_FAULT, SRAM + 0x40)


def test_illegal_instruction_faults_and_fault_is_sticky(bus, tmp_path):
    load(bus, f"li t0, {MMIO:#x}\nsw zero, {CoreReg.HEARTBEAT:#x}(t0)\n.word 0xffffffff\nwfi", tmp_path)
    stop = bus.core.run()
    assert (stop.reason, stop.status) == ("fault", STATUS.FW_FAULT)
    assert 0 < stop.info < 0x40  # a hint near the bad word: unicorn's PC there is not exact
    assert bus.core.run() == stop
    assert bus.writes == [(CoreReg.HEARTBEAT, 0)]  # the sticky fault did not run the code again


@pytest.mark.parametrize("insn", ["ecall", "ebreak"])
def test_traps_are_faults(bus, tmp_path, insn):
    load(bus, f"{insn}\nwfi", tmp_path)
    assert bus.core.run().reason == "fault"


def test_core_fault_from_a_callback_becomes_a_fault_stop(bus, tmp_path):
    def refuse(offset: int, value: int) -> None:
        raise CoreFault(STATUS.FW_FAULT, MMIO + offset)

    bus.on_write = refuse
    load(bus, HEARTBEAT_LOOP, tmp_path)
    assert bus.core.run() == CoreStop("fault", STATUS.FW_FAULT, MMIO + CoreReg.HEARTBEAT)


@pytest.mark.parametrize("access", [f"sb a0, {CoreReg.HEARTBEAT:#x}(t0)", f"lh a0, {CoreReg.SQ_TAIL:#x}(t0)",
                                    f"sw a0, {CoreReg.HEARTBEAT + 2:#x}(t0)"])
def test_mmio_access_that_is_not_an_aligned_word_faults(bus, tmp_path, access):
    load(bus, f"li t0, {MMIO:#x}\n{access}\nwfi", tmp_path)
    stop = bus.core.run()
    assert (stop.reason, stop.status) == ("fault", STATUS.FW_FAULT)
    assert MMIO <= stop.info < MMIO + 0x1000
    assert bus.writes == [] and bus.reads == []


def test_bus_bug_propagates_out_of_run(bus, tmp_path):
    def broken(offset: int) -> None:
        raise KeyError(offset)

    bus.on_read = broken
    load(bus, HEARTBEAT_LOOP, tmp_path)
    with pytest.raises(KeyError):
        bus.core.run()


def test_stop_in_a_write_resumes_after_the_store_without_repeating_it(bus, tmp_path):
    load(bus, f"li t0, {MMIO:#x}\nli a0, 7\nsw a0, 0x40(t0)\nsw a0, 0x44(t0)\nwfi", tmp_path)
    bus.on_write = lambda off, val: bus.core.stop() if off == 0x40 else None
    assert bus.core.run() == CoreStop("stopped", 0, 0)
    assert bus.writes == [(0x40, 7)]
    assert bus.core.run() == CoreStop("idle", 0, 0)
    assert bus.writes == [(0x40, 7), (0x44, 7)]


def test_stop_in_a_read_runs_the_read_again(bus, tmp_path):
    load(bus, f"li t0, {MMIO:#x}\nlw a0, 0x14(t0)\nsw a0, 0x2c(t0)\nwfi", tmp_path)
    bus.values[0x14] = 5
    bus.on_read = lambda off: (bus.core.stop(), setattr(bus, "on_read", None))
    assert bus.core.run().reason == "stopped"
    assert bus.core.run().reason == "idle"
    assert bus.reads == [0x14, 0x14]
    assert bus.writes == [(0x2c, 5)]  # the value of the repeated read reached its register


def test_sram_is_shared_with_the_firmware(bus, tmp_path):
    load(bus, f"li t0, {SRAM:#x}\nlw a0, 0(t0)\naddi a0, a0, 1\nsw a0, 4(t0)\nwfi", tmp_path)
    bus.core.sram_write(SRAM, (41).to_bytes(4, "little"))
    assert bus.core.run().reason == "idle"
    assert bus.core.sram_read(SRAM + 4, 4) == (42).to_bytes(4, "little")


@pytest.mark.parametrize(("addr", "n"), [(SRAM - 1, 1), (SRAM + hw.CORE_SRAM_SIZE - 4, 8),
                                         (SRAM + hw.CORE_SRAM_SIZE, 1), (0, 4), (SRAM, -1)])
def test_sram_access_outside_sram_is_refused(bus, addr, n):
    with pytest.raises(ValueError, match="outside SRAM"):
        bus.core.sram_read(addr, n)
    if n >= 0:
        with pytest.raises(ValueError, match="outside SRAM"):
            bus.core.sram_write(addr, b"\0" * n)


def test_sram_edges_are_usable(bus):
    end = SRAM + hw.CORE_SRAM_SIZE
    bus.core.sram_write(end - 4, b"abcd")
    assert bus.core.sram_read(end - 4, 4) == b"abcd"
    assert bus.core.sram_read(end, 0) == b""


def test_reset_drops_code_and_state_then_load_reuses_the_core(bus, tmp_path):
    load(bus, "li t0, 0x40000000\nlw a0, 0(t0)", tmp_path)
    assert bus.core.run().reason == "fault"
    bus.core.sram_write(SRAM, b"junk")
    bus.core.reset()
    assert bus.core.sram_read(SRAM, 4) == b"\0\0\0\0"
    with pytest.raises(RuntimeError, match="load"):
        bus.core.run()
    load(bus, HEARTBEAT_LOOP, tmp_path)
    assert bus.core.run().reason == "idle"
    assert bus.writes == [(CoreReg.HEARTBEAT, 1)]


def test_load_replaces_code_that_already_ran(bus, tmp_path):
    load(bus, f"li t0, {MMIO:#x}\nli a0, 1\nsw a0, 0x2c(t0)\nwfi", tmp_path)
    assert bus.core.run().reason == "idle"
    load(bus, f"li t0, {MMIO:#x}\nli a0, 2\nsw a0, 0x2c(t0)\nwfi", tmp_path)  # same addresses, new code
    assert bus.core.run().reason == "idle"
    assert bus.writes == [(0x2c, 1), (0x2c, 2)]


@pytest.mark.parametrize(("size", "load_addr", "entry"), [(0, 0, 0), (hw.FW_MAX_IMAGE + 2, 0, 0),
                                                         (16, 0, 16), (16, 0, 3), (16, 0xFFF8, 0xFFF8)])
def test_load_refuses_code_that_does_not_fit(bus, size, load_addr, entry):
    with pytest.raises(ValueError):
        bus.core.load(b"\x13" * size, load_addr, entry)
