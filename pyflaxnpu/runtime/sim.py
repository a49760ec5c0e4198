"""The in-process simulated NPU: the device model and the user-space driver in one process."""

from __future__ import annotations

import os

from flaxnpu_abi import hw
from flaxnpu_abi.regio import RegisterBlock

from .device import DriverDevice
from .dma import DmaAllocator
from .firmware import find_image
from .udriver import UserDriver


class SimDevice(DriverDevice):
    name = "sim"

    def __init__(self, *, memory_size: int = 256 << 20, firmware: str | os.PathLike | None = None) -> None:
        # Imported here so that programs and the other backends never pull in unicorn.
        from flaxnpu_sim.device import NpuDevice
        from flaxnpu_sim.memory import AnonymousMemory

        self.memory = AnonymousMemory(memory_size)
        window = bytearray(hw.REG_WINDOW_SIZE)
        self.model = NpuDevice(self.memory, regs=window)
        driver = UserDriver(RegisterBlock(window, hw.REG_WINDOW_SIZE), DmaAllocator(self.memory),
                            self.model.doorbell)
        super().__init__(driver)
        driver.reset()
        driver.boot(find_image(firmware))

    def firmware_log(self) -> str:
        return self.model.firmware_log()
