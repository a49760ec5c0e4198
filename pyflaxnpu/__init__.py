"""pyflaxnpu: compile Flax models into NPU programs and run them.

    program = pyflaxnpu.compile(module, variables, example_input)
    program.save("model.fnpu"); program = pyflaxnpu.Program.load("model.fnpu")
    device = pyflaxnpu.open("sim")          # or "auto"
    model = device.load(program)
    y = model(x)

The compiler (and with it jax) is imported only when compile() is called, so running a saved program
needs neither.
"""

from __future__ import annotations

from typing import Any

from .errors import (
    CompileError,
    DeviceError,
    DeviceTimeout,
    FirmwareError,
    FlaxNpuError,
    JobError,
    ProgramFormatError,
    UnsupportedPrimitiveError,
)
from .program import Program
from .runtime.device import Device, open
from .runtime.discovery import DeviceEntry, devices

__version__ = "0.1.0"

__all__ = [
    "CompileError", "Device", "DeviceEntry", "DeviceError", "DeviceTimeout", "FirmwareError", "FlaxNpuError",
    "JobError", "Program", "ProgramFormatError", "UnsupportedPrimitiveError", "__version__", "compile", "devices",
    "open",
]


def compile(module: Any, variables: Any, example_input: Any, **options: Any) -> Program:
    """Compile a Flax linen Module with its variables, or an nnx Module (variables=None), for the NPU.

    example_input fixes the per-item shape and dtype; the batch size of the program is free.
    """
    from .compiler import compile as _compile

    return _compile(module, variables, example_input, **options)
