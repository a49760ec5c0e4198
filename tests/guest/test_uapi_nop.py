"""NOP jobs (EXEC_FLAG_NOP) and the control-doorbell ping: the two floors under every job's round trip."""

import errno

import numpy as np
import pytest
import uapi_lib as u
from flaxnpu_abi import hw, uapi


def test_nop_job_round_trip(ctx):
    done = int(u.sysfs("jobs_done"))
    job = ctx.execute(0, flags=uapi.EXEC_FLAG.NOP)
    res, out = ctx.retrieve(job)
    assert int(res["status"]) == hw.STATUS.OK and out == b""
    assert int(res["op_index"]) == hw.OP_NONE and int(res["device_ns"]) > 0
    assert int(u.sysfs("jobs_done")) == done + 1


@pytest.mark.parametrize("field", [dict(model=1), dict(batch=2), dict(input_size=8), dict(output_size=8),
                                   dict(arena_size=8), dict(input_bo=1), dict(flags_extra=uapi.EXEC_FLAG.INPUT_BO)])
def test_nop_job_with_any_data_is_refused(ctx, field):
    kw = dict(field)
    flags = uapi.EXEC_FLAG.NOP | kw.pop("flags_extra", 0)
    model = kw.pop("model", 0)
    data = bytes(kw.get("input_size", 0)) if not flags & uapi.EXEC_FLAG.INPUT_BO else b""
    with pytest.raises(OSError) as e:
        ctx.send(u.execute_record(model, data, flags=flags, **kw))
    assert e.value.errno == errno.EINVAL


def test_ping_measures_a_control_round_trip(guest):
    samples = [int(u.sysfs("ping_ns")) for _ in range(20)]
    assert all(0 < s < 1_000_000_000 for s in samples)
    assert np.median(samples) > 1000  # a doorbell, a device model wake and an MSI-X cannot take under 1 us
