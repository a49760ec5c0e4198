"""The NPU as the host sees it: a 4 KiB register window, two doorbells, two interrupt vectors.

The model does not know how it is attached. In-process, doorbell() is a function call and irq a Python
callback; under QEMU (ivshmem-doorbell) the window is BAR2, doorbells arrive as eventfds and irq writes
the guest's MSI-X eventfds. Either way doorbell() runs the device until it is idle, then returns.

Control commands (REG_CTRL + REG_CTRL_SEQ, then DOORBELL_CONTROL) are answered in REG_CTRL_ACK with the
sequence number and an IRQ_EVENT. REG_STATE and REG_ERROR are written before the acknowledgement, so a
host that saw its sequence number can read the outcome. A BOOT that fails leaves STATE = FAULT and
REG_ERROR naming the failed check; only RESET leaves FAULT.
"""

from __future__ import annotations

from collections.abc import Callable

from flaxnpu_abi import hw
from flaxnpu_abi.hw import CTRL, STATE, STATUS, Reg
from flaxnpu_abi.prog import OPCODE
from flaxnpu_abi.regio import RegisterBlock

from .core import ControlCore, CoreStop
from .corebus import U32, CoreBus, Rings
from .errors import DeviceError, FirmwareImageError
from .firmware_image import HEADER_SIZE, FirmwareImage, parse_image
from .memory import HostMemory

CAPS = sum(1 << op for op in OPCODE)
FAULT_KINDS = ("hang",)
# Registers the device owns; RESET returns them to these values (identity registers never change).
_RESET_VALUES = {Reg.STATE: STATE.OFF, Reg.ERROR: 0, Reg.ERROR_INFO: 0, Reg.FW_VERSION: 0, Reg.FW_ABI: 0,
                 Reg.HEARTBEAT: 0, Reg.SQ_HEAD: 0, Reg.CQ_TAIL: 0, Reg.JOBS_DONE: 0, Reg.JOBS_FAILED: 0,
                 Reg.CYCLES_LO: 0, Reg.CYCLES_HI: 0}


