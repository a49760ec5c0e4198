"""The one error type of `flaxnpu vm`: its message names what is missing or broken and how to fix it."""

from __future__ import annotations

from ..errors import FlaxNpuError


class VmError(FlaxNpuError):
    """The VM could not be prepared, booted or run."""
