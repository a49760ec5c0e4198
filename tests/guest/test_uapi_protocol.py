"""write()/read() record protocol on /dev/flaxnpu0 (guest only): jobs, responses, malformed records."""

from __future__ import annotations

import errno
import os
import select

import numpy as np
import pytest
import uapi_lib as u
from flaxnpu_abi import hw, uapi


def test_info_reports_device_and_driver(ctx):
    info = u.call(ctx.fd, uapi.IOCTL.INFO)
    assert int(info["uapi_version"]) == uapi.ABI_MAJOR << 16 | uapi.ABI_MINOR
    assert int(info["hw_abi"]) >> 16 == hw.ABI_MAJOR
    assert int(info["state"]) == hw.STATE.READY
    assert int(info["fw_version"]) != 0 and int(info["minor"]) == 0
    assert int(info["max_bo_size"]) == uapi.MAX_BO_SIZE
    assert u.sysfs("state") == "ready"


@pytest.mark.parametrize("batch", [1, 3])
def test_relu_job_inline_input_and_output(ctx, batch):
    model = ctx.load_relu(16)
    x = np.linspace(-4, 4, 16 * batch, dtype=np.float32).reshape(batch, 16)
    done = int(u.sysfs("jobs_done"))
    res, y = ctx.run_relu(model, x)
    assert int(res["status"]) == hw.STATUS.OK and int(res["op_index"]) == hw.OP_NONE
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    assert int(res["device_ns"]) > 0 and int(res["cycles"]) > 0
    assert int(u.sysfs("jobs_done")) == done + 1


def test_relu_job_with_buffer_objects(ctx):
    import mmap
    model = ctx.load_relu(16)
    (ib, ioff), (ob, ooff) = u.bo_create(ctx.fd, 64), u.bo_create(ctx.fd, 64)
    imap = mmap.mmap(ctx.fd, 4096, offset=ioff)
    omap = mmap.mmap(ctx.fd, 4096, offset=ooff)
    x = np.arange(-8, 8, dtype=np.float32)
    imap[:64] = x.tobytes()
    job = ctx.execute(model, flags=uapi.EXEC_FLAG.INPUT_BO | uapi.EXEC_FLAG.OUTPUT_BO, input_size=64,
                      output_size=64, input_bo=ib, output_bo=ob)
    res, out = ctx.retrieve(job)
    assert int(res["status"]) == hw.STATUS.OK and int(res["output_size"]) == 0 and out == b""
    np.testing.assert_array_equal(np.frombuffer(omap[:64], np.float32), np.maximum(x, 0))
    imap.close()
    omap.close()


def test_a_failing_job_reports_the_device_status(ctx):
    # op_count 1 but the op is all zeros: the firmware refuses opcode 0.
    ctx.send(u.load_model_record(bytes(128), 1))
    _, rec = u.read_one(ctx.fd)
    model = int(np.frombuffer(rec, uapi.RESP_MODEL, count=1)[0]["model"])
    job = ctx.execute(model, bytes(64), output_size=64)
    res, out = ctx.retrieve(job)
    assert int(res["status"]) == hw.STATUS.OP_OPCODE and int(res["op_index"]) == 0
    assert out == b""


def test_several_records_in_one_write_and_many_responses_in_one_read(ctx):
    model = ctx.load_relu(16)
    data = np.ones(16, np.float32).tobytes()
    one = u.execute_record(model, data, output_size=64)
    assert ctx.send(one * 3) == 3 * len(one)
    recs = u.split(os.read(ctx.fd, 4096))
    assert [int(h["type"]) for h, _ in recs] == [uapi.RESP.JOB] * 3
    for _, rec in recs:
        res, out = ctx.retrieve(int(np.frombuffer(rec, uapi.RESP_JOB, count=1)[0]["job"]))
        assert int(res["status"]) == hw.STATUS.OK and out == data


def test_nonblocking_read_and_poll(guest):
    c = u.Ctx(os.O_NONBLOCK)
    try:
        with pytest.raises(BlockingIOError):
            os.read(c.fd, 4096)
        p = select.poll()
        p.register(c.fd, select.POLLIN)
        assert p.poll(0) == []
        c.send(u.load_model_record(u.relu_image(4), 1))
        assert p.poll(1000) == [(c.fd, select.POLLIN)]
    finally:
        c.close()


def test_read_buffer_smaller_than_the_record_is_einval_and_keeps_it(ctx):
    model = ctx.load_relu(16)
    job = ctx.execute(model, bytes(64), output_size=64)
    ctx.send(u.retrieve_record(job))
    select.select([ctx.fd], [], [], 60)
    with pytest.raises(OSError) as e:
        os.read(ctx.fd, uapi.RESP_RESULT.itemsize)  # the record also carries 64 output bytes
    assert e.value.errno == errno.EINVAL
    hdr, rec = u.read_one(ctx.fd)
    assert int(hdr["type"]) == uapi.RESP.RESULT and len(rec) == 64 + 64