class NpuDevice:
    """One NPU over `memory` (host RAM as DMA addresses) and a shared register window `regs`."""

    def __init__(self, memory: HostMemory, regs: bytearray | memoryview | None = None,
                 irq: Callable[[int], None] | None = None, peer_id: int = 0, budget: int = 20_000_000) -> None:
        self.memory = memory
        self.regs = RegisterBlock(bytearray(hw.REG_WINDOW_SIZE) if regs is None else regs, hw.REG_WINDOW_SIZE)
        self._irq = irq
        self.bus = CoreBus(memory, self.regs, self._raise_irq, self._fw_ready)
        self.core = ControlCore(self.bus.read, self.bus.write, budget=budget)
        self.bus.core = self.core
        self.state = STATE.OFF
        self._busy = False
        self._pending_control = False
        self._pending_submit = False
        self._ctrl_seq = 0
        for reg, value in ((Reg.MAGIC, hw.SIGNATURE), (Reg.ABI_VERSION, hw.ABI_MAJOR << 16 | hw.ABI_MINOR),
                           (Reg.CAPS, CAPS), (Reg.DEVICE_PEER, peer_id), (Reg.CTRL_ACK, 0)):
            self.regs.write(reg, value)
        self._clear()

    # ------------------------------------------------------------------ host entry points

    def doorbell(self, vector: int) -> None:
        """A doorbell from the host. Runs the device until idle; a doorbell rung meanwhile (from an irq
        callback) is remembered and served after the current work, never by recursion. Vectors other
        than DOORBELL_SUBMIT and DOORBELL_CONTROL do not exist and are ignored."""
        if vector == hw.DOORBELL_CONTROL:
            self._pending_control = True
        elif vector == hw.DOORBELL_SUBMIT:
            self._pending_submit = True
        if self._busy:
            return
        self._busy = True
        try:
            while self._pending_control or self._pending_submit:
                if self._pending_control:  # control first: a RESET must not wait behind jobs
                    self._pending_control = False
                    self._control()
                else:
                    self._pending_submit = False
                    self._serve()
        finally:
            self._busy = False

    def firmware_log(self) -> str:
        """What the firmware wrote to CORE_LOG (the newest 64 KiB; kept across RESET for post-mortems)."""
        return self.bus.log.decode("utf-8", errors="replace")

    def inject_fault(self, kind: str) -> None:
        """Test knob, also reachable from any host as CTRL_INJECT with REG_FAULT_KIND = FAULT_HANG.
        "hang": the next ENG_KICK or CQ_KICK stops the control core, so the job in flight never
        completes; the device ignores submit doorbells and the heartbeat stops until RESET."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
        self.bus.hang_armed = True

    # ------------------------------------------------------------------ control commands

    def _control(self) -> None:
        self._ctrl_seq = self.regs.read(Reg.CTRL_SEQ)
        cmd = self.regs.read(Reg.CTRL)
        if cmd == CTRL.RESET:
            self._clear()
            self._ack()
        elif cmd == CTRL.BOOT:
            self._boot()  # acknowledges itself: at the handshake, or when it fails
        elif cmd == CTRL.NOP:
            self._ack()
        elif cmd == CTRL.INJECT:
            kind = self.regs.read(Reg.FAULT_KIND)
            if kind == hw.FAULT.HANG:
                self.bus.hang_armed = True
            else:
                self._error(STATUS.CTRL_UNKNOWN, kind)
            self._ack()
        else:
            self._error(STATUS.CTRL_UNKNOWN, cmd)
            self._ack()

    def _ack(self) -> None:
        self.regs.write(Reg.CTRL_ACK, self._ctrl_seq)
        self._raise_irq(hw.IRQ_EVENT)

    def _set_state(self, state: STATE) -> None:
        self.state = state
        self.regs.write(Reg.STATE, state)

    def _error(self, status: STATUS, info: int) -> None:
        self.regs.write(Reg.ERROR, status)
        self.regs.write(Reg.ERROR_INFO, info & U32)

    def _fail(self, status: STATUS, info: int) -> None:
        self._error(status, info)
        self._set_state(STATE.FAULT)

    def _clear(self) -> None:
        """RESET: stop the core, drop jobs, rings and firmware, clear the device's registers, go to OFF."""
        self.core.reset()
        self.bus.reset()
        self._pending_submit = False
        for reg, value in _RESET_VALUES.items():
            self.regs.write(reg, value)
        self.state = STATE.OFF

    def _boot(self) -> None:
        if self.state != STATE.OFF:
            self._error(STATUS.DEVICE_STATE, self.state)  # a running device is left running
            self._ack()
            return
        self._error(STATUS.OK, 0)
        try:
            rings = self._check_rings()
            image = self._read_image()
        except DeviceError as e:
            self._fail(e.status, e.info)
            self._ack()
            return
        self.bus.rings = rings
        self.regs.write(Reg.FW_VERSION, 0)
        self._set_state(STATE.BOOTING)
        self.core.load(image.code, image.load_addr, image.entry)
        stop = self.core.run()
        if self.state != STATE.BOOTING:  # the handshake acknowledged the command
            self._core_stopped(stop)
        elif stop.reason in ("fault", "watchdog"):
            self._fail(_status(stop.status), stop.info)
            self._ack()
        else:  # idle (or stopped) without FW_READY: the firmware never answered
            self._fail(STATUS.FW_BOOT, 0)
            self._ack()

    def _fw_ready(self) -> None:
        """CORE_FW_READY (ABI already checked by the bus): the handshake completes the BOOT command."""
        if self.state != STATE.BOOTING:
            return
        self._set_state(STATE.READY)
        self._ack()

    def _check_rings(self) -> Rings:
        """Ring registers -> RING_CONFIG with info = the offset of the offending register."""
        r = self.regs
        sq_n, cq_n = r.read(Reg.SQ_ENTRIES), r.read(Reg.CQ_ENTRIES)
        for reg, n in ((Reg.SQ_ENTRIES, sq_n), (Reg.CQ_ENTRIES, cq_n)):
            if not hw.RING_MIN_ENTRIES <= n <= hw.RING_MAX_ENTRIES or n & (n - 1):
                raise DeviceError(STATUS.RING_CONFIG, reg, f"{reg.name} = {n}")
        sq, cq = r.read64(Reg.SQ_BASE_LO), r.read64(Reg.CQ_BASE_LO)
        if not self.memory.contains(sq, sq_n * hw.SQ_ENTRY.itemsize):
            raise DeviceError(STATUS.RING_CONFIG, Reg.SQ_BASE_LO, f"submission ring 0x{sq:x} outside memory")
        if not self.memory.contains(cq, cq_n * hw.CQ_ENTRY.itemsize):
            raise DeviceError(STATUS.RING_CONFIG, Reg.CQ_BASE_LO, f"completion ring 0x{cq:x} outside memory")
        return Rings(sq, sq_n, cq, cq_n)

    def _read_image(self) -> FirmwareImage:
        addr, size = self.regs.read64(Reg.FW_ADDR_LO), self.regs.read(Reg.FW_SIZE)
        if not self.memory.contains(addr, size):
            raise FirmwareImageError(STATUS.FW_SIZE, size, f"image buffer 0x{addr:x}+0x{size:x} outside memory")
        # A copy, checked and loaded from the copy: the host cannot swap the code after the CRC check.
        return parse_image(self.memory.read(addr, min(size, HEADER_SIZE + hw.FW_MAX_IMAGE)))

    # ------------------------------------------------------------------ job path

    def _serve(self) -> None:
        """DOORBELL_SUBMIT: let the firmware drain the submission ring (only when READY and not hung)."""
        if self.state != STATE.READY or self.bus.hung:
            return
        self._core_stopped(self.core.run())

    def _core_stopped(self, stop: CoreStop) -> None:
        """Act on why the core returned: idle is normal, stopped is the injected hang, the rest faults."""
        if stop.reason in ("idle", "stopped"):
            return
        self._fail(_status(stop.status), stop.info)
        self._raise_irq(hw.IRQ_EVENT)

    def _raise_irq(self, vector: int) -> None:
        if self._irq is not None:
            self._irq(vector)


def _status(value: int) -> STATUS:
    """A core stop's status; anything that is not a known status is reported as a firmware fault."""
    return STATUS(value) if value in STATUS._value2member_map_ else STATUS.FW_FAULT
