"""Every error pyflaxnpu raises. Each message names the problem and, where there is one, the fix."""

from __future__ import annotations


class FlaxNpuError(Exception):
    """Base class of all pyflaxnpu errors."""


class ProgramFormatError(FlaxNpuError):
    """A .fnpu file is truncated, corrupted, or from another format version."""


class CompileError(FlaxNpuError):
    """The compiler cannot turn the model into a program."""


class UnsupportedPrimitiveError(CompileError):
    """A JAX primitive has no NPU lowering."""


class DeviceError(FlaxNpuError):
    """The device, its firmware or a transport failed."""


class FirmwareError(DeviceError):
    """The firmware image is missing, malformed, or was refused by the device."""


class DeviceTimeout(DeviceError):
    """A wait on the device ran past its deadline."""


class JobError(DeviceError):
    """A job completed with an error status.

    status is the hw.STATUS code, op_index the failing op (or None), info the device's detail value.
    """

    def __init__(self, message: str, status: int, op_index: int | None = None, info: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.op_index = op_index
        self.info = info
