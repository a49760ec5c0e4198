"""Kernel backend: /dev/flaxnpuN through driver/flaxnpu.ko (contract 3, docs/uapi.md).

Commands are written as records (LOAD_MODEL, EXECUTE, RETRIEVE) and answered by response records on
read(); inputs, outputs and the arena live in buffer objects mapped into this process, so a call copies the
input once into device-visible memory and reads the output straight out of it. A program with host (CPU)
segments runs each device segment as one job over its op range (EXEC_FLAG_OP_RANGE) and each host
segment on the mapped arena, input and output in between.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import select
from typing import TYPE_CHECKING, Any

import numpy as np
from flaxnpu_abi import hw, prog, uapi

from ..errors import DeviceError, DeviceTimeout, JobError
from . import host
from .batching import BatchedModel
from .device import Device
from .udriver import status_text

if TYPE_CHECKING:
    from ..program import Program

ALIGN = uapi.RECORD_ALIGN


def _pad(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _open_error(path: str, e: OSError) -> DeviceError:
    if e.errno == errno.ENOENT:
        return DeviceError(f"{path} does not exist: load the driver (insmod driver/flaxnpu.ko) or, with no NPU, "
                           "run under `flaxnpu vm` or use open('sim')")
    if e.errno == errno.EACCES:
        return DeviceError(f"permission denied on {path}: add yourself to the flaxnpu group "
                           "(usermod -aG flaxnpu $USER) and install driver/99-flaxnpu.rules in /etc/udev/rules.d")
    return DeviceError(f"cannot open {path}: {e.strerror}")


# UAPI minor that added EXEC_FLAG_OP_RANGE, which programs with host segments need.
OP_RANGE_MINOR = 1

# The driver answers RETRIEVE when the job completes or its own job timeout (10 s by default) fails it, so a
# response later than this means the driver itself is stuck.
RESPONSE_TIMEOUT = 120.0


class Channel:
    """The record protocol on one open file: send a command, receive the response with its tag."""

    def __init__(self, fd: int, timeout: float = RESPONSE_TIMEOUT) -> None:
        self.fd = fd
        self.timeout = timeout
        self._tag = 0
        self._pending: dict[int, bytes] = {}

    def send(self, record: np.ndarray, payload: bytes | memoryview = b"") -> int:
        self._tag += 1
        record = record.copy()
        record["hdr"]["size"] = record.dtype.itemsize + _pad(len(payload))
        record["hdr"]["tag"] = self._tag
        data = record.tobytes() + bytes(payload) + bytes(_pad(len(payload)) - len(payload))
        try:
            written = os.write(self.fd, data)
        except OSError as e:
            raise DeviceError(f"driver refused a {uapi.CMD(int(record['hdr']['type'])).name} command: "
                              f"{errno.errorcode.get(e.errno, e.errno)} ({e.strerror})") from None
        if written != len(data):
            raise DeviceError(f"driver took {written} of {len(data)} bytes of a command record")
        return self._tag

    def receive(self, tag: int, max_payload: int = 0) -> bytes:
        while tag not in self._pending:
            if not select.select([self.fd], [], [], self.timeout)[0]:
                raise DeviceTimeout(f"the driver sent no response within {self.timeout:.0f} s (dmesg may say why)")
            try:
                data = os.read(self.fd, 256 + _pad(max_payload))
            except OSError as e:
                raise DeviceError(f"reading a response failed: {e.strerror}") from None
            off = 0
            while off + uapi.CMD_HDR.itemsize <= len(data):
                hdr = np.frombuffer(data, uapi.CMD_HDR, count=1, offset=off)[0]
                size = int(hdr["size"])
                if size < uapi.CMD_HDR.itemsize or off + size > len(data):
                    raise DeviceError(f"driver returned a malformed response record (size {size})")
                self._pending[int(hdr["tag"])] = data[off:off + size]
                off += size
        return self._pending.pop(tag)


class KernelModel(BatchedModel):
    """A program loaded through the kernel driver; called like the in-process LoadedModel."""

    def __init__(self, dev: KernelDevice, program: Program, max_batch: int | None) -> None:
        self.dev = dev
        super().__init__(program, max_batch)
        self._check_caps(int(dev._info()["caps"]), dev.path)
        self._segments = host.plan(program)  # imports jax only when the program has host segments
        if any(s.kind == "npu" and (s.first, s.last) != (0, program.op_count) for s in self._segments):
            dev.require_uapi_minor(OP_RANGE_MINOR, "this program runs part of the model on the CPU (host "
                                   "segments), so its device parts run as op ranges (EXEC_FLAG_OP_RANGE)")
        cmd = np.zeros((), uapi.CMD_LOAD_MODEL)
        cmd["hdr"]["type"] = uapi.CMD.LOAD_MODEL
        cmd["image_size"], cmd["op_count"] = len(program.image), program.op_count
        resp = dev.chan.receive(dev.chan.send(cmd, program.image))
        self.handle = int(np.frombuffer(resp, uapi.RESP_MODEL, count=1)[0]["model"])
        self._in_bo, self._in_map = dev.bo(max(self._in_item * self.max_batch, 1))
        self._out_bo, self._out_map = dev.bo(max(self._out_item * self.max_batch, 1))
        # The arena is a mapped BO too: host segments read and write it between the jobs.
        self._arena_bo, self._arena_map = dev.bo(max(self._arena_item * self.max_batch, 1))
        self._views = {prog.SEG_ARENA: memoryview(self._arena_map), prog.SEG_INPUT: memoryview(self._in_map),
                       prog.SEG_OUTPUT: memoryview(self._out_map)}
        self.last_device_ns = 0

    def _run_chunk(self, xs: list[np.ndarray], ys: list[np.ndarray], n: int) -> None:
        for x, spec in zip(xs, self.inputs, strict=True):
            self._in_map[spec.offset * n:(spec.offset + spec.size) * n] = x.reshape(-1).view(np.uint8)
        for seg in self._segments:  # one device job, or jobs with host segments between them
            if seg.kind == "cpu":
                host.run(seg, self._views, n)
            else:
                self._run_job(seg.first, seg.last, n)
        out = np.frombuffer(self._out_map, np.uint8, count=self._out_item * n)
        for y, spec in zip(ys, self.outputs, strict=True):
            y.reshape(-1).view(np.uint8)[:] = out[spec.offset * n:(spec.offset + spec.size) * n]

    def _run_job(self, first: int, last: int, n: int) -> None:
        """One EXECUTE over ops [first, last) of the model, and its RETRIEVE."""
        cmd = np.zeros((), uapi.CMD_EXECUTE)
        cmd["hdr"]["type"] = uapi.CMD.EXECUTE
        cmd["model"], cmd["batch"] = self.handle, n
        flags = uapi.EXEC_FLAG.INPUT_BO | uapi.EXEC_FLAG.OUTPUT_BO | uapi.EXEC_FLAG.ARENA_BO
        if (first, last) != (0, self.program.op_count):  # a whole-program job works with UAPI 1.0 drivers too
            flags |= uapi.EXEC_FLAG.OP_RANGE
            cmd["first_op"], cmd["op_count"] = first, last - first
        cmd["flags"] = flags
        cmd["input_size"] = max(self._in_item * n, prog.ALIGN)
        cmd["output_size"] = max(self._out_item * n, prog.ALIGN)
        cmd["arena_size"] = max(self._arena_item * n, prog.ALIGN)
        cmd["input_bo"], cmd["output_bo"], cmd["arena_bo"] = self._in_bo, self._out_bo, self._arena_bo
        chan = self.dev.chan
        job = int(np.frombuffer(chan.receive(chan.send(cmd)), uapi.RESP_JOB, count=1)[0]["job"])
        ret = np.zeros((), uapi.CMD_RETRIEVE)
        ret["hdr"]["type"], ret["job"] = uapi.CMD.RETRIEVE, job
        res = np.frombuffer(chan.receive(chan.send(ret)), uapi.RESP_RESULT, count=1)[0]
        status = int(res["status"])
        if status == hw.STATUS.TIMEOUT:
            raise DeviceTimeout(f"job timed out: {status_text(status)}; the driver reset the device (dmesg)")
        if status != hw.STATUS.OK:
            op = int(res["op_index"])  # the driver reports it as an index into the whole op stream
            op_index = None if op == hw.OP_NONE else op
            where = "" if op_index is None else f" at op {op_index}"
            msg = f"job failed{where}: {status_text(status)}, info 0x{int(res['info']):x}"
            raise self._explain(JobError(msg, status, op_index, int(res["info"])))
        self.last_cycles += int(res["cycles"])
        self.last_device_ns += int(res["device_ns"])

    def __call__(self, *xs: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        self.last_device_ns = 0
        return super().__call__(*xs)

    def unload(self) -> None:
        arg = np.zeros((), uapi.MODEL_UNLOAD)
        arg["size"], arg["handle"] = uapi.MODEL_UNLOAD.itemsize, self.handle
        self.dev.ioctl(uapi.IOCTL.MODEL_UNLOAD, arg)
        for view in self._views.values():
            view.release()
        for bo, m in ((self._in_bo, self._in_map), (self._out_bo, self._out_map),
                      (self._arena_bo, self._arena_map)):
            m.close()
            self.dev.bo_free(bo)


class KernelDevice(Device):
    name = "kernel"

    def __init__(self, path: str = "/dev/flaxnpu0") -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise _open_error(path, e) from None
        self.chan = Channel(self.fd)
        self._models: list[KernelModel] = []
        self.name = os.path.basename(path)
        self.uapi_version = int(self._info()["uapi_version"])

    def require_uapi_minor(self, minor: int, why: str) -> None:
        major, have = self.uapi_version >> 16, self.uapi_version & 0xFFFF
        if major != uapi.ABI_MAJOR or have < minor:
            raise DeviceError(f"{why}, which needs UAPI {uapi.ABI_MAJOR}.{minor}; the driver behind {self.path} "
                              f"speaks {major}.{have}: load this checkout's driver (insmod driver/flaxnpu.ko)")

    def ioctl(self, request: int, arg: np.ndarray) -> np.ndarray:
        buf = bytearray(arg.tobytes())
        try:
            fcntl.ioctl(self.fd, request, buf)
        except OSError as e:
            raise DeviceError(f"{uapi.IOCTL(request).name} failed on {self.path}: "
                              f"{errno.errorcode.get(e.errno, e.errno)} ({e.strerror})") from None
        return np.frombuffer(bytes(buf), arg.dtype, count=1)[0]

    def bo(self, size: int) -> tuple[int, mmap.mmap]:
        arg = np.zeros((), uapi.BO_CREATE)
        arg["size"], arg["bo_size"] = uapi.BO_CREATE.itemsize, size
        out = self.ioctl(uapi.IOCTL.BO_CREATE, arg)
        length = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
        return int(out["handle"]), mmap.mmap(self.fd, length, offset=int(out["mmap_offset"]))

    def bo_free(self, handle: int) -> None:
        arg = np.zeros((), uapi.BO_FREE)
        arg["size"], arg["handle"] = uapi.BO_FREE.itemsize, handle
        self.ioctl(uapi.IOCTL.BO_FREE, arg)

    def load(self, program: Program, *, max_batch: int | None = None) -> KernelModel:
        model = KernelModel(self, program, max_batch)
        self._models.append(model)
        return model

    def _info(self) -> np.ndarray:
        arg = np.zeros((), uapi.INFO)
        arg["size"] = uapi.INFO.itemsize
        return self.ioctl(uapi.IOCTL.INFO, arg)

    def info(self) -> dict[str, Any]:
        out = self._info()
        v = int(out["fw_version"])
        try:
            state = hw.STATE(int(out["state"])).name
        except ValueError:
            state = f"invalid {int(out['state'])}"
        return {"name": self.name, "state": state, "firmware": f"{v >> 16}.{v >> 8 & 0xFF}.{v & 0xFF}",
                "jobs_done": int(out["jobs_done"]), "jobs_failed": int(out["jobs_failed"]),
                "resets": int(out["resets"]), "cycles": int(out["cycles"])}

    def close(self) -> None:
        for m in self._models:
            try:
                m.unload()
            except DeviceError:
                pass  # the file close below releases whatever the driver still holds
        self._models.clear()
        os.close(self.fd)
