#!/usr/bin/env python3
"""Throughput and latency of the digits MLP on the simulated NPU against jax.jit on the same CPU.

    python3 bench/throughput.py [--device sim] [--min-ratio 0.02]

Both sides run single-threaded (OPENBLAS_NUM_THREADS=1, XLA's CPU thread pool off) in one process, one
after the other for each batch size, so the ratio is measured under the same load. Fails (exit 1) when
the NPU's samples/s at batch 1024 falls below --min-ratio times jax.jit's: the simulator's per-job and
per-op overhead is what this bound watches.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import digits

import pyflaxnpu

BATCHES = (1, 4, 16, 64, 256, 1024)


def latency(fn: object, x: np.ndarray, min_time: float) -> float:
    """Median seconds per call over at least min_time seconds (after one warm-up call)."""
    fn(x)
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < min_time or len(times) < 5:
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="sim")
    ap.add_argument("--min-ratio", type=float, default=0.02, help="bound on NPU/jax.jit samples/s at batch 1024")
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds of timing per cell")
    args = ap.parse_args()

    x_train, x_test, y_train, _ = digits.load_data()
    model = digits.DigitsMLP()
    variables = digits.train(model, x_train, y_train, epochs=5)
    program = pyflaxnpu.compile(model, variables, x_test[:1])
    ref_fn = jax.jit(lambda x: model.apply(variables, x))
    rng = np.random.default_rng(0)

    print(f"digits MLP 64-128-64-10 ({program.op_count} device ops); device {args.device}; 1 CPU thread each")
    print(f"{'batch':>6} | {'npu lat (us)':>12} {'npu samples/s':>14} | {'jit lat (us)':>12} "
          f"{'jit samples/s':>14} | {'npu/jit':>7}")
    ratio_at_max = 0.0
    with pyflaxnpu.open(args.device) as device:
        npu = device.load(program)
        for b in BATCHES:
            x = x_test[rng.integers(0, len(x_test), b)]
            t_npu = latency(npu, x, args.min_time)
            t_jit = latency(lambda v: ref_fn(v).block_until_ready(), x, args.min_time)
            ratio = t_jit / t_npu
            ratio_at_max = ratio
            print(f"{b:>6} | {t_npu * 1e6:12.1f} {b / t_npu:14,.0f} | {t_jit * 1e6:12.1f} {b / t_jit:14,.0f} | "
                  f"{ratio:7.3f}")
    ok = ratio_at_max >= args.min_ratio
    print(f"\nbatch {BATCHES[-1]}: NPU/jax.jit throughput {ratio_at_max:.3f} (bound >= {args.min_ratio}): "
          f"{'OK' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
