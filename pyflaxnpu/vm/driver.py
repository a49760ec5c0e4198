"""The kernel driver (driver/flaxnpu.ko), built out of tree against the unpacked Debian headers."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .errors import VmError
from .kernel import Kernel

MODULE = "flaxnpu.ko"


def build(kernel: Kernel, driver_dir: Path) -> Path | None:
    """make -C <headers> M=<driver_dir> modules; None when there is no driver (no Makefile) yet.
    Kbuild is incremental, so a rebuild with nothing changed costs about a second."""
    if not (driver_dir / "Makefile").is_file():
        return None
    cmd = ["make", "-s", "-C", str(kernel.headers), f"M={driver_dir}", "modules"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise VmError("make is not installed: apt-get install -y make gcc-12") from None
    if res.returncode != 0:
        out = (res.stdout + res.stderr).strip()
        raise VmError(f"building the kernel driver failed (`{' '.join(cmd)}`):\n{out[-3000:]}\n"
                      "fix the driver, or pass --no-driver to boot without it")
    ko = driver_dir / MODULE
    if not ko.is_file():
        raise VmError(f"`{' '.join(cmd)}` succeeded but left no {ko}: the module must be named {MODULE}")
    return ko
