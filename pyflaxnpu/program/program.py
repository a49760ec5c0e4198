"""Program: a checked .fnpu program in memory, with load/save and a human-readable report."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from flaxnpu_abi import prog

from pyflaxnpu.errors import ProgramFormatError
from pyflaxnpu.program import format as fmt
from pyflaxnpu.program.manifest import check_manifest


class Program:
    """A device image (op stream, then weights) and its manifest, checked on construction.

    The same checks run for a freshly compiled program and for one read from disk, so the compiler
    cannot emit a file that a loader would refuse.
    """

    def __init__(self, image: bytes, op_count: int, manifest: dict[str, Any],
                 version: tuple[int, int] = (prog.ABI_MAJOR, prog.ABI_MINOR)) -> None:
        if op_count < 1 or op_count * prog.OP_SIZE > len(image):
            raise ProgramFormatError(
                f"program has {op_count} ops but a {len(image)}-byte image (each op is {prog.OP_SIZE} bytes)")
        check_manifest(manifest, version, image, op_count)
        self._image = bytes(image)
        self._op_count = op_count
        self._manifest = manifest
        self._version = version

    # ------------------------------------------------------------------ bytes and files
    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Program:
        parsed = fmt.parse(data)
        return cls(parsed.image, parsed.op_count, parsed.manifest, parsed.version)

    def to_bytes(self) -> bytes:
        return fmt.pack(self._image, self._op_count, self._manifest, self._version)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Program:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise ProgramFormatError(f"cannot read program file {path}: {e.strerror}") from e
        try:
            return cls.from_bytes(data)
        except ProgramFormatError as e:
            raise ProgramFormatError(f"{path}: {e}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically: a reader sees the old file or the new one, never half of one."""
        target = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(self.to_bytes())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # ------------------------------------------------------------------ views
    @property
    def version(self) -> tuple[int, int]:
        return self._version

    @property
    def image(self) -> bytes:
        return self._image

    @property
    def op_count(self) -> int:
        return self._op_count

    @property
    def ops(self) -> np.ndarray:
        """The op descriptors as a read-only numpy array of prog.OP records."""
        return np.frombuffer(self._image, dtype=prog.OP, count=self._op_count)

    @property
    def manifest(self) -> dict[str, Any]:
        return self._manifest

    @property
    def inputs(self) -> list[dict[str, Any]]:
        return self._manifest["inputs"]

    @property
    def outputs(self) -> list[dict[str, Any]]:
        return self._manifest["outputs"]

    @property
    def arena_size(self) -> int:
        """Bytes of SEG_ARENA per batch item."""
        return int(self._manifest["arena_size"])

    @property
    def weights_size(self) -> int:
        return int(self._manifest["weights_size"])

    def __repr__(self) -> str:
        return (f"Program({self._manifest.get('name', '?')!r}, {self._op_count} ops, "
                f"{self.weights_size} weight bytes, arena {self.arena_size} B/item)")

    def report(self) -> str:
        """Every op in order: where it runs (NPU, or CPU and why), module, shapes, bytes, cycles; totals."""
        from pyflaxnpu.program.report import render

        return render(self)
