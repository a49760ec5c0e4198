"""The guest's initramfs: static busybox, the virtio/9p modules of the kernel, and init.sh as /init.

Built once per (kernel, busybox, init.sh) and cached under the kernel's name; the per-run parameters
(work directory, command, driver, firmware) come through the kernel command line, not the image.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

from .cache import cache_dir
from .errors import VmError
from .kernel import Kernel

BUSYBOX = Path("/bin/busybox")
# What mounting the host over 9p needs; modprobe --show-depends adds the rest in load order.
ROOT_MODULES = ["virtio_pci", "9pnet_virtio", "9p"]
INIT = Path(__file__).with_name("init.sh")


def _module_order(kernel: Kernel) -> list[Path]:
    res = subprocess.run(["modprobe", "-d", str(kernel.root), "-S", kernel.version, "--show-depends", "-a",
                          *ROOT_MODULES], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise VmError(f"modprobe --show-depends failed for {kernel.version}: {res.stderr.strip()} "
                      f"(apt-get install -y kmod; or remove {kernel.root} to unpack the kernel again)")
    order: list[Path] = []
    for line in res.stdout.splitlines():
        parts = line.split()
        if parts[:1] == ["insmod"] and Path(parts[1]) not in order:
            order.append(Path(parts[1]))
    return order


def _check_busybox() -> bytes:
    if not BUSYBOX.is_file():
        raise VmError(f"{BUSYBOX} is missing: apt-get install -y busybox-static")
    data = BUSYBOX.read_bytes()
    # A dynamic busybox would need the host's libc inside the initramfs.
    if b"/lib64/ld-linux" in data[:4096] or b"ld-linux-x86-64.so" in data[:8192]:
        raise VmError(f"{BUSYBOX} is dynamically linked: apt-get install -y busybox-static")
    return data


def build(kernel: Kernel) -> Path:
    """Path of the (cached) gzip'd newc initramfs for `kernel`."""
    busybox = _check_busybox()
    init = INIT.read_bytes()
    key = hashlib.sha256(busybox + init + kernel.version.encode()).hexdigest()[:16]
    out = cache_dir() / "initramfs" / f"{kernel.version}-{key}.cpio.gz"
    if out.exists():
        return out
    modules = _module_order(kernel)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for d in ("bin", "proc", "sys", "dev", "modules", "host"):
            (root / d).mkdir()
        shutil.copy2(BUSYBOX, root / "bin" / "busybox")
        for m in modules:
            shutil.copy2(m, root / "modules" / m.name)
        (root / "modules.order").write_text("".join(m.name + "\n" for m in modules))
        (root / "init").write_bytes(init)
        (root / "init").chmod(0o755)
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        try:
            res = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet", "-R", "0:0"], cwd=root,
                                 input=("\n".join(files) + "\n").encode(), capture_output=True, check=False)
        except FileNotFoundError:
            raise VmError("cpio is not installed: apt-get install -y cpio") from None
        if res.returncode != 0:
            raise VmError(f"cpio failed: {res.stderr.decode(errors='replace')}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".tmp")
    tmp_out.write_bytes(gzip.compress(res.stdout, compresslevel=6))
    tmp_out.rename(out)
    return out
