"""Running a command in a `flaxnpu vm` guest from host tests: one guest at a time, output kept for errors."""

import contextlib
import fcntl
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FLAXNPU = [sys.executable, "-m", "pyflaxnpu.cli", "vm"]

# One TCG guest at a time on a small host: others running `flock /tmp/flaxnpu-qemu.lock flaxnpu vm ...`
# and these tests take turns instead of starving each other into boot timeouts.
LOCK = Path("/tmp/flaxnpu-qemu.lock")


@contextlib.contextmanager
def qemu_turn(wait: float = 600):
    with open(LOCK, "a") as f:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another QEMU guest held {LOCK} for over {wait:.0f} s")
                time.sleep(0.5)
        yield


def vm(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    with qemu_turn():
        return subprocess.run([*FLAXNPU, "--timeout", str(timeout - 30), *args], cwd=REPO,
                              capture_output=True, text=True, timeout=timeout, check=False)


def explain(res: subprocess.CompletedProcess) -> str:
    return f"exit {res.returncode}\n--- stdout\n{res.stdout[-6000:]}\n--- stderr\n{res.stderr[-3000:]}"
