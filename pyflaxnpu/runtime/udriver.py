"""User-space driver: the host side of the hardware contract, independent of how the device is attached.

It owns the submission and completion rings and the firmware buffer, speaks the control protocol
(RESET, BOOT) through the register window and doorbells, and turns completion records into results or
named errors. The in-process simulator, VFIO and any other attachment hand it four things: the register
window, a DMA allocator, a doorbell function and a way to wait for an interrupt.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flaxnpu_abi import hw
from flaxnpu_abi.regio import RegisterBlock

from ..errors import DeviceError, DeviceTimeout, FirmwareError, JobError
from .dma import DmaAllocator, DmaBuffer
from .firmware import check_image

R = hw.Reg
U32 = 0xFFFFFFFF


@dataclass(frozen=True)
class Timeouts:
    """Seconds; one place for every wait so a slow transport (QEMU under TCG) can raise them together."""

    control: float = 5.0
    boot: float = 10.0
    job: float = 30.0


@dataclass(frozen=True)
class Completion:
    seq: int
    sq_seq: int
    job_id: int
    status: int
    op_index: int | None
    info: int
    cycles: int


def status_text(status: int) -> str:
    try:
        code = hw.STATUS(status)
    except ValueError:
        return f"unknown status 0x{status:x}"
    return f"{code.name} ({hw.STATUS_DOC[code]})"


class UserDriver:
    def __init__(self, regs: RegisterBlock, alloc: DmaAllocator, doorbell: Callable[[int], None],
                 wait_irq: Callable[[float], None] | None = None, *, sq_entries: int = 64,
                 cq_entries: int = 64, timeouts: Timeouts | None = None) -> None:
        self.regs = regs
        self.alloc = alloc
        self._doorbell = doorbell
        self._wait_irq = wait_irq
        self.timeouts = timeouts or Timeouts()
        magic = regs.read(R.MAGIC)
        if magic != hw.SIGNATURE:
            raise DeviceError(f"register window has signature 0x{magic:08x}, not the NPU's 0x{hw.SIGNATURE:08x}: "
                              "this is not a flaxnpu device")
        abi = regs.read(R.ABI_VERSION)
        if abi >> 16 != hw.ABI_MAJOR:
            raise DeviceError(f"device speaks hardware ABI {abi >> 16}.{abi & 0xFFFF}, this driver "
                              f"{hw.ABI_MAJOR}.{hw.ABI_MINOR}: update pyflaxnpu or the device")
        self.sq_entries, self.cq_entries = sq_entries, cq_entries
        self._sq: DmaBuffer | None = None
        self._cq: DmaBuffer | None = None
        self._fw: DmaBuffer | None = None
        self._sq_tail = 0
        self._cq_head = 0
        self._done: dict[int, Completion] = {}
        self._image: bytes | None = None
        self.recoveries = 0

    # ------------------------------------------------------------------ control path

    def _control(self, cmd: int, timeout: float) -> None:
        seq = (self.regs.read(R.CTRL_SEQ) + 1) & U32
        self.regs.write(R.CTRL, cmd)
        self.regs.write(R.CTRL_SEQ, seq)
        self._doorbell(hw.DOORBELL_CONTROL)
        deadline = time.monotonic() + timeout
        while self.regs.read(R.CTRL_ACK) != seq:
            if time.monotonic() > deadline:
                raise DeviceTimeout(f"device did not acknowledge control command {hw.CTRL(cmd).name} within "
                                    f"{timeout:.1f} s (state {self.state_name()}); is the device model running?")
            self._idle(deadline)

    def state_name(self) -> str:
        state = self.regs.read(R.STATE)
        try:
            return hw.STATE(state).name
        except ValueError:
            return f"invalid state {state}"

    def device_error(self) -> str:
        return f"{status_text(self.regs.read(R.ERROR))}, info 0x{self.regs.read(R.ERROR_INFO):x}"

    def reset(self) -> None:
        """Return the device to OFF from any state, dropping every job in flight."""
        self._control(hw.CTRL.RESET, self.timeouts.control)
        if self.regs.read(R.STATE) != hw.STATE.OFF:
            raise DeviceError(f"device is {self.state_name()} after RESET, expected OFF")
        for buf in (self._sq, self._cq, self._fw):
            if buf is not None:
                self.alloc.free(buf)
        self._sq = self._cq = self._fw = None
        self._sq_tail = self._cq_head = 0
        self._done.clear()

    def boot(self, image: bytes) -> None:
        """Load firmware and configure the rings; returns when the firmware answered the handshake."""
        check_image(image)
        self._image = bytes(image)
        if self.regs.read(R.STATE) != hw.STATE.OFF:
            self.reset()
        self._fw = self.alloc.alloc(len(image))
        self._fw.view[:] = image
        self._sq = self.alloc.alloc(self.sq_entries * hw.SQ_ENTRY.itemsize)
        self._cq = self.alloc.alloc(self.cq_entries * hw.CQ_ENTRY.itemsize)
        self._cq.view[:] = bytes(self._cq.size)
        self.regs.write64(R.FW_ADDR_LO, self._fw.addr)
        self.regs.write(R.FW_SIZE, len(image))
        self.regs.write64(R.SQ_BASE_LO, self._sq.addr)
        self.regs.write(R.SQ_ENTRIES, self.sq_entries)
        self.regs.write64(R.CQ_BASE_LO, self._cq.addr)
        self.regs.write(R.CQ_ENTRIES, self.cq_entries)
        self.regs.write(R.SQ_TAIL, 0)
        self.regs.write(R.CQ_HEAD, 0)
        self._control(hw.CTRL.BOOT, self.timeouts.boot)
        if self.regs.read(R.STATE) != hw.STATE.READY:
            raise FirmwareError(f"device refused the firmware: state {self.state_name()}, {self.device_error()}")

    @property
    def firmware_version(self) -> str:
        v = self.regs.read(R.FW_VERSION)
        return f"{v >> 16}.{v >> 8 & 0xFF}.{v & 0xFF}"

    # ------------------------------------------------------------------ job path

    def submit(self, *, opcode: int, seg_table: int = 0, seg_count: int = 0, prog_seg: int = 0,
               prog_offset: int = 0, op_count: int = 0, batch: int = 0, job_id: int | None = None) -> int:
        """Queue one job; returns its sequence number (wait on it with wait())."""
        entry = np.zeros((), dtype=hw.SQ_ENTRY)
        entry["opcode"], entry["job_id"] = opcode, self._sq_tail if job_id is None else job_id
        entry["seg_table"], entry["seg_count"] = seg_table, seg_count
        entry["prog_seg"], entry["prog_offset"], entry["op_count"], entry["batch"] = (
            prog_seg, prog_offset, op_count, batch)
        return self.submit_entry(entry)

    def submit_entry(self, entry: np.ndarray, *, stamp_seq: bool = True) -> int:
        """Queue a whole hw.SQ_ENTRY record as given (seq stamped unless stamp_seq is False)."""
        if self._sq is None:
            raise DeviceError("device is not booted: call boot() first")
        in_flight = min(self.sq_entries, self.cq_entries)
        if (self._sq_tail - self._cq_head) & U32 >= in_flight:
            self._poll()
            if (self._sq_tail - self._cq_head) & U32 >= in_flight:
                raise DeviceError(f"{in_flight} jobs already in flight: wait for some before submitting")
        seq = self._sq_tail
        record = np.array(entry, dtype=hw.SQ_ENTRY)
        if stamp_seq:
            record["seq"] = seq
        slot = (seq % self.sq_entries) * hw.SQ_ENTRY.itemsize
        self._sq.view[slot:slot + hw.SQ_ENTRY.itemsize] = record.tobytes()
        self._sq_tail = (seq + 1) & U32
        self.regs.write(R.SQ_TAIL, self._sq_tail)
        self._doorbell(hw.DOORBELL_SUBMIT)
        return seq

    def _poll(self) -> None:
        """Consume completion records, trusting no index or record the device wrote without a check."""
        assert self._cq is not None
        tail = self.regs.read(R.CQ_TAIL)
        pending = (tail - self._cq_head) & U32
        if pending > self.cq_entries:
            raise DeviceError(f"device reports completion tail {tail} with host head {self._cq_head}: "
                              "more than the ring holds; reset the device")
        consumed = 0
        while self._cq_head != tail:
            slot = (self._cq_head % self.cq_entries) * hw.CQ_ENTRY.itemsize
            rec = np.frombuffer(self._cq.view[slot:slot + hw.CQ_ENTRY.itemsize], dtype=hw.CQ_ENTRY)[0]
            if int(rec["seq"]) != self._cq_head:
                raise DeviceError(f"completion record at index {self._cq_head} carries seq {int(rec['seq'])}: "
                                  "torn or stale record; reset the device")
            sq_seq = int(rec["sq_seq"])
            if ((self._sq_tail - sq_seq - 1) & U32) >= self.sq_entries:
                raise DeviceError(f"completion names job {sq_seq}, which is not in flight")
            op = int(rec["op_index"])
            self._done[sq_seq] = Completion(self._cq_head, sq_seq, int(rec["job_id"]), int(rec["status"]),
                                            None if op == hw.OP_NONE else op, int(rec["info"]),
                                            int(rec["cycles"]))
            self._cq_head = (self._cq_head + 1) & U32
            consumed += 1
        if consumed:
            self.regs.write(R.CQ_HEAD, self._cq_head)
            if self.regs.read(R.SQ_HEAD) != self._sq_tail:
                # The firmware stops when the completion ring is full; the doorbell says there is room.
                self._doorbell(hw.DOORBELL_SUBMIT)

    def wait(self, seq: int, timeout: float | None = None) -> Completion:
        """The completion of job `seq`; DeviceTimeout after `timeout` seconds (default Timeouts.job)."""
        limit = self.timeouts.job if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            self._poll()
            done = self._done.pop(seq, None)
            if done is not None:
                return done
            if self.regs.read(R.STATE) == hw.STATE.FAULT:
                what = self.device_error()
                self.recover()
                raise DeviceError(f"device faulted while job {seq} was in flight: {what}; it was reset and its "
                                  "firmware rebooted (jobs in flight were dropped)")
            if time.monotonic() > deadline:
                what = f"device {self.state_name()}, heartbeat {self.regs.read(R.HEARTBEAT)}"
                self.recover()
                raise DeviceTimeout(f"job {seq} did not complete within {limit:.1f} s ({what}); the device was "
                                    "reset and its firmware rebooted (jobs in flight were dropped)")
            self._idle(deadline)

    def recover(self) -> None:
        """Reset the device and boot the same firmware again: the way out of a hang or a fault."""
        if self._image is None:
            raise DeviceError("device was never booted: nothing to recover")
        self.recoveries += 1
        self.reset()
        self.boot(self._image)

    def run(self, **job: int) -> Completion:
        """Submit one job and wait for it; a failed job raises JobError naming the status."""
        done = self.wait(self.submit(**job))
        if done.status != hw.STATUS.OK:
            where = "" if done.op_index is None else f" at op {done.op_index}"
            raise JobError(f"job failed{where}: {status_text(done.status)}, info 0x{done.info:x}",
                           done.status, done.op_index, done.info)
        return done

    def _idle(self, deadline: float) -> None:
        remaining = max(0.0, deadline - time.monotonic())
        if self._wait_irq is not None:
            self._wait_irq(min(remaining, 0.05))
        else:
            time.sleep(min(remaining, 0.0005))

    def close(self) -> None:
        for buf in (self._sq, self._cq, self._fw):
            if buf is not None:
                self.alloc.free(buf)
        self._sq = self._cq = self._fw = None
