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
        """One line per op: index, opcode+act, module path, primitives, shapes and weight bytes."""
        m = self._manifest
        ins = ", ".join(f"{t['name']} {t['shape']}" for t in m["inputs"])
        outs = ", ".join(f"{t['name']} {t['shape']}" for t in m["outputs"])
        lines = [f"program {m.get('name', '?')}: format {self._version[0]}.{self._version[1]}, "
                 f"{self._op_count} ops, weights {self.weights_size} B, arena {self.arena_size} B/item",
                 f"  inputs: {ins}", f"  outputs: {outs}",
                 f"  {'#':>3}  {'op':<18} {'module':<22} {'shapes':<30} {'weights':>8}  primitives"]
        for desc, meta in zip(self.ops, m["ops"], strict=True):
            dims = [int(d) for d in desc["dims"] if d]
            scaled = int(desc["scale_mask"])
            shape = "x".join((f"{d}B" if d > 1 else "B") if scaled >> k & 1 else str(d)
                             for k, d in enumerate(dims))
            weight_bytes = sum(int(desc[r]["size"]) for r in ("src0", "src1", "src2")
                               if int(desc[r]["seg"]) == prog.SEG_PROGRAM and int(desc[r]["size"]))
            kind = meta["opcode"] + ("" if meta["act"] == "NONE" else f"+{meta['act']}")
            if int(desc["flags"]) & prog.OP_FLAG.BIAS:
                kind += "+BIAS"
            where = meta["module"] or "-"
            src = f"  @ {meta['source']}" if meta.get("source") else ""
            lines.append(f"  {meta['index']:>3}  {kind:<18} {where:<22} {shape:<30} {weight_bytes:>8}  "
                         f"{' '.join(meta['primitives'])}{src}")
        return "\n".join(lines)
