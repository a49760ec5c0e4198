"""Debian's 6.1 kernel without installing it: the .debs from apt, unpacked into the cache.

One directory per kernel ABI version holds the unpacked packages (modules with a fresh modules.dep, the
headers with their Makefile made relocatable) and the uncompressed vmlinux that QEMU boots through its
PVH entry point (about 3 s faster under TCG than the bzImage, whose XZ decompressor is slow there).
A `.ready` stamp written last makes the whole step idempotent: an interrupted run starts over.
"""

from __future__ import annotations

import lzma
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .cache import cache_dir
from .errors import VmError

META_IMAGE = "linux-image-amd64"  # Debian's metapackage: depends on the current ABI's image
XZ_MAGIC = b"\xfd7zXZ\x00"


@dataclass(frozen=True)
class Kernel:
    version: str  # e.g. "6.1.0-56-amd64"
    root: Path  # the unpacked packages
    vmlinux: Path

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.version

    @property
    def headers(self) -> Path:
        return self.root / "usr" / "src" / f"linux-headers-{self.version}"


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> str:
    try:
        res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise VmError(f"{what}: `{cmd[0]}` is not installed (Debian: apt-get install -y apt dpkg kmod)") from None
    if res.returncode != 0:
        raise VmError(f"{what} failed (`{' '.join(cmd)}`, exit {res.returncode}): {res.stderr.strip()[-800:]}")
    return res.stdout


def _depends(package: str) -> list[str]:
    """Direct Depends of a package; refreshes the apt lists once when apt knows nothing about it."""
    try:
        out = _run(["apt-cache", "depends", package], f"looking up {package}")
    except VmError:
        _apt_update()
        out = _run(["apt-cache", "depends", package], f"looking up {package}")
    return re.findall(r"^\s+Depends: ([^<\s]+)$", out, re.MULTILINE)


def _apt_update() -> None:
    _run(["apt-get", "update", "-qq"], "apt-get update (apt lists are missing; this needs root)")


def resolve_version(requested: str | None) -> str:
    """The kernel ABI version to use: the requested one, else what linux-image-amd64 points at today,
    else (apt offline) the newest one already in the cache."""
    if requested:
        return requested.removeprefix("linux-image-")
    try:
        for dep in _depends(META_IMAGE):
            if dep.startswith("linux-image-"):
                return dep.removeprefix("linux-image-")
    except VmError as e:
        cached = sorted(p.parent.name for p in (cache_dir() / "kernel").glob("*/.ready"))
        if cached:
            return cached[-1]
        raise VmError(f"cannot find Debian's current kernel: {e}") from None
    raise VmError(f"apt-cache depends {META_IMAGE} names no linux-image package; pass --kernel-version")


def _download(packages: list[str], dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = ["apt-get", "download", *packages]
    try:
        _run(cmd, "apt-get download", cwd=dest)
    except VmError:  # usually "Unable to locate package" on a machine whose apt lists were never fetched
        _apt_update()
        _run(cmd, "apt-get download", cwd=dest)
    debs = []
    for pkg in packages:
        found = sorted(dest.glob(f"{pkg}_*.deb"))
        if not found:
            raise VmError(f"apt-get download {pkg} left no {pkg}_*.deb in {dest}")
        debs.append(found[-1])
    return debs


def extract_vmlinux(bzimage: Path, out: Path) -> None:
    """The ELF kernel inside a bzImage: Debian compresses it with XZ; the payload starts at XZ's magic."""
    data = bzimage.read_bytes()
    start = data.find(XZ_MAGIC)
    if start < 0:
        raise VmError(f"{bzimage} holds no XZ payload; boot it as a bzImage instead")
    # The payload is followed by other data: a decompressor object stops at the end of the stream.
    elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[start:])
    if elf[:4] != b"\x7fELF":
        raise VmError(f"the XZ payload of {bzimage} is not an ELF kernel")
    out.write_bytes(elf)


def _fix_headers_makefile(headers: Path, common: str) -> None:
    """The flavour headers' Makefile includes the common headers by absolute /usr/src path; point it at
    the unpacked copy beside it instead (scripts/ and tools/ are relative symlinks and work as they are)."""
    mk = headers / "Makefile"
    text = mk.read_text()
    fixed = text.replace(f"include /usr/src/{common}/Makefile",
                         f"include $(dir $(lastword $(MAKEFILE_LIST)))../{common}/Makefile")
    mk.write_text(fixed)


def prepare(requested: str | None = None, log: Callable[[str], None] = print) -> Kernel:
    """The kernel, downloaded and unpacked into the cache on first use."""
    version = resolve_version(requested)
    root = cache_dir() / "kernel" / version
    kernel = Kernel(version, root, root / "vmlinux")
    if (root / ".ready").exists():
        return kernel
    log(f"flaxnpu vm: fetching Debian kernel {version} into {root} (once, ~90 MB download, ~500 MB unpacked)")
    headers = f"linux-headers-{version}"
    extra = [d for d in _depends(headers) if d.startswith(("linux-headers-", "linux-kbuild-"))]
    common = next((d for d in extra if d.startswith("linux-headers-")), None)
    if common is None:
        raise VmError(f"{headers} depends on no common headers package; is {version} a Debian kernel?")
    debs = _download([f"linux-image-{version}", headers, *extra], cache_dir() / "debs")
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for deb in debs:
        _run(["dpkg", "-x", str(deb), str(tmp)], f"unpacking {deb.name}")
    # The .deb ships no modules.dep (its postinst makes one); insmod order for the initramfs comes from it.
    _run(["depmod", "-b", str(tmp), version], "depmod (apt-get install -y kmod)")
    _fix_headers_makefile(tmp / "usr" / "src" / headers, common)
    extract_vmlinux(tmp / "boot" / f"vmlinuz-{version}", tmp / "vmlinux")
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    (root / ".ready").touch()
    return kernel
