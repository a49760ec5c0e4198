"""Helpers for the driver's guest tests (tests/guest/test_uapi_*.py): records, ioctls and a tiny program.

Everything is built from the generated dtypes in flaxnpu_abi.uapi / hw / prog, so a contract change shows
up here without retyping a struct.
"""

from __future__ import annotations

import fcntl
import os
import select
import subprocess
from pathlib import Path

import numpy as np
from flaxnpu_abi import hw, prog, uapi

DEV = "/dev/flaxnpu0"
SYSFS = Path("/sys/class/flaxnpu/flaxnpu0")
PARAMS = Path("/sys/module/flaxnpu/parameters")
KO = Path(__file__).resolve().parents[2] / "driver" / "flaxnpu.ko"
ALIGN = uapi.RECORD_ALIGN
BAD_KERNEL_LINES = ("WARNING:", "BUG:", "Oops", "general protection", "list_add corruption",
                    "list_del corruption", "hung_task", "soft lockup", "INFO: task", "UBSAN", "refcount_t:")


def pad(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def record(dtype: np.dtype, payload: bytes = b"", **fields: int) -> bytes:
    """A command record: hdr.size covers the payload padded to RECORD_ALIGN unless `size` is given."""
    rec = np.zeros((), dtype)
    rec["hdr"]["size"] = fields.pop("size", dtype.itemsize + pad(len(payload)))
    rec["hdr"]["tag"] = fields.pop("tag", 0)
    rec["hdr"]["type"] = fields.pop("type")
    for name, value in fields.items():
        rec[name] = value
    return rec.tobytes() + payload + bytes(pad(len(payload)) - len(payload))


def load_model_record(image: bytes, op_count: int, **fields: int) -> bytes:
    fields.setdefault("image_size", len(image))
    return record(uapi.CMD_LOAD_MODEL, image, type=uapi.CMD.LOAD_MODEL, op_count=op_count, **fields)


def execute_record(model: int, data: bytes = b"", *, batch: int = 1, output_size: int = 0, **fields: int) -> bytes:
    fields.setdefault("input_size", len(data))
    return record(uapi.CMD_EXECUTE, data, type=uapi.CMD.EXECUTE, model=model, batch=batch, output_size=output_size,
                  **fields)


def retrieve_record(job: int, **fields: int) -> bytes:
    return record(uapi.CMD_RETRIEVE, type=uapi.CMD.RETRIEVE, job=job, **fields)


def split(data: bytes) -> list[tuple[np.void, bytes]]:
    """Response records in one read(): (header, whole record bytes)."""
    out, off = [], 0
    while off < len(data):
        hdr = np.frombuffer(data, uapi.CMD_HDR, count=1, offset=off)[0]
        size = int(hdr["size"])
        assert size >= uapi.CMD_HDR.itemsize and size % ALIGN == 0 and off + size <= len(data), f"bad record {hdr}"
        out.append((hdr, data[off:off + size]))
        off += size
    return out


def read_one(fd: int, size: int = 1 << 16, timeout: float = 60.0) -> tuple[np.void, bytes]:
    r, _, _ = select.select([fd], [], [], timeout)
    assert r, f"no response within {timeout} s"
    recs = split(os.read(fd, size))
    assert len(recs) == 1, f"expected one record, got {len(recs)}"
    return recs[0]


def ioctl(fd: int, request: uapi.IOCTL, buf: bytes | bytearray | np.ndarray) -> bytearray:
    data = bytearray(buf.tobytes() if isinstance(buf, np.ndarray) else buf)
    fcntl.ioctl(fd, request, data)
    return data


def arg(request: uapi.IOCTL, **fields: int) -> np.ndarray:
    dtype = uapi.IOCTL_STRUCT[request]
    a = np.zeros((), dtype)
    a["size"] = dtype.itemsize
    for name, value in fields.items():
        a[name] = value
    return a


def call(fd: int, request: uapi.IOCTL, **fields: int) -> np.void:
    a = arg(request, **fields)
    return np.frombuffer(ioctl(fd, request, a), a.dtype, count=1)[0]


def bo_create(fd: int, size: int) -> tuple[int, int]:
    out = call(fd, uapi.IOCTL.BO_CREATE, bo_size=size)
    return int(out["handle"]), int(out["mmap_offset"])


def unary_op(n: int, func: int, src: int, dst: int) -> bytes:
    """One UNARY op: dst[b, :n] = func(src[b, :n]) per batch item (dims[0] and both refs scaled), at
    offset 0 of segments src and dst."""
    op = np.zeros((), prog.OP)
    op["opcode"] = prog.OPCODE.UNARY
    op["act"] = prog.FUNC.NONE
    op["scale_mask"] = 1
    op["dims"][0] = n
    op["params"][0] = func
    for ref, seg in (("src0", src), ("dst", dst)):
        op[ref]["seg"], op[ref]["size"] = seg, n * 4
        op[ref]["dtype"], op[ref]["flags"] = prog.DTYPE.F32, prog.REF_FLAG.SCALED
    return op.tobytes()


def relu_image(n: int) -> bytes:
    """output[b, :n] = relu(input[b, :n])."""
    return unary_op(n, prog.FUNC.RELU, prog.SEG_INPUT, prog.SEG_OUTPUT)


def chain_image(n: int) -> bytes:
    """Two ops through the arena: op 0 arena = relu(input), op 1 output = -arena."""
    return (unary_op(n, prog.FUNC.RELU, prog.SEG_INPUT, prog.SEG_ARENA)
            + unary_op(n, prog.FUNC.NEG, prog.SEG_ARENA, prog.SEG_OUTPUT))


class Ctx:
    """One open file on the NPU with the record protocol; close() is idempotent."""

    def __init__(self, flags: int = 0) -> None:
        self.fd = os.open(DEV, os.O_RDWR | flags)

    def send(self, data: bytes) -> int:
        return os.write(self.fd, data)

    def load_relu(self, n: int = 16) -> int:
        return self.load(relu_image(n), 1)

    def load(self, image: bytes, op_count: int) -> int:
        self.send(load_model_record(image, op_count, tag=7))
        hdr, rec = read_one(self.fd)
        assert int(hdr["type"]) == uapi.RESP.MODEL and int(hdr["tag"]) == 7
        return int(np.frombuffer(rec, uapi.RESP_MODEL, count=1)[0]["model"])

    def execute(self, model: int, data: bytes = b"", **kw: int) -> int:
        self.send(execute_record(model, data, **kw))
        hdr, rec = read_one(self.fd)
        assert int(hdr["type"]) == uapi.RESP.JOB, hdr
        return int(np.frombuffer(rec, uapi.RESP_JOB, count=1)[0]["job"])

    def retrieve(self, job: int, timeout: float = 60.0) -> tuple[np.void, bytes]:
        self.send(retrieve_record(job, tag=job + 1000))
        hdr, rec = read_one(self.fd, timeout=timeout)
        assert int(hdr["type"]) == uapi.RESP.RESULT and int(hdr["tag"]) == job + 1000, hdr
        res = np.frombuffer(rec, uapi.RESP_RESULT, count=1)[0]
        return res, rec[uapi.RESP_RESULT.itemsize:uapi.RESP_RESULT.itemsize + int(res["output_size"])]

    def run_relu(self, model: int, x: np.ndarray) -> tuple[np.void, np.ndarray]:
        data = x.astype(np.float32).tobytes()
        job = self.execute(model, data, batch=x.shape[0], output_size=len(data))
        res, out = self.retrieve(job)
        return res, np.frombuffer(out, np.float32).reshape(x.shape) if out else np.empty(0)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def check_a_fresh_context_runs_a_job() -> None:
    """After a reset, reload or rebind: a new context loads a model and its job completes OK."""
    c = Ctx()
    try:
        res, _ = c.run_relu(c.load_relu(16), np.ones((1, 16), np.float32))
        assert int(res["status"]) == hw.STATUS.OK
    finally:
        c.close()


def sysfs(name: str) -> str:
    return (SYSFS / name).read_text().strip()


def kernel_problems() -> list[str]:
    log = subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout
    return [ln for ln in log.splitlines() if any(b in ln for b in BAD_KERNEL_LINES)]


def ok_status() -> int:
    return int(hw.STATUS.OK)
