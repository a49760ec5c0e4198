"""A small stand-in for the device around the control core, to test the real firmware in isolation.

It implements the core register block semantics of docs/HELPERS-BRIEF.md over Python data: host memory
is one bytearray, the MMU keeps contiguous and paged segments, and the engine only records the resolved
ops it is kicked with (it checks that the batch was applied, and can be told to fail one op).
"""

from __future__ import annotations

import shutil
import subprocess
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flaxnpu_abi import hw, prog
from flaxnpu_abi.hw import STATUS, CoreReg
from flaxnpu_sim.core import ControlCore, CoreFault, CoreStop

REPO = Path(__file__).resolve().parents[2]
IMAGE = REPO / "firmware" / "build" / "flaxnpu-fw.bin"
SRAM, SRAM_END = hw.CORE_SRAM_BASE, hw.CORE_SRAM_BASE + hw.CORE_SRAM_SIZE
HOST_BASE, HOST_SIZE = 0x4000_0000, 0x20_0000
SQ_BASE, CQ_BASE, TABLE_BASE, SEG_BASE = HOST_BASE, HOST_BASE + 0x4_0000, HOST_BASE + 0x6_0000, HOST_BASE + 0x8_0000
SEG_SPAN = 0x4_0000  # bytes per default segment
ENGINE_CYCLES = 1000
SEG_RIGHTS = hw.SEG_FLAG.READ | hw.SEG_FLAG.WRITE


def firmware_image() -> bytes:
    """The firmware image, rebuilt with make when the toolchain is here (make knows when it is stale)."""
    if shutil.which("riscv64-unknown-elf-gcc"):
        subprocess.run(["make", "-s", "-C", str(REPO / "firmware")], check=True, capture_output=True)
    if not IMAGE.exists():
        raise FileNotFoundError(f"{IMAGE} missing: install gcc-riscv64-unknown-elf and run make -C firmware")
    return IMAGE.read_bytes()


def split_image(image: bytes) -> tuple[bytes, int, int]:
    """(code, load_addr, entry) after the checks the device makes on the header."""
    header = np.frombuffer(image[: hw.FW_HEADER.itemsize], hw.FW_HEADER)[0]
    code = image[int(header["header_size"]):]
    assert header["magic"] == hw.FW_MAGIC and header["header_size"] == 64
    assert len(code) == header["image_size"] and zlib.crc32(code) == header["crc32"]
    return code, int(header["load_addr"]), int(header["entry"])


@dataclass(repr=False)
class Segment:
    addr: int
    size: int
    flags: int
    pages: list[int] | None = None

    def host_ranges(self, offset: int, n: int) -> list[tuple[int, int]]:
        if self.pages is None:
            return [(self.addr + offset, n)]
        out = []
        while n:
            page, within = divmod(offset, hw.PAGE_SIZE)
            step = min(n, hw.PAGE_SIZE - within)
            out.append((self.pages[page] + within, step))
            offset, n = offset + step, n - step
        return out


