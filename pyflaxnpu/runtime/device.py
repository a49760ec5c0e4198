"""The device interface every backend implements, and `open()`, which picks one."""

from __future__ import annotations

import glob
from typing import TYPE_CHECKING, Any

from ..errors import DeviceError
from .model import LoadedModel
from .udriver import UserDriver

if TYPE_CHECKING:
    from ..program import Program


class Device:
    """An NPU: load programs on it, ask it what it is. Use as a context manager or call close()."""

    name = "device"

    def load(self, program: Program, *, max_batch: int | None = None) -> Any:
        """Put a program on the device; returns a callable model (numpy in, numpy out)."""
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DriverDevice(Device):
    """A device this process drives itself through the user-space driver (in-process sim, VFIO)."""

    def __init__(self, driver: UserDriver) -> None:
        self.driver = driver
        self._models: list[LoadedModel] = []

    def load(self, program: Program, *, max_batch: int | None = None) -> LoadedModel:
        model = LoadedModel(self.driver, program, max_batch=max_batch)
        self._models.append(model)
        return model

    def info(self) -> dict[str, Any]:
        from flaxnpu_abi import hw

        regs = self.driver.regs
        return {"name": self.name, "state": self.driver.state_name(),
                "firmware": self.driver.firmware_version, "heartbeat": regs.read(hw.Reg.HEARTBEAT),
                "jobs_done": regs.read(hw.Reg.JOBS_DONE), "jobs_failed": regs.read(hw.Reg.JOBS_FAILED),
                "resets": self.driver.recoveries, "cycles": regs.read64(hw.Reg.CYCLES_LO)}

    def close(self) -> None:
        for m in self._models:
            m.unload()
        self._models.clear()
        self.driver.close()


def open(spec: str = "auto", **options: Any) -> Device:
    """Open an NPU: "sim" (in-process simulator) or "auto" (a real device node if one exists, else "sim")."""
    if spec == "auto":
        nodes = sorted(glob.glob("/dev/flaxnpu[0-9]*"))
        spec = nodes[0] if nodes else "sim"
    if spec == "sim":
        from .sim import SimDevice

        return SimDevice(**options)
    if spec.startswith("/dev/"):
        from .kdev import KernelDevice

        return KernelDevice(spec, **options)
    raise DeviceError(f"unknown device {spec!r}: use 'auto', 'sim' or a /dev/flaxnpuN path")
