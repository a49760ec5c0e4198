"""The one error shape of the device model: a named hardware status plus its detail word.

Whatever the host or the firmware gets wrong ends as one of these, and the status is what the other side
reads (REG_ERROR, CORE_STATUS, a completion record): a log line alone would tell the host nothing.
"""

from __future__ import annotations

from flaxnpu_abi.hw import STATUS


class DeviceError(Exception):
    """A refused request: `status` is the STATUS the device reports, `info` the offending value/offset."""

    def __init__(self, status: STATUS, info: int, detail: str = "") -> None:
        self.status = STATUS(status)
        self.info = info & 0xFFFFFFFF
        text = f"{self.status.name} (info 0x{self.info:x})"
        super().__init__(f"{text}: {detail}" if detail else text)


class SegmentError(DeviceError):
    """A segment table was refused (SEG_*), or an access fell outside the job's segments (OP_*)."""


class EngineError(DeviceError):
    """An op descriptor was refused by the engines (OP_*)."""


class FirmwareImageError(DeviceError):
    """A firmware image was refused (FW_*)."""
