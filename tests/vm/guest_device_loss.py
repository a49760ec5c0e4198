"""Runs inside a `flaxnpu vm --allow-device-loss` guest (tests/vm/test_device_loss.py): a job runs, the
host kills the device model, and then: pings fail, a job fails with a timeout status instead of hanging,
later jobs fail with EIO within the control timeout, and the driver still unloads."""

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "guest"))
import numpy as np
import uapi_lib as u
from flaxnpu_abi import hw

JOB_TIMEOUT_MS = 1500


def say(msg: str) -> None:
    print(f"device-loss: {msg}", flush=True)


def main(marker: Path) -> int:
    (u.PARAMS / "job_timeout_ms").write_text(str(JOB_TIMEOUT_MS))
    ctx = u.Ctx()
    model = ctx.load_relu(16)
    x = np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16)
    res, y = ctx.run_relu(model, x)
    assert int(res["status"]) == hw.STATUS.OK and np.array_equal(y, np.maximum(x, 0))
    say("first job ran")
    with open(marker, "w") as f:  # the host kills the device model when it sees this file
        f.write("ready\n")
        f.flush()
        os.fsync(f.fileno())
    deadline = time.monotonic() + 120
    while True:
        try:
            u.sysfs("ping_ns")
        except OSError as e:
            say(f"ping failed once the model died: {errno.errorcode.get(e.errno)}")
            break
        if time.monotonic() > deadline:
            say("FAIL: the device model was never killed")
            return 1
        time.sleep(0.2)

    t0 = time.monotonic()
    try:
        job = ctx.execute(model, bytes(64), output_size=64)
        res, _ = ctx.retrieve(job, timeout=60)
        status = hw.STATUS(int(res["status"])).name
    except OSError as e:
        status = errno.errorcode.get(e.errno, str(e.errno))
    waited = time.monotonic() - t0
    say(f"job on the dead device: {status} after {waited:.1f} s")
    assert status in ("TIMEOUT", "ABORTED", "EIO"), status
    assert waited < 30, waited

    t0 = time.monotonic()
    try:
        ctx.execute(model, bytes(64), output_size=64)
        say("FAIL: a job was accepted by a dead device")
        return 1
    except OSError as e:
        say(f"next job: {errno.errorcode.get(e.errno)} after {time.monotonic() - t0:.1f} s")
        assert e.errno == errno.EIO, e
    ctx.close()
    rc = subprocess.run(["rmmod", "flaxnpu"], capture_output=True, text=True)
    say(f"rmmod: exit {rc.returncode} {rc.stderr.strip()}")
    assert rc.returncode == 0
    problems = u.kernel_problems()
    assert not problems, problems
    say("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
