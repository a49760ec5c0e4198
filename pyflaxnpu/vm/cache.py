"""Where `flaxnpu vm` keeps what it downloads and builds: $FLAXNPU_CACHE, else ~/.cache/flaxnpu."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "FLAXNPU_CACHE"


def cache_dir() -> Path:
    base = os.environ.get(ENV_VAR) or str(Path.home() / ".cache" / "flaxnpu")
    path = Path(base).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path
