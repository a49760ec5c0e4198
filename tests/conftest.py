"""Shared test setup. Tiers: tests/unit (host only, seconds), tests/sim (in-process NPU, real firmware)."""

import os

# Before numpy loads: multithreaded OpenBLAS stalls on 2-core machines when the other core is busy.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# tests/guest runs only inside a `flaxnpu vm` guest, where the driver and /dev/flaxnpuN exist; the host
# runs it through tests/vm/test_guest_suite.py, which sets FLAXNPU_IN_GUEST=1 in the guest.
collect_ignore = [] if os.environ.get("FLAXNPU_IN_GUEST") == "1" else ["guest"]
