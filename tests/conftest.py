"""Shared test setup. Tiers: tests/unit (host only, seconds), tests/sim (in-process NPU, real firmware)."""

import os

# Before numpy loads: multithreaded OpenBLAS stalls on 2-core machines when the other core is busy.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
