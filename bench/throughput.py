#!/usr/bin/env python3
"""Throughput and latency on the simulated NPU against jax.jit on the same CPU: the digits MLP, and (with
--all, as `make bench` does) a CNN, a ResNet and a transformer encoder, with compile times against
jax.jit(...).lower(x).compile(), and the trained digits CNN in float32 and int8 (accuracy, weights, speed).

    python3 bench/throughput.py [--device sim] [--min-ratio 0.02] [--all]

Both sides run single-threaded (OPENBLAS_NUM_THREADS=1, XLA's CPU thread pool off) in one process, one
after the other for each batch size, so the ratio is measured under the same load. Fails (exit 1) when
the NPU's samples/s at batch 1024 falls below --min-ratio times jax.jit's: the simulator's per-job and
per-op overhead is what this bound watches; with --all also when the int8 digits CNN's accuracy is more
than one point from float32's.
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
import nets

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


def compile_times(module: object, variables: object, x: np.ndarray) -> tuple[float, float]:
    """Seconds for pyflaxnpu.compile and for XLA's lower + compile of the same model, both cold."""
    t = time.perf_counter()
    pyflaxnpu.compile(module, variables, x[:1])
    ours = time.perf_counter() - t
    t = time.perf_counter()
    jax.jit(lambda v: module.apply(variables, v)).lower(x[:1]).compile()
    return ours, time.perf_counter() - t


def table(name: str, device: pyflaxnpu.Device, program: pyflaxnpu.Program, ref_fn: object,
          sample: object, min_time: float) -> float:
    """Prints one model's rows; returns NPU/jit throughput at the largest batch."""
    print(f"\n{name} ({program.op_count} device ops)")
    print(f"{'batch':>6} | {'npu lat (us)':>12} {'npu samples/s':>14} | {'jit lat (us)':>12} "
          f"{'jit samples/s':>14} | {'npu/jit':>7}")
    npu = device.load(program)
    ratio = 0.0
    for b in BATCHES:
        x = sample(b)
        t_npu = latency(npu, x, min_time)
        t_jit = latency(lambda v: ref_fn(v).block_until_ready(), x, min_time)
        ratio = t_jit / t_npu
        print(f"{b:>6} | {t_npu * 1e6:12.1f} {b / t_npu:14,.0f} | {t_jit * 1e6:12.1f} {b / t_jit:14,.0f} | "
              f"{ratio:7.3f}")
    npu.unload()
    return ratio


def zoo() -> list[tuple[str, object, np.ndarray]]:
    """The conv and transformer models of examples/nets.py with random weights (speed only)."""
    rng = np.random.default_rng(0)
    img = rng.standard_normal((1024, 8, 8, 1)).astype(np.float32)
    tokens = rng.integers(0, 17, (1024, 64)).astype(np.int32)
    return [("CNN 8x8x1: conv-bn-relu, max pool, conv-bn-relu, avg pool, dense", nets.LinenCNN(), img),
            ("ResNet-tiny 8x8x1: stem + 2 residual blocks, global pool, dense", nets.LinenResNet(), img),
            ("Transformer encoder: 64 tokens, d=32, 4 heads, 1 block", nets.LinenEncoder(length=64), tokens)]


def int8_rows(device: pyflaxnpu.Device, compiles: list, min_time: float) -> bool:
    """The trained digits CNN in float32 and int8: speed rows, then accuracy and weights; True when int8
    is within one point of float."""
    x_train, x_test, y_train, y_test = (a.reshape(-1, 8, 8, 1) if a.ndim == 2 else a for a in digits.load_data())
    model = digits.DigitsCNN()
    variables = digits.train(model, x_train, y_train, epochs=30)
    ref_fn = jax.jit(lambda x: model.apply(variables, x))
    fp = pyflaxnpu.compile(model, variables, x_test[:1])
    t = time.perf_counter()
    q8 = pyflaxnpu.compile(model, variables, x_test[:1], quantize="int8", calibration=x_train[:512])
    compiles.append(("digits CNN int8 (+calib.)", time.perf_counter() - t, float("nan")))
    pick = np.random.default_rng(1)
    for name, program in (("float32", fp), ("int8", q8)):
        table(f"digits CNN {name}", device, program, ref_fn, lambda b: x_test[pick.integers(0, len(x_test), b)],
              min_time)
    runs = (("jax.jit float32", ref_fn), ("NPU float32", device.load(fp)), ("NPU int8", device.load(q8)))
    acc = {name: float((np.asarray(f(x_test)).argmax(1) == y_test).mean()) for name, f in runs}
    print(f"\ndigits CNN on the {len(x_test)} test images: " + ", ".join(f"{k} {v:.2%}" for k, v in acc.items())
          + f"; weights {fp.weights_size} B float32, {q8.weights_size} B int8")
    ok = abs(acc["NPU int8"] - acc["jax.jit float32"]) <= digits.INT8_POINTS
    print(f"int8 accuracy within {100 * digits.INT8_POINTS:g} point of float32: {'OK' if ok else 'FAIL'}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="sim")
    ap.add_argument("--min-ratio", type=float, default=0.02, help="bound on NPU/jax.jit samples/s at batch 1024")
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds of timing per cell")
    ap.add_argument("--all", action="store_true", help="also the CNN, ResNet and transformer rows")
    args = ap.parse_args()

    x_train, x_test, y_train, _ = digits.load_data()
    model = digits.DigitsMLP()
    variables = digits.train(model, x_train, y_train, epochs=5)
    program = pyflaxnpu.compile(model, variables, x_test[:1])
    ref_fn = jax.jit(lambda x: model.apply(variables, x))
    rng = np.random.default_rng(0)

    print(f"device {args.device}; 1 CPU thread each; latency = median per call, samples/s = batch / latency")
    compiles = [("digits MLP", *compile_times(model, variables, x_test))]
    with pyflaxnpu.open(args.device) as device:
        ratio_mlp = table("digits MLP 64-128-64-10", device, program, ref_fn,
                          lambda b: x_test[rng.integers(0, len(x_test), b)], args.min_time)
        for name, module, data in zoo() if args.all else []:
            v = module.init(jax.random.PRNGKey(0), data[:1])
            compiles.append((name.split(":")[0], *compile_times(module, v, data)))
            fn = jax.jit(lambda x, m=module, v=v: m.apply(v, x))
            table(name, device, pyflaxnpu.compile(module, v, data[:1]), fn, lambda b, d=data: d[:b], args.min_time)
        int8_ok = int8_rows(device, compiles, args.min_time) if args.all else True
    print(f"\n{'compile time (cold)':24} {'pyflaxnpu.compile':>18} {'jax.jit lower+compile':>22}")
    for name, ours, xla in compiles:
        xla_ms = f"{xla * 1e3:19.0f} ms" if xla == xla else f"{'-':>22}"  # NaN: no XLA counterpart
        print(f"{name:24} {ours * 1e3:15.0f} ms {xla_ms}")
    ok = ratio_mlp >= args.min_ratio and int8_ok
    print(f"\ndigits MLP at batch {BATCHES[-1]}: NPU/jax.jit throughput {ratio_mlp:.3f} (bound >= {args.min_ratio}): "
          f"{'OK' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