@dataclass(repr=False)
class FirmwareBus:
    sq_entries: int = 8
    cq_entries: int = 8
    budget: int = 2_000_000
    mem: bytearray = field(default_factory=lambda: bytearray(HOST_SIZE), repr=False)
    # host side of the ring registers
    sq_tail: int = 0
    cq_head: int = 0
    # device state the firmware drives
    status: int = 0
    info: int = 0
    cycles: int = 0
    cq_tail: int = 0
    sq_head: int = 0
    jobs_done: int = 0
    jobs_failed: int = 0
    heartbeat: int = 0
    handshake: list[tuple[str, int]] = field(default_factory=list)
    irqs: list[int] = field(default_factory=list)
    log: bytearray = field(default_factory=bytearray)
    segments: list[Segment] = field(default_factory=list)
    engine_ops: list[np.void] = field(default_factory=list, repr=False)
    engine_fail: dict[int, tuple[int, int]] = field(default_factory=dict)  # kick number -> (status, info)
    cq_refuse: int = 0  # answer this many CQ_KICKs with CQ_FULL regardless of room
    kicks: int = 0

    def __post_init__(self) -> None:
        self.core = ControlCore(self.read, self.write, budget=self.budget)

    def __repr__(self) -> str:  # short: hypothesis prints it with every falsifying example
        return f"FirmwareBus(sq_head={self.sq_head}, sq_tail={self.sq_tail}, cq_tail={self.cq_tail})"

    def _repr_pretty_(self, p: object, cycle: bool) -> None:
        p.text(repr(self))  # type: ignore[attr-defined]

    # -- host side ------------------------------------------------------------------------------------
    def boot(self, image: bytes) -> CoreStop:
        self.core.load(*split_image(image))
        return self.core.run()

    def host_read(self, addr: int, n: int) -> bytes:
        assert self.host_contains(addr, n)
        return bytes(self.mem[addr - HOST_BASE: addr - HOST_BASE + n])

    def host_write(self, addr: int, data: bytes) -> None:
        assert self.host_contains(addr, len(data))
        self.mem[addr - HOST_BASE: addr - HOST_BASE + len(data)] = data

    @staticmethod
    def host_contains(addr: int, n: int) -> bool:
        return HOST_BASE <= addr and n >= 0 and addr + n <= HOST_BASE + HOST_SIZE

    def submit(self, entry: np.void | bytes) -> None:
        raw = entry.tobytes() if isinstance(entry, np.void) else bytes(entry)
        self.host_write(SQ_BASE + (self.sq_tail % self.sq_entries) * 64, raw)
        self.sq_tail = (self.sq_tail + 1) & 0xFFFFFFFF

    def doorbell(self) -> CoreStop:
        return self.core.run()

    def take_completions(self) -> list[np.void]:
        out = []
        while self.cq_head != self.cq_tail:
            raw = self.host_read(CQ_BASE + (self.cq_head % self.cq_entries) * 32, 32)
            out.append(np.frombuffer(raw, hw.CQ_ENTRY)[0])
            self.cq_head += 1
        return out

    # -- the core register block ----------------------------------------------------------------------
    def read(self, offset: int) -> int:
        match offset:
            case CoreReg.HW_ABI:
                return hw.ABI_MAJOR << 16 | hw.ABI_MINOR
            case CoreReg.SQ_TAIL:
                return self.sq_tail
            case CoreReg.SQ_ENTRIES:
                return self.sq_entries
            case CoreReg.CQ_HEAD:
                return self.cq_head
            case CoreReg.CQ_ENTRIES:
                return self.cq_entries
            case CoreReg.STATUS:
                return self.status
            case CoreReg.STATUS_INFO:
                return self.info
            case CoreReg.CYCLES:
                return self.cycles
        raise CoreFault(STATUS.FW_FAULT, hw.CORE_MMIO_BASE + offset)

    def write(self, offset: int, value: int) -> None:
        match offset:
            case CoreReg.FW_VERSION | CoreReg.FW_ABI | CoreReg.FW_READY:
                self.handshake.append((CoreReg(offset).name, value))
            case CoreReg.HEARTBEAT:
                self.heartbeat = value
            case CoreReg.SQ_HEAD:
                self.sq_head = value
            case CoreReg.IRQ:
                if value not in (hw.IRQ_COMPLETION, hw.IRQ_EVENT):
                    raise CoreFault(STATUS.FW_FAULT, value)
                self.irqs.append(value)
            case CoreReg.JOB_DONE:
                if value == 0:
                    self.jobs_done += 1
                else:
                    self.jobs_failed += 1
            case CoreReg.LOG:
                self.log.append(value & 0xFF)
            case CoreReg.SQ_KICK | CoreReg.MMU_KICK | CoreReg.DMA_KICK | CoreReg.ENG_KICK | CoreReg.CQ_KICK:
                self.kicks += 1
                self.status, self.info = self._kick(offset, value)
            case _:
                raise CoreFault(STATUS.FW_FAULT, hw.CORE_MMIO_BASE + offset)

    def _kick(self, offset: int, arg: int) -> tuple[int, int]:
        units = {CoreReg.SQ_KICK: (8, self._sq_fetch), CoreReg.MMU_KICK: (16, self._mmu),
                 CoreReg.DMA_KICK: (16, self._dma), CoreReg.ENG_KICK: (128, self._engine),
                 CoreReg.CQ_KICK: (32, self._cq)}
        size, unit = units[CoreReg(offset)]
        if not self._in_sram(arg, size):
            return STATUS.ENGINE_ARG, arg
        return unit(self.core.sram_read(arg, size))

    @staticmethod
    def _in_sram(addr: int, n: int) -> bool:
        return SRAM <= addr and addr + n <= SRAM_END

    def _sq_fetch(self, raw: bytes) -> tuple[int, int]:
        args = np.frombuffer(raw, hw.SQ_FETCH_ARGS)[0]
        index, dst = int(args["index"]), int(args["dst"])
        if not 0 < (self.sq_tail - index) % 2**32 <= self.sq_entries:
            return STATUS.SQ_EMPTY, index
        if not self._in_sram(dst, 64):
            return STATUS.ENGINE_ARG, dst
        self.core.sram_write(dst, self.host_read(SQ_BASE + (index % self.sq_entries) * 64, 64))
        return 0, 0

    def _mmu(self, raw: bytes) -> tuple[int, int]:
        args = np.frombuffer(raw, hw.MMU_ARGS)[0]
        table, count, dst = int(args["table"]), int(args["count"]), int(args["dst"])
        self.segments = []
        if not 1 <= count <= hw.MAX_SEGMENTS:
            return STATUS.SEG_COUNT, count
        if not self.host_contains(table, count * 16):
            return STATUS.SEG_TABLE, 0
        if not self._in_sram(dst, count * 16):
            return STATUS.ENGINE_ARG, dst
        entries = np.frombuffer(self.host_read(table, count * 16), hw.SEG_ENTRY)
        segs = []
        for i, e in enumerate(entries):
            flags, size, addr = int(e["flags"]), int(e["size"]), int(e["addr"])
            if flags & ~0x7 or not flags & SEG_RIGHTS or e["reserved"]:
                return STATUS.SEG_FLAGS, i
            if flags & hw.SEG_FLAG.PAGES:
                npages = -(-size // hw.PAGE_SIZE)
                if size == 0:
                    return STATUS.SEG_SIZE, i
                if not self.host_contains(addr, npages * 8):
                    return STATUS.SEG_PAGES, i
                pages = [int(p) for p in np.frombuffer(self.host_read(addr, npages * 8), "<u8")]
                if any(p % hw.PAGE_SIZE or not self.host_contains(p, hw.PAGE_SIZE) for p in pages):
                    return STATUS.SEG_PAGES, i
                segs.append(Segment(addr, size, flags, pages))
            else:
                if size == 0 or not self.host_contains(addr, size):
                    return STATUS.SEG_SIZE, i
                segs.append(Segment(addr, size, flags))
        self.segments = segs
        self.core.sram_write(dst, entries.tobytes())
        return 0, 0

    def _dma(self, raw: bytes) -> tuple[int, int]:
        args = np.frombuffer(raw, hw.DMA_ARGS)[0]
        seg, offset, n, dst = (int(args[k]) for k in ("seg", "offset", "len", "dst"))
        if (seg >= len(self.segments) or not self.segments[seg].flags & hw.SEG_FLAG.READ
                or offset + n > self.segments[seg].size or not self._in_sram(dst, n)):
            return STATUS.DMA_BOUNDS, offset
        data = b"".join(self.host_read(a, k) for a, k in self.segments[seg].host_ranges(offset, n))
        self.core.sram_write(dst, data)
        return 0, 0

    def _engine(self, raw: bytes) -> tuple[int, int]:
        op = np.frombuffer(raw, prog.OP)[0].copy()
        self.engine_ops.append(op)
        refs = [op[r] for r in ("src0", "src1", "src2", "dst")]
        if op["scale_mask"] or any(r["flags"] & prog.REF_FLAG.SCALED for r in refs):
            return STATUS.OP_FLAGS, 0
        failure = self.engine_fail.get(len(self.engine_ops) - 1)
        self.cycles = ENGINE_CYCLES
        return failure if failure else (0, 0)

    def _cq(self, raw: bytes) -> tuple[int, int]:
        if self.cq_refuse or (self.cq_tail - self.cq_head) >= self.cq_entries:
            self.cq_refuse = max(0, self.cq_refuse - 1)
            return STATUS.CQ_FULL, 0
        rec = np.frombuffer(raw, hw.CQ_ENTRY)[0].copy()
        assert rec["seq"] == 0, "firmware must leave seq to the device"
        rec["seq"] = self.cq_tail
        self.host_write(CQ_BASE + (self.cq_tail % self.cq_entries) * 32, rec.tobytes())
        self.cq_tail += 1
        return 0, 0


# -- jobs and ops -------------------------------------------------------------------------------------
# Segments of a test job, in the program format's order: PROGRAM (op stream, then weights at WEIGHTS),
# ARENA, INPUT, OUTPUT. Each is SEG_SPAN bytes of host memory.
SEG_FLAGS = [hw.SEG_FLAG.READ, SEG_RIGHTS, hw.SEG_FLAG.READ, hw.SEG_FLAG.WRITE]
WEIGHTS = 0x2_0000


def seg_table(flags: list[int] | None = None) -> np.ndarray:
    flags = SEG_FLAGS if flags is None else flags
    table = np.zeros(len(flags), hw.SEG_ENTRY)
    for i, f in enumerate(flags):
        table[i] = (SEG_BASE + i * SEG_SPAN, SEG_SPAN, f, 0)
    return table


def ref(seg: int, offset: int, size: int, scaled: bool = False,
        dtype: int = prog.DTYPE.F32) -> tuple[int, int, int, int, int]:
    return (offset, size, seg, dtype, prog.REF_FLAG.SCALED if scaled else 0)


def matmul(m: int = 2, k: int = 4, n: int = 3, bias: bool = True) -> np.void:
    """dst[m,n] (arena, scaled) = input[m,k] (scaled) @ weights[k,n] + bias[n]; m is per batch item."""
    op = np.zeros((), prog.OP)
    op["opcode"], op["act"], op["scale_mask"] = prog.OPCODE.MATMUL, prog.FUNC.RELU, 0b001
    op["flags"] = prog.OP_FLAG.BIAS if bias else 0
    op["dims"][:3] = (m, k, n)
    op["src0"] = ref(prog.SEG_INPUT, 0x40, m * k * 4, scaled=True)
    op["src1"] = ref(prog.SEG_PROGRAM, WEIGHTS, k * n * 4)
    if bias:
        op["src2"] = ref(prog.SEG_PROGRAM, WEIGHTS + 0x1000, n * 4)
    op["dst"] = ref(prog.SEG_ARENA, 0x80, m * n * 4, scaled=True)
    return op[()]


def unary(n: int = 6, func: int = prog.FUNC.TANH) -> np.void:
    """output[n] (scaled) = func(arena[n]) (scaled)."""
    op = np.zeros((), prog.OP)
    op["opcode"], op["scale_mask"] = prog.OPCODE.UNARY, 0b1
    op["dims"][0] = n
    op["params"][0] = func
    op["src0"] = ref(prog.SEG_ARENA, 0x80, n * 4, scaled=True)
    op["dst"] = ref(prog.SEG_OUTPUT, 0, n * 4, scaled=True)
    return op[()]


def f32_bits(x: float) -> int:
    return int(np.array(x, "<f4").view("<u4"))


def pair(lo: int, hi: int) -> int:
    """Two 16-bit fields of a params word (kernel size, stride, padding, dilation): lo | hi << 16."""
    return lo | hi << 16


def conv2d(n: int = 1, h: int = 5, w: int = 5, c: int = 4, oc: int = 6, k: int = 3, stride: int = 1,
           pad: int = 1, dil: int = 1, groups: int = 2, bias: bool = True, residual: bool = False) -> np.void:
    """arena[n,oh,ow,oc] (scaled) = conv(input[n,h,w,c] (scaled), weights) (+ bias) (+ arena residual)."""
    eff = (k - 1) * dil + 1
    oh, ow = (h + 2 * pad - eff) // stride + 1, (w + 2 * pad - eff) // stride + 1
    op = np.zeros((), prog.OP)
    op["opcode"], op["act"], op["scale_mask"] = prog.OPCODE.CONV2D, prog.FUNC.RELU, 0b1
    op["flags"] = (prog.OP_FLAG.BIAS if bias else 0) | (prog.OP_FLAG.RESIDUAL if residual else 0)
    op["dims"] = (n, h, w, c, oh, ow)
    op["params"][:6] = (pair(k, k), oc, pair(stride, stride), pair(pad, pad), pair(dil, dil), groups)
    op["src0"] = ref(prog.SEG_INPUT, 0x40, n * h * w * c * 4, scaled=True)
    op["src1"] = ref(prog.SEG_PROGRAM, WEIGHTS, k * k * (c // groups) * oc * 4)
    if bias:
        op["src2"] = ref(prog.SEG_PROGRAM, WEIGHTS + 0x1000, oc * 4)
    op["dst"] = ref(prog.SEG_ARENA, 0x80, n * oh * ow * oc * 4, scaled=True)
    if residual:
        op["src3"] = ref(prog.SEG_ARENA, 0x2000, n * oh * ow * oc * 4, scaled=True)
    return op[()]


def pool(kind: int = prog.POOL.MAX, n: int = 1, h: int = 6, w: int = 6, c: int = 3, k: int = 2,
         stride: int = 2, pad: int = 0) -> np.void:
    """output[n,oh,ow,c] (scaled) = pool(arena[n,h,w,c] (scaled))."""
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    op = np.zeros((), prog.OP)
    op["opcode"], op["scale_mask"] = prog.OPCODE.POOL, 0b1
    op["dims"] = (n, h, w, c, oh, ow)
    op["params"][:4] = (kind, pair(k, k), pair(stride, stride), pair(pad, pad))
    op["src0"] = ref(prog.SEG_ARENA, 0x80, n * h * w * c * 4, scaled=True)
    op["dst"] = ref(prog.SEG_OUTPUT, 0, n * oh * ow * c * 4, scaled=True)
    return op[()]


def layernorm(r: int = 4, c: int = 8, eps: float = 1e-6) -> np.void:
    """arena[r,c] (scaled) = layernorm(input[r,c] (scaled)) * scale[c] + offset[c]."""
    op = np.zeros((), prog.OP)
    op["opcode"], op["scale_mask"] = prog.OPCODE.LAYERNORM, 0b1
    op["dims"][:2] = (r, c)
    op["params"][0] = f32_bits(eps)
    op["src0"] = ref(prog.SEG_INPUT, 0x40, r * c * 4, scaled=True)
    op["src1"] = ref(prog.SEG_PROGRAM, WEIGHTS, c * 4)
    op["src2"] = ref(prog.SEG_PROGRAM, WEIGHTS + 0x1000, c * 4)
    op["dst"] = ref(prog.SEG_ARENA, 0x80, r * c * 4, scaled=True)
    return op[()]


def bmm(b: int = 2, m: int = 3, k: int = 4, n: int = 5, trans: int = 0, alpha: float = 1.0) -> np.void:
    """arena[b,m,n] (scaled) = alpha * input[b,m,k] @ arena[b,k,n], both runtime tensors (attention)."""
    op = np.zeros((), prog.OP)
    op["opcode"], op["scale_mask"] = prog.OPCODE.BMM, 0b1
    op["dims"][:4] = (b, m, k, n)
    op["params"][:2] = (trans, f32_bits(alpha))
    op["src0"] = ref(prog.SEG_INPUT, 0x40, b * m * k * 4, scaled=True)
    op["src1"] = ref(prog.SEG_ARENA, 0x1000, b * k * n * 4, scaled=True)
    op["dst"] = ref(prog.SEG_ARENA, 0x80, b * m * n * 4, scaled=True)
    return op[()]


def gather(r: int = 5, v: int = 7, d: int = 3) -> np.void:
    """arena[r,d] (scaled) = table[v,d] rows input[r] (I32, scaled)."""
    op = np.zeros((), prog.OP)
    op["opcode"], op["scale_mask"] = prog.OPCODE.GATHER, 0b1
    op["dims"][:3] = (r, v, d)
    op["src0"] = ref(prog.SEG_INPUT, 0x40, r * 4, scaled=True, dtype=prog.DTYPE.I32)
    op["src1"] = ref(prog.SEG_PROGRAM, WEIGHTS, v * d * 4)
    op["dst"] = ref(prog.SEG_ARENA, 0x80, r * d * 4, scaled=True)
    return op[()]


def pack_perm(perm: tuple[int, ...]) -> int:
    return sum(a << 4 * i for i, a in enumerate(perm))


def transpose(shape: tuple[int, ...] = (2, 3, 4), perm: tuple[int, ...] = (0, 2, 1)) -> np.void:
    """output (scaled) = arena[shape] (scaled) with its axes permuted."""
    op = np.zeros((), prog.OP)
    op["opcode"], op["scale_mask"] = prog.OPCODE.TRANSPOSE, 0b1
    op["dims"][:len(shape)] = shape
    op["params"][:2] = (pack_perm(perm), len(shape))
    elems = int(np.prod(shape))
    op["src0"] = ref(prog.SEG_ARENA, 0x80, elems * 4, scaled=True)
    op["dst"] = ref(prog.SEG_OUTPUT, 0, elems * 4, scaled=True)
    return op[()]


def quant(op: np.void, dst_scale: float = 0.0) -> np.void:
    """A MATMUL or CONV2D made int8 (format 1.2): I8 src0/src1, the [2, N] requant table in src2, and an
    I8 dst at dst_scale (F32 when 0). Sizes follow the element counts."""
    op = op.copy()
    n = int(op["dims"][2]) if op["opcode"] == prog.OPCODE.MATMUL else int(op["params"][1])
    op["flags"] = (int(op["flags"]) & ~prog.OP_FLAG.BIAS) | prog.OP_FLAG.QUANT
    for slot in ("src0", "src1"):
        op[slot]["dtype"], op[slot]["size"] = prog.DTYPE.I8, int(op[slot]["size"]) // 4
    op["src2"] = ref(prog.SEG_PROGRAM, WEIGHTS + 0x1000, 2 * n * 4)
    if dst_scale:
        op["params"][7] = f32_bits(dst_scale)
        op["dst"]["dtype"], op["dst"]["size"] = prog.DTYPE.I8, int(op["dst"]["size"]) // 4
    return op


def convert(n: int = 6, direction: int = prog.CONVERT.QUANTIZE, scale: float = 0.5) -> np.void:
    """output[n] (scaled) = arena[n] (scaled) quantized to I8, or dequantized to F32."""
    op = np.zeros((), prog.OP)
    op["opcode"], op["scale_mask"] = prog.OPCODE.CONVERT, 0b1
    op["dims"][0] = n
    op["params"][:2] = (f32_bits(scale), direction)
    i8_src = direction == prog.CONVERT.DEQUANTIZE
    op["src0"] = ref(prog.SEG_ARENA, 0x80, n * (1 if i8_src else 4), scaled=True,
                     dtype=prog.DTYPE.I8 if i8_src else prog.DTYPE.F32)
    op["dst"] = ref(prog.SEG_OUTPUT, 0, n * (4 if i8_src else 1), scaled=True,
                    dtype=prog.DTYPE.F32 if i8_src else prog.DTYPE.I8)
    return op[()]


def job(bus: FirmwareBus, ops: list[np.void] | None = None, batch: int = 1, prog_offset: int = 0,
        table: np.ndarray | None = None, **fields: int) -> np.void:
    """A RUN job (NOP when ops is None) for the next ring slot; writes its ops and segment table.

    Jobs queued together need distinct prog_offsets: each writes its op stream into the one program
    segment."""
    table = seg_table() if table is None else table
    seq = bus.sq_tail
    table_addr = TABLE_BASE + (seq % 16) * 0x100
    bus.host_write(table_addr, table.tobytes())
    e = np.zeros((), hw.SQ_ENTRY)
    e["seq"], e["job_id"] = seq, 0xC0FFEE00_00000000 | seq
    if ops is None:
        e["opcode"] = hw.JOB_OP.NOP
    else:
        if prog_offset + len(ops) * prog.OP_SIZE <= SEG_SPAN:  # else the job is meant to be refused
            bus.host_write(SEG_BASE + prog_offset, b"".join(op.tobytes() for op in ops))
        e["opcode"], e["op_count"] = hw.JOB_OP.RUN, len(ops)
    e["seg_table"], e["seg_count"], e["prog_seg"] = table_addr, len(table), prog.SEG_PROGRAM
    e["prog_offset"], e["batch"] = prog_offset, batch
    for k, v in fields.items():
        e[k] = v
    return e[()]


def mutate(op: np.void, **changes: int) -> np.void:
    """A copy of op with fields changed; `src0__offset` reaches a nested field, `dims__2` an array item."""
    op = op.copy()
    for path, value in changes.items():
        *outer, last = path.split("__")
        target = op
        for name in outer:
            target = target[name]
        if last.isdigit():
            target[int(last)] = value
        else:
            target[last] = value
    return op
