"""Hangs, timeouts, resets and recovery through /dev/flaxnpu0 (guest only; sysfs inject_fault)."""

from __future__ import annotations

import errno
import time

import numpy as np
import pytest
import uapi_lib as u
from flaxnpu_abi import hw, uapi


def hang(ctx: u.Ctx, model: int) -> int:
    (u.SYSFS / "inject_fault").write_text("hang")
    return ctx.execute(model, bytes(64), output_size=64)


def test_inject_fault_refuses_unknown_kinds(guest):
    with pytest.raises(OSError) as e:
        (u.SYSFS / "inject_fault").write_text("explode")
    assert e.value.errno == errno.EINVAL


def test_hung_job_times_out_others_abort_and_the_device_recovers(ctx, other, short_job_timeout):
    model, model2 = ctx.load_relu(16), other.load_relu(16)
    resets = int(u.sysfs("resets"))
    hung = hang(ctx, model)
    queued = other.execute(model2, bytes(64), output_size=64)
    with pytest.raises(OSError) as e:  # WAIT shorter than the job timeout: ETIME, job still in flight
        u.call(ctx.fd, uapi.IOCTL.WAIT, job=hung, timeout_ns=200_000_000)
    assert e.value.errno == errno.ETIME
    t0 = time.monotonic()
    res, out = ctx.retrieve(hung, timeout=60)
    assert int(res["status"]) == hw.STATUS.TIMEOUT and out == b""
    assert time.monotonic() - t0 < 30
    res2, _ = other.retrieve(queued, timeout=60)
    assert int(res2["status"]) == hw.STATUS.ABORTED
    assert int(u.sysfs("resets")) == resets + 1
    # The jobs fail as soon as the reset is acknowledged; the firmware reboot follows within boot_timeout_ms.
    deadline = time.monotonic() + 10
    while u.sysfs("state") != "ready" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert u.sysfs("state") == "ready"
    x = np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16)
    res3, y = ctx.run_relu(model, x)  # the same model runs again after the reboot
    assert int(res3["status"]) == hw.STATUS.OK
    np.testing.assert_array_equal(y, np.maximum(x, 0))


def test_bo_and_model_in_use_by_a_hung_job_are_ebusy(ctx, short_job_timeout):
    model = ctx.load_relu(16)
    bo, _ = u.bo_create(ctx.fd, 4096)
    (u.SYSFS / "inject_fault").write_text("hang")
    job = ctx.execute(model, flags=uapi.EXEC_FLAG.OUTPUT_BO, input_size=64, output_bo=bo, output_size=64,
                      data=bytes(64))
    for request, handle in ((uapi.IOCTL.BO_FREE, bo), (uapi.IOCTL.MODEL_UNLOAD, model)):
        with pytest.raises(OSError) as e:
            u.call(ctx.fd, request, handle=handle)
        assert e.value.errno == errno.EBUSY
    res, _ = ctx.retrieve(job, timeout=60)
    assert int(res["status"]) == hw.STATUS.TIMEOUT
    u.call(ctx.fd, uapi.IOCTL.BO_FREE, handle=bo)  # free once the job left the device
    u.call(ctx.fd, uapi.IOCTL.MODEL_UNLOAD, handle=model)


def test_closing_with_jobs_in_flight(guest, short_job_timeout):
    c = u.Ctx()
    model = c.load_relu(16)
    hang(c, model)
    for _ in range(5):
        c.send(u.execute_record(model, bytes(64), output_size=64))
    u.bo_create(c.fd, 4096)
    c.close()  # jobs keep their buffers until the timeout fires
    time.sleep(short_job_timeout / 1000 + 1.5)
    u.check_a_fresh_context_runs_a_job()


def test_counters_count_failures(ctx):
    failed = int(u.sysfs("jobs_failed"))
    ctx.send(u.load_model_record(bytes(128), 1))
    _, rec = u.read_one(ctx.fd)
    model = int(np.frombuffer(rec, uapi.RESP_MODEL, count=1)[0]["model"])
    res, _ = ctx.retrieve(ctx.execute(model, bytes(64), output_size=64))
    assert int(res["status"]) != hw.STATUS.OK
    assert int(u.sysfs("jobs_failed")) == failed + 1
    info = u.call(ctx.fd, uapi.IOCTL.INFO)
    assert int(info["jobs_failed"]) == failed + 1
