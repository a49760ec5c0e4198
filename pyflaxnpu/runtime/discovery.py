"""`pyflaxnpu.devices()`: the NPUs this machine has, found through udev."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceEntry:
    node: str  # /dev/flaxnpuN
    pci_address: str | None  # 0000:00:04.0
    firmware: str | None
    state: str | None


def _attr(dev: object, name: str) -> str | None:
    for d in (dev, getattr(dev, "parent", None)):
        if d is None:
            continue
        try:
            value = d.attributes.asstring(name)  # type: ignore[attr-defined]
        except (KeyError, UnicodeDecodeError, OSError):
            continue
        return value.strip()
    return None


def devices() -> list[DeviceEntry]:
    """Every /dev/flaxnpuN with its PCI address, firmware version and state (from the driver's sysfs)."""
    try:
        import pyudev
    except ImportError:  # pragma: no cover - pyudev is a pinned dependency
        return []
    found = []
    for dev in pyudev.Context().list_devices(subsystem="flaxnpu"):
        if not dev.device_node:
            continue
        pci = dev.find_parent("pci")
        found.append(DeviceEntry(dev.device_node, pci.sys_name if pci is not None else None,
                                 _attr(dev, "fw_version"), _attr(dev, "state")))
    return sorted(found, key=lambda e: e.node)
