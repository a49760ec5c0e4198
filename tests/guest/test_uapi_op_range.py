"""EXEC_FLAG_OP_RANGE on /dev/flaxnpu0 (guest only): a job runs ops [first_op, first_op + op_count) of its
model, so a program with host (CPU) segments runs its device segments as jobs over one loaded model, with
the arena an mmap'd buffer object that the host reads and writes between them; bad ranges are refused."""

from __future__ import annotations

import errno
import mmap
import os

import numpy as np
import pytest
import uapi_lib as u
from flaxnpu_abi import hw, prog, uapi

N = 16
BATCH = 3
SIZE = N * 4 * BATCH
BOS = uapi.EXEC_FLAG.INPUT_BO | uapi.EXEC_FLAG.OUTPUT_BO | uapi.EXEC_FLAG.ARENA_BO


class Chain:
    """The two-op chain image (arena = relu(input); output = -arena) with mapped input, output and arena."""

    def __init__(self, ctx: u.Ctx, image: bytes | None = None) -> None:
        self.ctx = ctx
        self.model = ctx.load(image or u.chain_image(N), 2)
        self.bos, self.maps = [], []
        for _ in range(3):
            handle, off = u.bo_create(ctx.fd, SIZE)
            self.bos.append(handle)
            self.maps.append(mmap.mmap(ctx.fd, mmap.PAGESIZE, offset=off))
        self.input, self.output, self.arena = (np.frombuffer(m, np.float32, count=N * BATCH) for m in self.maps)

    def fields(self, **kw: int) -> dict[str, int]:
        return {"flags": BOS, "batch": BATCH, "input_size": SIZE, "output_size": SIZE, "arena_size": SIZE,
                "input_bo": self.bos[0], "output_bo": self.bos[1], "arena_bo": self.bos[2], **kw}

    def run(self, **kw: int) -> np.void:
        res, _ = self.ctx.retrieve(self.ctx.execute(self.model, **self.fields(**kw)))
        return res

    def close(self) -> None:
        del self.input, self.output, self.arena
        for m in self.maps:
            m.close()


@pytest.fixture
def chain(ctx):
    c = Chain(ctx)
    yield c
    c.close()


def test_ranges_run_part_of_the_model_and_the_arena_stays_between_jobs(chain):
    x = np.linspace(-3, 3, N * BATCH, dtype=np.float32)
    chain.input[:] = x
    chain.output[:] = 7.0
    res = chain.run(flags=BOS | uapi.EXEC_FLAG.OP_RANGE, first_op=0, op_count=1)
    assert int(res["status"]) == hw.STATUS.OK
    np.testing.assert_array_equal(chain.arena, np.maximum(x, 0))
    assert (chain.output == 7.0).all()  # op 1 did not run
    chain.arena[:] *= 2  # what a host segment does between two device segments
    res = chain.run(flags=BOS | uapi.EXEC_FLAG.OP_RANGE, first_op=1, op_count=1)
    assert int(res["status"]) == hw.STATUS.OK
    np.testing.assert_array_equal(chain.output, -2 * np.maximum(x, 0))
    res = chain.run()  # no flag: the whole op stream, as before UAPI 1.1
    assert int(res["status"]) == hw.STATUS.OK
    np.testing.assert_array_equal(chain.output, -np.maximum(x, 0))


def test_a_range_covering_the_model_is_the_whole_model(chain):
    x = np.arange(N * BATCH, dtype=np.float32) - 20
    chain.input[:] = x
    res = chain.run(flags=BOS | uapi.EXEC_FLAG.OP_RANGE, first_op=0, op_count=2)
    assert int(res["status"]) == hw.STATUS.OK
    np.testing.assert_array_equal(chain.output, -np.maximum(x, 0))


def test_a_failing_op_is_named_by_its_index_in_the_model(ctx):
    # op 1 is all zeros: the firmware refuses opcode 0, at index 0 of the job's range.
    c = Chain(ctx, u.relu_image(N) + bytes(prog.OP_SIZE))
    try:
        res = c.run(flags=BOS | uapi.EXEC_FLAG.OP_RANGE, first_op=1, op_count=1)
        assert int(res["status"]) == hw.STATUS.OP_OPCODE and int(res["op_index"]) == 1
        res = c.run(flags=BOS | uapi.EXEC_FLAG.OP_RANGE, first_op=0, op_count=1)
        assert int(res["status"]) == hw.STATUS.OK and int(res["op_index"]) == hw.OP_NONE
        res = c.run()
        assert int(res["status"]) == hw.STATUS.OP_OPCODE and int(res["op_index"]) == 1
    finally:
        c.close()


R = uapi.EXEC_FLAG.OP_RANGE


@pytest.mark.parametrize("fields", [
    {"flags": BOS | R, "first_op": 0, "op_count": 0},           # an empty range
    {"flags": BOS | R, "first_op": 2, "op_count": 1},           # starts at the end of the op stream
    {"flags": BOS | R, "first_op": 1, "op_count": 2},           # ends past it
    {"flags": BOS | R, "first_op": 0, "op_count": 3},
    {"flags": BOS | R, "first_op": 1, "op_count": 0xFFFFFFFF},  # first_op + op_count wraps in 32 bits
    {"flags": BOS | R, "first_op": 0xFFFFFFFF, "op_count": 1},
    {"flags": BOS, "first_op": 1},                              # a range without the flag
    {"flags": BOS, "op_count": 1},
    {"flags": BOS | R, "first_op": 0, "op_count": 1, "reserved": 1},
    {"flags": uapi.EXEC_FLAG.NOP | R, "first_op": 0, "op_count": 1, "model": 0, "batch": 1, "input_size": 0,
     "output_size": 0, "arena_size": 0, "input_bo": 0, "output_bo": 0, "arena_bo": 0},
    {"flags": 0x20 | BOS},                                       # the next flag is still unknown
], ids=["empty", "at-end", "past-end", "past-end-whole", "wraps", "first-huge", "first-without-flag",
        "count-without-flag", "reserved", "nop-with-range", "unknown-flag"])
def test_bad_ranges_are_einval_and_queue_nothing(chain, fields):
    fields = chain.fields(**fields)
    done = int(u.sysfs("jobs_done")) + int(u.sysfs("jobs_failed"))
    with pytest.raises(OSError) as e:
        chain.ctx.send(u.execute_record(fields.pop("model", chain.model), **fields))
    assert e.value.errno == errno.EINVAL
    os.set_blocking(chain.ctx.fd, False)
    with pytest.raises(BlockingIOError):
        os.read(chain.ctx.fd, 4096)
    assert int(u.sysfs("jobs_done")) + int(u.sysfs("jobs_failed")) == done


def test_a_range_of_an_unknown_model_is_enoent(chain):
    with pytest.raises(OSError) as e:
        chain.ctx.send(u.execute_record(999, **chain.fields(flags=BOS | R, first_op=0, op_count=1)))
    assert e.value.errno == errno.ENOENT


def test_ranges_are_checked_against_each_model(ctx, chain):
    """The bound is the named model's op_count: a one-op model beside the two-op chain refuses op 1."""
    one = ctx.load_relu(N)
    fields = chain.fields(flags=BOS | R, first_op=1, op_count=1)
    with pytest.raises(OSError) as e:
        ctx.send(u.execute_record(one, **fields))
    assert e.value.errno == errno.EINVAL
    res, _ = ctx.retrieve(ctx.execute(chain.model, **fields))
    assert int(res["status"]) == hw.STATUS.OK
