"""ioctl argument checks on /dev/flaxnpu0 (guest only): size versioning, reserved fields, flags, handles."""

from __future__ import annotations

import errno
import fcntl

import numpy as np
import pytest
import uapi_lib as u
from flaxnpu_abi import uapi

ALL = list(uapi.IOCTL)


def errno_of(fd: int, request: int, buf: bytes | bytearray) -> int:
    with pytest.raises(OSError) as e:
        fcntl.ioctl(fd, request, bytearray(buf))
    return e.value.errno


@pytest.mark.parametrize("request_", ALL, ids=lambda r: r.name)
def test_size_below_v1_is_einval(ctx, request_):
    a = u.arg(request_)
    a["size"] = a.dtype.itemsize - 4
    assert errno_of(ctx.fd, request_, a.tobytes()) == errno.EINVAL


@pytest.mark.parametrize("request_", ALL, ids=lambda r: r.name)
def test_larger_size_needs_zero_tail(ctx, request_):
    a = u.arg(request_)
    a["size"] = a.dtype.itemsize + 8
    assert errno_of(ctx.fd, request_, a.tobytes() + b"\0" * 7 + b"\1") == errno.E2BIG


def test_larger_size_with_zero_tail_works(ctx):
    a = u.arg(uapi.IOCTL.INFO)
    a["size"] = a.dtype.itemsize + 16
    out = u.ioctl(ctx.fd, uapi.IOCTL.INFO, a.tobytes() + bytes(16))
    info = np.frombuffer(out, uapi.INFO, count=1)[0]
    assert int(info["uapi_version"]) >> 16 == uapi.ABI_MAJOR
    assert out[uapi.INFO.itemsize:] == bytes(16)


def test_unknown_ioctl_is_enotty(ctx):
    for request in (uapi.IOCTL.INFO + 0x10, 0xc0204e7f, 0xc0205800, uapi.IOCTL.BO_FREE | 0x80000000):
        assert errno_of(ctx.fd, request, bytes(128)) == errno.ENOTTY


@pytest.mark.parametrize("request_,field", [
    (uapi.IOCTL.INFO, "flags"), (uapi.IOCTL.INFO, "reserved1"), (uapi.IOCTL.BO_CREATE, "flags"),
    (uapi.IOCTL.BO_CREATE, "reserved"), (uapi.IOCTL.BO_FREE, "reserved"), (uapi.IOCTL.MODEL_UNLOAD, "reserved"),
    (uapi.IOCTL.WAIT, "flags"), (uapi.IOCTL.WAIT, "reserved"),
], ids=str)
def test_reserved_or_flags_nonzero_is_einval(ctx, request_, field):
    a = u.arg(request_, **({"bo_size": 4096} if request_ == uapi.IOCTL.BO_CREATE else {}))
    a[field] = 1
    assert errno_of(ctx.fd, request_, a.tobytes()) == errno.EINVAL


@pytest.mark.parametrize("size", [0, uapi.MAX_BO_SIZE + 1, 1 << 40])
def test_bo_size_out_of_range_is_einval(ctx, size):
    assert errno_of(ctx.fd, uapi.IOCTL.BO_CREATE, u.arg(uapi.IOCTL.BO_CREATE, bo_size=size).tobytes()) == errno.EINVAL


@pytest.mark.parametrize("request_,field", [
    (uapi.IOCTL.BO_FREE, "handle"), (uapi.IOCTL.MODEL_UNLOAD, "handle"), (uapi.IOCTL.WAIT, "job"),
], ids=str)
def test_bad_handle_is_enoent(ctx, request_, field):
    for handle in (0, 1, 0xFFFFFFFF):
        assert errno_of(ctx.fd, request_, u.arg(request_, **{field: handle}).tobytes()) == errno.ENOENT


def test_another_contexts_handles_are_enoent(ctx, other):
    # Handles are numbered per context: other's third BO/model has a number ctx never handed out.
    bo = [u.bo_create(other.fd, 4096)[0] for _ in range(3)][-1]
    model = [other.load_relu(16) for _ in range(3)][-1]
    job = [other.execute(model, bytes(64), output_size=64) for _ in range(3)][-1]
    own_model = ctx.load_relu(16)
    assert own_model < model
    assert errno_of(ctx.fd, uapi.IOCTL.BO_FREE, u.arg(uapi.IOCTL.BO_FREE, handle=bo).tobytes()) == errno.ENOENT
    assert errno_of(ctx.fd, uapi.IOCTL.MODEL_UNLOAD,
                    u.arg(uapi.IOCTL.MODEL_UNLOAD, handle=model).tobytes()) == errno.ENOENT
    assert errno_of(ctx.fd, uapi.IOCTL.WAIT, u.arg(uapi.IOCTL.WAIT, job=job).tobytes()) == errno.ENOENT
    for rec in (u.retrieve_record(job), u.execute_record(model, bytes(64), output_size=64),
                u.execute_record(own_model, flags=uapi.EXEC_FLAG.INPUT_BO, input_size=64, input_bo=bo,
                                 output_size=64)):
        with pytest.raises(OSError) as e:
            ctx.send(rec)
        assert e.value.errno == errno.ENOENT
    res, _ = other.retrieve(job)  # the owner still sees everything
    assert int(res["status"]) == 0
    u.call(other.fd, uapi.IOCTL.BO_FREE, handle=bo)
    u.call(other.fd, uapi.IOCTL.MODEL_UNLOAD, handle=model)


def test_free_and_unload_then_handles_are_gone(ctx):
    bo, _ = u.bo_create(ctx.fd, 1)
    model = ctx.load_relu(4)
    u.call(ctx.fd, uapi.IOCTL.BO_FREE, handle=bo)
    u.call(ctx.fd, uapi.IOCTL.MODEL_UNLOAD, handle=model)
    assert errno_of(ctx.fd, uapi.IOCTL.BO_FREE, u.arg(uapi.IOCTL.BO_FREE, handle=bo).tobytes()) == errno.ENOENT
    with pytest.raises(OSError) as e:
        ctx.send(u.execute_record(model, bytes(16), output_size=16))
    assert e.value.errno == errno.ENOENT


def test_bo_too_small_for_the_segment_is_einval(ctx):
    model = ctx.load_relu(16)
    bo, _ = u.bo_create(ctx.fd, 4096)
    with pytest.raises(OSError) as e:
        ctx.send(u.execute_record(model, flags=uapi.EXEC_FLAG.INPUT_BO, input_size=8192, input_bo=bo, output_size=64))
    assert e.value.errno == errno.EINVAL


def test_wait_zero_timeout_polls(ctx):
    model = ctx.load_relu(16)
    job = ctx.execute(model, bytes(64), output_size=64)
    out = u.call(ctx.fd, uapi.IOCTL.WAIT, job=job, timeout_ns=60_000_000_000)
    assert int(out["status"]) == 0
    assert int(u.call(ctx.fd, uapi.IOCTL.WAIT, job=job, timeout_ns=0)["status"]) == 0
