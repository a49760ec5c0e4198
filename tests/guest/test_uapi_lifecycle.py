"""Module and device lifetime (guest only): rmmod with an open file, unbind with jobs in flight, reload."""

from __future__ import annotations

import errno
import mmap
import os
import subprocess
import time
from pathlib import Path

import pytest
import uapi_lib as u
from flaxnpu_abi import uapi

DRIVER = Path("/sys/bus/pci/drivers/flaxnpu")


def sh(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=False)


def wait_for(path: str, present: bool, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while os.path.exists(path) != present:
        assert time.monotonic() < deadline, f"{path} {'did not appear' if present else 'did not go away'}"
        time.sleep(0.1)


def test_rmmod_with_open_file_is_busy_then_reload(guest):
    c = u.Ctx()
    res = sh("rmmod", "flaxnpu")
    assert res.returncode != 0 and Path("/sys/module/flaxnpu").exists(), res
    c.close()
    res = sh("rmmod", "flaxnpu")
    assert res.returncode == 0, res.stderr
    assert not os.path.exists(u.DEV)
    res = sh("insmod", str(u.KO))
    assert res.returncode == 0, res.stderr
    wait_for(u.DEV, True)
    u.check_a_fresh_context_runs_a_job()


def test_unbind_with_jobs_in_flight_then_rebind(guest):
    bdf = os.path.basename(os.readlink(u.SYSFS / "device"))
    (u.PARAMS / "job_timeout_ms").write_text("30000")  # the job must still be in flight at unbind
    c = u.Ctx()
    model = c.load_relu(16)
    _, off = u.bo_create(c.fd, 4096)
    m = mmap.mmap(c.fd, 4096, offset=off)
    (u.SYSFS / "inject_fault").write_text("hang")
    job = c.execute(model, bytes(64), output_size=64)
    (DRIVER / "unbind").write_text(bdf)
    for op in (lambda: os.read(c.fd, 4096), lambda: c.send(u.retrieve_record(job)),
               lambda: u.call(c.fd, uapi.IOCTL.INFO), lambda: u.call(c.fd, uapi.IOCTL.WAIT, job=job),
               lambda: mmap.mmap(c.fd, 4096, offset=off)):
        with pytest.raises(OSError) as e:
            op()
        assert e.value.errno == errno.ENODEV
    m[:4] = b"live"  # an existing mapping keeps working, no SIGBUS
    m.close()
    c.close()
    (DRIVER / "bind").write_text(bdf)
    (u.PARAMS / "job_timeout_ms").write_text("10000")
    wait_for(u.DEV, True)
    u.check_a_fresh_context_runs_a_job()
