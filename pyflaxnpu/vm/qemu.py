"""QEMU's command line for the guest: q35, guest RAM in a shared file, host / and the work directory
over 9p, one ivshmem-doorbell device per NPU, isa-debug-exit, the serial console on stdout."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import VmError

QEMU = "qemu-system-x86_64"
VECTORS = 2  # MSI-X vectors of each NPU: IRQ_COMPLETION, IRQ_EVENT
NPU_SLOT0 = 0x10  # NPU i sits at PCI 0000:00:(0x10 + i).0, so /dev/flaxnpuN follows the option order
MAX_NPUS = 8


@dataclass(frozen=True)
class GuestSpec:
    vmlinux: Path
    initramfs: Path
    append: str  # kernel command line
    memory: int  # bytes; also the size of the guest-RAM file
    ram_path: Path
    sockets: list[Path]  # one ivshmem server socket per NPU
    work: Path  # shared read-write at the same path
    accel: str = "tcg"
    smp: int = 1
    # An ivshmem device with plain shared memory and no NPU behind it (its file): the driver must leave it
    # alone, because other software uses ivshmem too.
    plain_ivshmem: Path | None = None


def find_qemu() -> str:
    path = shutil.which(QEMU)
    if path is None:
        raise VmError(f"{QEMU} not found: apt-get install -y qemu-system-x86 (or run `bash tools/bootstrap.sh`)")
    return path


def accel_args(accel: str) -> list[str]:
    if accel == "tcg":
        # One vCPU: on a 2-core host a second vCPU thread competes with the device-model processes.
        return ["-accel", "tcg,thread=multi", "-cpu", "max"]
    if accel == "kvm":
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            raise VmError("--accel kvm: /dev/kvm is missing or not accessible; use --accel tcg")
        # arch-capabilities off: some nested KVMs refuse QEMU's MSR 0x10a and abort at start.
        return ["-accel", "kvm", "-cpu", "host,-arch-capabilities"]
    raise VmError(f"unknown --accel {accel!r}: tcg or kvm")


def command(spec: GuestSpec) -> list[str]:
    if len(spec.sockets) > MAX_NPUS:
        raise VmError(f"at most {MAX_NPUS} NPUs per guest")
    mb = spec.memory >> 20
    args = [find_qemu(), "-machine", "q35,memory-backend=ram", *accel_args(spec.accel),
            "-smp", str(spec.smp), "-m", f"{mb}M",
            # DMA address == guest-physical address == offset in this file (the device models read it).
            "-object", f"memory-backend-file,id=ram,size={mb}M,mem-path={spec.ram_path},share=on",
            "-display", "none", "-no-reboot", "-monitor", "none", "-nodefaults",
            "-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con",
            "-kernel", str(spec.vmlinux), "-initrd", str(spec.initramfs), "-append", spec.append,
            "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
            "-fsdev", f"local,id=work,path={spec.work},security_model=none,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=work,mount_tag=work",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
    for i, sock in enumerate(spec.sockets):
        args += ["-chardev", f"socket,path={sock},id=npu{i}",
                 "-device", f"ivshmem-doorbell,chardev=npu{i},vectors={VECTORS},bus=pcie.0,addr=0x{NPU_SLOT0 + i:x}"]
    if spec.plain_ivshmem is not None:
        args += ["-object", f"memory-backend-file,id=plain,size=1M,mem-path={spec.plain_ivshmem},share=on",
                 "-device", f"ivshmem-plain,memdev=plain,bus=pcie.0,addr=0x{NPU_SLOT0 + MAX_NPUS:x}"]
    return args
