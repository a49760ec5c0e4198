"""The device model with the real firmware, driven at the register and ring level (no runtime): boot,
handshake registers, a NOP job and a MATMUL job through rings built here, hang injection, RESET, reboot."""

import time
from pathlib import Path

import numpy as np
import pytest
from flaxnpu_abi import hw, prog
from flaxnpu_abi.hw import CTRL, STATE, STATUS, Reg
from flaxnpu_sim.device import NpuDevice
from flaxnpu_sim.memory import AnonymousMemory

IMAGE = Path(__file__).resolve().parents[2] / "firmware" / "build" / "flaxnpu-fw.bin"
BASE = 0x1000_0000
FW_AT, SQ_AT, CQ_AT, TABLE_AT, DATA = BASE, BASE + 0x20000, BASE + 0x30000, BASE + 0x38000, BASE + 0x40000
ENTRIES = 16


class Host:
    """The host side, minimal: window writes, doorbells, ring records with flaxnpu_abi dtypes."""

    def __init__(self):
        if not IMAGE.is_file():
            pytest.fail(f"firmware image {IMAGE} is missing: run make -C firmware")
        self.mem = AnonymousMemory(8 << 20, base=BASE)
        self.irqs = []
        self.dev = NpuDevice(self.mem, irq=self.irqs.append)
        self.r = self.dev.regs
        self.ctrl_seq = self.sq_tail = self.cq_head = 0

    def control(self, cmd):
        self.ctrl_seq += 1
        self.r.write(Reg.CTRL, cmd)
        self.r.write(Reg.CTRL_SEQ, self.ctrl_seq)
        self.dev.doorbell(hw.DOORBELL_CONTROL)
        assert self.r.read(Reg.CTRL_ACK) == self.ctrl_seq

    def boot(self):
        image = IMAGE.read_bytes()
        self.mem.write(FW_AT, image)
        self.r.write64(Reg.FW_ADDR_LO, FW_AT)
        self.r.write(Reg.FW_SIZE, len(image))
        self.r.write64(Reg.SQ_BASE_LO, SQ_AT)
        self.r.write64(Reg.CQ_BASE_LO, CQ_AT)
        self.r.write(Reg.SQ_ENTRIES, ENTRIES)
        self.r.write(Reg.CQ_ENTRIES, ENTRIES)
        self.sq_tail = self.cq_head = 0
        self.r.write(Reg.SQ_TAIL, 0)
        self.r.write(Reg.CQ_HEAD, 0)
        self.control(CTRL.BOOT)
        assert self.r.read(Reg.STATE) == STATE.READY, (self.r.read(Reg.ERROR), self.dev.firmware_log())

    def submit(self, **fields):
        e = np.zeros(1, hw.SQ_ENTRY)
        e["seq"], e["job_id"] = self.sq_tail, 1000 + self.sq_tail
        for k, v in fields.items():
            e[k] = v
        self.mem.write(SQ_AT + (self.sq_tail % ENTRIES) * 64, e.tobytes())
        self.sq_tail += 1
        self.r.write(Reg.SQ_TAIL, self.sq_tail)
        self.dev.doorbell(hw.DOORBELL_SUBMIT)

    def completions(self):
        out = []
        while self.cq_head != self.r.read(Reg.CQ_TAIL):
            rec = np.frombuffer(self.mem.read(CQ_AT + (self.cq_head % ENTRIES) * 32, 32), hw.CQ_ENTRY)[0]
            assert rec["seq"] == self.cq_head
            out.append(rec)
            self.cq_head += 1
        self.r.write(Reg.CQ_HEAD, self.cq_head)
        return out


@pytest.fixture
def host():
    h = Host()
    h.boot()
    return h


def test_boot_handshake_registers(host):
    r = host.r
    assert r.read(Reg.FW_VERSION) != 0 and r.read(Reg.FW_ABI) >> 16 == hw.ABI_MAJOR
    assert r.read(Reg.HEARTBEAT) >= 1 and r.read(Reg.ERROR) == 0
    beat = r.read(Reg.HEARTBEAT)
    host.dev.doorbell(hw.DOORBELL_SUBMIT)  # a wake with no work still beats
    assert r.read(Reg.HEARTBEAT) > beat


def test_nop_job_round_trip(host):
    host.submit(opcode=hw.JOB_OP.NOP)
    (c,) = host.completions()
    assert (c["sq_seq"], c["job_id"], c["status"], c["op_index"]) == (0, 1000, STATUS.OK, hw.OP_NONE)
    assert host.r.read(Reg.JOBS_DONE) == 1 and host.r.read(Reg.SQ_HEAD) == 1
    assert hw.IRQ_COMPLETION in host.irqs


