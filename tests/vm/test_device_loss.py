"""The device model process dies under a running guest: waiters get an error within the timeout, the
device refuses new work with EIO, and the driver still unloads (guest side: guest_device_loss.py)."""

import subprocess
import sys
import time

import vmrun
from vmrun import REPO

OUT = REPO / "build" / "device-loss"


def test_device_model_death_is_survived():
    OUT.mkdir(parents=True, exist_ok=True)
    marker = OUT / "ready"
    marker.unlink(missing_ok=True)
    cmd = [*vmrun.FLAXNPU, "--allow-device-loss", "--timeout", "300", "--npus", "1", "--",
           sys.executable, "tests/vm/guest_device_loss.py", str(marker)]
    with vmrun.qemu_turn():
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 240
            while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            killed = subprocess.run(["pkill", "-KILL", "-f", "flaxnpu_sim.server"], check=False).returncode == 0
            out, _ = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert killed, f"no device model to kill (the guest never got ready?)\n{out[-4000:] if proc.stdout else ''}"
    assert proc.returncode == 0, out[-6000:]
    assert "device-loss: OK" in out, out[-6000:]
    print("\n".join(line for line in out.splitlines() if line.startswith("device-loss:")))
