#!/usr/bin/env python3
"""Round trips and throughput through the kernel driver, measured in one guest run:

    flaxnpu vm --npus 1 -- .venv/bin/python bench/driver.py      (or: make bench-vm)

1. the raw doorbell -> interrupt round trip (sysfs ping_ns: a control NOP, no firmware in the path),
2. a NOP job through /dev/flaxnpu0: write(EXECUTE NOP) -> read(RESP_JOB) -> write(RETRIEVE) -> read(RESULT),
3. the digits MLP's samples/s through the driver next to the in-process simulator in the same guest.

Fails (exit 1) when a NOP job costs more than --max-nop-ratio pings, or when the driver's samples/s at
batch 1024 falls below --min-ratio of the in-process simulator's. Under TCG the in-guest simulator runs on
the emulated CPU while the driver's device model runs on the host, so the driver is expected to win.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
from flaxnpu_abi import uapi

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import digits

import pyflaxnpu
from pyflaxnpu.runtime.kdev import KernelDevice

BATCHES = (1, 16, 256, 1024)


def stats(samples: list[float]) -> tuple[float, float]:
    return float(np.median(samples)), float(np.percentile(samples, 99))


def ping(n: int, sysfs: Path) -> list[float]:
    return [int(sysfs.read_text()) / 1e3 for _ in range(n)]


def nop_jobs(n: int, dev: KernelDevice) -> list[float]:
    cmd = np.zeros((), uapi.CMD_EXECUTE)
    cmd["hdr"]["type"], cmd["batch"], cmd["flags"] = uapi.CMD.EXECUTE, 1, uapi.EXEC_FLAG.NOP
    ret = np.zeros((), uapi.CMD_RETRIEVE)
    ret["hdr"]["type"] = uapi.CMD.RETRIEVE
    out = []
    for _ in range(n):
        t = time.perf_counter()
        job = np.frombuffer(dev.chan.receive(dev.chan.send(cmd)), uapi.RESP_JOB, count=1)[0]["job"]
        ret["job"] = job
        dev.chan.receive(dev.chan.send(ret))
        out.append((time.perf_counter() - t) * 1e6)
    return out


def throughput(model: object, x: np.ndarray, min_time: float) -> float:
    model(x)
    reps, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_time or reps < 3:
        model(x)
        reps += 1
    return reps * len(x) / elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="/dev/flaxnpu0")
    ap.add_argument("-n", type=int, default=500, help="round trips per latency row")
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds per throughput cell")
    ap.add_argument("--max-nop-ratio", type=float, default=10.0)
    ap.add_argument("--min-ratio", type=float, default=1.0)
    args = ap.parse_args()

    name = Path(args.device).name
    sysfs = Path("/sys/class/flaxnpu") / name / "ping_ns"
    with KernelDevice(args.device) as dev:
        ping(20, sysfs)
        nop_jobs(20, dev)
        p_med, p99 = stats(ping(args.n, sysfs))
        n_med, n99 = stats(nop_jobs(args.n, dev))
    print(f"round trips on {args.device}, {args.n} each    median us    p99 us")
    print(f"  doorbell -> interrupt (ping_ns)    {p_med:10.1f} {p99:9.1f}")
    print(f"  NOP job, write -> read             {n_med:10.1f} {n99:9.1f}")

    x_train, x_test, y_train, _ = digits.load_data()
    model = digits.DigitsMLP()
    program = pyflaxnpu.compile(model, digits.train(model, x_train, y_train, epochs=3), x_test[:1])
    rng = np.random.default_rng(0)
    print(f"\ndigits MLP ({program.op_count} device ops)   driver samples/s   in-process sim samples/s   ratio")
    ratio = 0.0
    with KernelDevice(args.device) as kdev, pyflaxnpu.open("sim") as sim:
        kmodel, smodel = kdev.load(program), sim.load(program)
        for b in BATCHES:
            x = x_test[rng.integers(0, len(x_test), b)]
            k, s = throughput(kmodel, x, args.min_time), throughput(smodel, x, args.min_time)
            ratio = k / s
            print(f"  batch {b:5}               {k:16,.0f} {s:26,.0f} {ratio:7.2f}")
    nop_ok = n_med <= args.max_nop_ratio * p_med
    tp_ok = ratio >= args.min_ratio
    print(f"\nNOP job / ping = {n_med / p_med:.1f} (bound <= {args.max_nop_ratio}): {'OK' if nop_ok else 'FAIL'}")
    print(f"driver / sim samples/s at batch {BATCHES[-1]} = {ratio:.2f} (bound >= {args.min_ratio}): "
          f"{'OK' if tp_ok else 'FAIL'}")
    return 0 if nop_ok and tp_ok else 1


if __name__ == "__main__":
    sys.exit(main())