def matmul_job(host, m, k, n, batch=1):
    """One MATMUL+bias+relu op in a program segment; input/output in their own segments."""
    rng = np.random.default_rng(1)
    x, w, b = (rng.standard_normal(s).astype("<f4") for s in ((m, k), (k, n), (n,)))
    prog_at, in_at, out_at = DATA, DATA + 0x100000, DATA + 0x200000
    op = np.zeros(1, prog.OP)
    op["opcode"], op["act"], op["flags"] = prog.OPCODE.MATMUL, prog.FUNC.RELU, prog.OP_FLAG.BIAS
    op["dims"][0, :3] = (m, k, n)
    op["src0"] = (0, x.nbytes, 1, prog.DTYPE.F32, 0)
    op["src1"] = (128, w.nbytes, 0, prog.DTYPE.F32, 0)
    op["src2"] = (128 + w.nbytes, b.nbytes, 0, prog.DTYPE.F32, 0)
    op["dst"] = (0, m * n * 4, 2, prog.DTYPE.F32, 0)
    host.mem.write(prog_at, op.tobytes() + w.tobytes() + b.tobytes())
    host.mem.write(in_at, x.tobytes())
    t = np.zeros(3, hw.SEG_ENTRY)
    t[0] = (prog_at, 128 + w.nbytes + b.nbytes, hw.SEG_FLAG.READ, 0)
    t[1] = (in_at, x.nbytes, hw.SEG_FLAG.READ, 0)
    t[2] = (out_at, m * n * 4, hw.SEG_FLAG.WRITE, 0)
    host.mem.write(TABLE_AT, t.tobytes())
    want = np.maximum(x @ w + b, 0)
    job = dict(opcode=hw.JOB_OP.RUN, seg_table=TABLE_AT, seg_count=3, prog_seg=0, prog_offset=0,
               op_count=1, batch=batch)
    return job, lambda: np.frombuffer(host.mem.read(out_at, m * n * 4), "<f4").reshape(m, n), want


def test_matmul_job(host):
    job, result, want = matmul_job(host, 8, 64, 32)
    host.submit(**job)
    (c,) = host.completions()
    assert c["status"] == STATUS.OK, (STATUS(c["status"]).name, c["info"])
    np.testing.assert_allclose(result(), want, rtol=1e-5, atol=1e-5)
    assert c["cycles"] > 0 and host.r.read64(Reg.CYCLES_LO) >= c["cycles"]


def test_bad_segment_table_fails_the_job_not_the_device(host):
    host.submit(opcode=hw.JOB_OP.RUN, seg_table=BASE + (8 << 20), seg_count=1, op_count=1, batch=1)
    host.submit(opcode=hw.JOB_OP.NOP)
    a, b = host.completions()
    assert a["status"] == STATUS.SEG_TABLE and b["status"] == STATUS.OK
    assert host.r.read(Reg.STATE) == STATE.READY and host.r.read(Reg.JOBS_FAILED) == 1


@pytest.mark.parametrize("how", ["knob", "ctrl_inject"])
def test_hang_then_reset_and_reboot(host, how):
    if how == "knob":
        host.dev.inject_fault("hang")
    else:
        host.r.write(Reg.FAULT_KIND, hw.FAULT.HANG)
        host.control(CTRL.INJECT)
    host.submit(opcode=hw.JOB_OP.NOP)
    assert host.completions() == []
    beat = host.r.read(Reg.HEARTBEAT)
    host.submit(opcode=hw.JOB_OP.NOP)  # a hung device serves nothing, and its heartbeat stops
    assert host.completions() == [] and host.r.read(Reg.HEARTBEAT) == beat
    host.control(CTRL.RESET)
    assert host.r.read(Reg.STATE) == STATE.OFF and host.r.read(Reg.CQ_TAIL) == 0
    host.boot()
    host.submit(opcode=hw.JOB_OP.NOP)
    assert [int(c["status"]) for c in host.completions()] == [STATUS.OK]


def test_cost_of_nop_and_mlp_sized_matmul_jobs(host, capsys):
    """Not a benchmark: prints what one job costs in the model, so regressions are visible in -s runs."""
    n = 200
    t0 = time.perf_counter()
    for _ in range(n):
        host.submit(opcode=hw.JOB_OP.NOP)
        host.completions()
    nop_us = (time.perf_counter() - t0) / n * 1e6
    job, _, _ = matmul_job(host, 32, 784, 256)  # first layer of a 784-256-256-10 MLP at batch 32
    t0 = time.perf_counter()
    for _ in range(20):
        host.submit(**job)
        (c,) = host.completions()
    mm_us = (time.perf_counter() - t0) / 20 * 1e6
    with capsys.disabled():
        print(f"\n  NOP job {nop_us:.0f} us; 32x784x256 MATMUL job {mm_us:.0f} us, {int(c['cycles'])} cycles")
    assert c["status"] == STATUS.OK
