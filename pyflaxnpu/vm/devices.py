"""The NPUs of a guest: one device-model process (python -m flaxnpu_sim.server) per NPU, all mapping the
same guest-RAM file. Each must be listening before QEMU starts; QEMU does not retry a refused socket."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from .errors import VmError

READY_TIMEOUT = 60.0  # seconds for a server to import numpy/unicorn and listen (slow when the host is busy)


def _tail(path: Path, n: int = 20) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:]) or "(empty log)"


class DeviceServers:
    """Starts, watches and stops the servers of NPU 0..n-1; logs go to <run_dir>/npuN.log."""

    def __init__(self, n: int, run_dir: Path, ram_path: Path, ram_size: int) -> None:
        self.run_dir = run_dir
        self.sockets = [run_dir / f"npu{i}.sock" for i in range(n)]
        self.logs = [run_dir / f"npu{i}.log" for i in range(n)]
        self.firmware_logs = [run_dir / f"npu{i}.firmware.log" for i in range(n)]
        self.ram_path = ram_path
        self.ram_size = ram_size
        self.procs: list[subprocess.Popen[str]] = []

    def start(self) -> None:
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
        for i, sock in enumerate(self.sockets):
            with open(self.logs[i], "w") as log:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "flaxnpu_sim.server", "--socket", str(sock), "--ram", str(self.ram_path),
                     "--ram-size", str(self.ram_size), "--firmware-log", str(self.firmware_logs[i])],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True, env=env))
        for i, proc in enumerate(self.procs):
            self._wait_ready(i, proc)

    def _wait_ready(self, i: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if select.select([proc.stdout], [], [], 0.5)[0]:
                line = proc.stdout.readline()
                if line.startswith("ready "):
                    return
                if not line:  # EOF: it exited
                    break
        code = proc.poll()
        why = f"exited with code {code}" if code is not None else f"did not listen within {READY_TIMEOUT:.0f} s"
        raise VmError(f"device model of NPU {i} {why}; the end of its log:\n{_tail(self.logs[i])}")

    def dead(self) -> tuple[int, int] | None:
        """(npu index, exit code) of the first server that has exited, if any."""
        for i, proc in enumerate(self.procs):
            code = proc.poll()
            if code is not None:
                return i, code
        return None

    def describe_death(self, i: int, code: int) -> str:
        return (f"device model of NPU {i} exited with code {code} while the guest was running; "
                f"the end of its log:\n{_tail(self.logs[i])}")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL whatever is left; each server removes its socket (and the RAM file if
        it created it) on SIGTERM or when QEMU disconnects."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