def test_retrieve_twice_and_unknown_job(ctx):
    model = ctx.load_relu(16)
    job = ctx.execute(model, bytes(64), output_size=64)
    ctx.send(u.retrieve_record(job))
    with pytest.raises(OSError) as e:
        ctx.send(u.retrieve_record(job))
    assert e.value.errno == errno.EALREADY
    u.read_one(ctx.fd)
    for handle in (job, 0, 12345):  # a read result ends the job handle
        with pytest.raises(OSError) as e:
            ctx.send(u.retrieve_record(handle))
        assert e.value.errno == errno.ENOENT


def test_wait_ioctl(ctx):
    model = ctx.load_relu(16)
    job = ctx.execute(model, bytes(64), output_size=64)
    out = u.call(ctx.fd, uapi.IOCTL.WAIT, job=job, timeout_ns=30_000_000_000)
    assert int(out["status"]) == hw.STATUS.OK
    res, _ = ctx.retrieve(job)  # WAIT leaves the result retrievable
    assert int(res["status"]) == hw.STATUS.OK


IMG = u.relu_image(16)
EXE_FIELDS = {"output_size": 64}


def malformed() -> dict[str, bytes]:
    load = u.load_model_record(IMG, 1)
    return {
        "short header": load[:8],
        "partial record": load[:-8],
        "size not aligned": u.load_model_record(IMG, 1, size=len(load) - 4),
        "size below the header": u.record(uapi.CMD_RETRIEVE, type=uapi.CMD.RETRIEVE, size=8),
        "unknown type": u.record(uapi.CMD_RETRIEVE, type=0x7f),
        "response type": u.record(uapi.CMD_RETRIEVE, type=uapi.RESP.RESULT),
        "load flags": u.load_model_record(IMG, 1, flags=1),
        "load reserved": u.load_model_record(IMG, 1, reserved=1),
        "op_count zero": u.load_model_record(IMG, 0),
        "op stream beyond image": u.load_model_record(IMG, 2),
        "image_size vs record size": u.load_model_record(IMG, 1, image_size=64),
        "empty image": u.load_model_record(b"", 1),
        "retrieve flags": u.retrieve_record(1, flags=1),
        "retrieve reserved": u.retrieve_record(1, reserved=1),
        "retrieve with payload": u.record(uapi.CMD_RETRIEVE, bytes(8), type=uapi.CMD.RETRIEVE, job=1),
    }


@pytest.mark.parametrize("name", list(malformed()))
def test_malformed_record_is_einval_and_queues_nothing(guest, name):
    c = u.Ctx(os.O_NONBLOCK)
    try:
        with pytest.raises(OSError) as e:
            c.send(malformed()[name])
        assert e.value.errno == errno.EINVAL, name
        with pytest.raises(BlockingIOError):
            os.read(c.fd, 4096)
    finally:
        c.close()


@pytest.mark.parametrize("fields,err", [
    ({"batch": 0}, errno.EINVAL),
    ({"flags": 0x8}, errno.EINVAL),
    ({"reserved": 1}, errno.EINVAL),
    ({"first_op": 1}, errno.EINVAL),  # an op range without EXEC_FLAG_OP_RANGE (test_uapi_op_range.py)
    ({"input_bo": 1}, errno.EINVAL),  # a BO handle without EXEC_FLAG_INPUT_BO
    ({"output_size": uapi.MAX_BO_SIZE + 1}, errno.EINVAL),
    ({"input_size": 128}, errno.EINVAL),  # payload shorter than input_size
    ({"model": 999}, errno.ENOENT),
    ({"flags": uapi.EXEC_FLAG.OUTPUT_BO, "output_bo": 999}, errno.ENOENT),
])
def test_bad_execute_is_refused(ctx, fields, err):
    model = ctx.load_relu(16)
    fields = {"model": model, "output_size": 64, **fields}
    with pytest.raises(OSError) as e:
        ctx.send(u.execute_record(fields.pop("model"), bytes(64), **fields))
    assert e.value.errno == err
    os.set_blocking(ctx.fd, False)
    with pytest.raises(BlockingIOError):
        os.read(ctx.fd, 4096)


def test_good_records_before_a_bad_one_are_a_short_write(ctx):
    good = u.load_model_record(IMG, 1)
    assert ctx.send(good + u.load_model_record(IMG, 0)) == len(good)
    hdr, _ = u.read_one(ctx.fd)
    assert int(hdr["type"]) == uapi.RESP.MODEL


def test_jobs_per_context_are_limited(ctx):
    model = ctx.load_relu(16)
    rec = u.execute_record(model, bytes(64), output_size=64)
    for _ in range(uapi.MAX_JOBS):
        ctx.send(rec)
    with pytest.raises(OSError) as e:
        ctx.send(rec)
    assert e.value.errno == errno.EBUSY
