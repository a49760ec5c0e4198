#!/usr/bin/env python3
"""The main job: train a small Flax MLP on scikit-learn's bundled digits, compile it for the NPU, run the
test set on the device and compare with jax.jit on the CPU.

    python3 examples/digits.py [--device sim|auto|/dev/flaxnpu0] [--save digits.fnpu] [--epochs N]
                               [--model mlp|cnn] [--quantize int8]

Exits non-zero when the NPU's accuracy differs from jax.jit's or its logits are off by more than 1e-4;
with --quantize int8 (calibrated on 512 training images), when its accuracy is more than one point
from jax.jit's float32 accuracy.
"""

from __future__ import annotations

import argparse
import sys
import time

import flax.linen as nn
import jax
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import pyflaxnpu

LOGIT_BOUND = 1e-4
INT8_POINTS = 0.01  # int8 accuracy within one point of float


class DigitsMLP(nn.Module):
    """64 pixels -> 10 classes; Dense + relu layers are what the NPU fuses into one op each."""

    hidden: tuple[int, ...] = (128, 64)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(10)(x)


class DigitsCNN(nn.Module):
    """8x8x1 images: conv, max pool, conv, avg pool, dense; int8 runs conv-pool-conv without a float step."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Conv(8, (3, 3))(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(16, (3, 3))(x))
        x = nn.avg_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Dense(32)(x.reshape(x.shape[0], -1)))
        return nn.Dense(10)(x)


MODELS = {"mlp": (DigitsMLP, (64,), "MLP 64-128-64-10", 100), "cnn": (DigitsCNN, (8, 8, 1), "CNN 8c-16c-32-10", 30)}


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    return train_test_split(x, digits.target, test_size=0.2, stratify=digits.target, random_state=0)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, seed: int = 0) -> dict:
    """Fixed epochs and seeds, so every run trains the same weights."""
    params = model.init(jax.random.PRNGKey(seed), x[:1])
    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(params: dict, state: optax.OptState, xb: jax.Array, yb: jax.Array) -> tuple:
        def loss_fn(p: dict) -> jax.Array:
            logits = model.apply(p, xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        grads = jax.grad(loss_fn)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    rng = np.random.default_rng(seed)
    batch = 64
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for i in range(0, len(x) - batch + 1, batch):
            idx = order[i:i + batch]
            params, state = step(params, state, x[idx], y[idx])
    return params


def samples_per_second(fn: object, x: np.ndarray, min_time: float = 0.3) -> float:
    fn(x)  # warm up (jit compile, first-job translation)
    reps, start = 0, time.perf_counter()
    while True:
        fn(x)
        reps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return reps * len(x) / elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="sim", help="sim (default), auto, or a device node")
    ap.add_argument("--epochs", type=int, help="training epochs (default 100 for the MLP, 30 for the CNN)")
    ap.add_argument("--save", metavar="PATH", help="also write the compiled program to PATH")
    ap.add_argument("--model", choices=sorted(MODELS), default="mlp", help="the model to train (default mlp)")
    ap.add_argument("--quantize", choices=["int8"], help="compile to int8, calibrated on 512 training images")
    args = ap.parse_args(argv)

    cls, shape, what, epochs = MODELS[args.model]
    args.epochs = args.epochs or epochs
    x_train, x_test, y_train, y_test = (a.reshape(-1, *shape) if a.ndim == 2 else a for a in load_data())
    model = cls()
    t0 = time.perf_counter()
    variables = train(model, x_train, y_train, args.epochs)
    t_train = time.perf_counter() - t0

    t0 = time.perf_counter()
    program = pyflaxnpu.compile(model, variables, x_test[:1], quantize=args.quantize,
                                calibration=x_train[:512] if args.quantize else None)
    t_compile = time.perf_counter() - t0
    if args.save:
        program.save(args.save)
        program = pyflaxnpu.Program.load(args.save)

    ref_fn = jax.jit(lambda x: model.apply(variables, x))
    ref = np.asarray(ref_fn(x_test))
    with pyflaxnpu.open(args.device) as device:
        npu = device.load(program)
        out = npu(x_test)
        npu_rate = samples_per_second(npu, x_test)
        fw = device.info()["firmware"]
    ref_rate = samples_per_second(lambda x: ref_fn(x).block_until_ready(), x_test)

    acc_npu = float((out.argmax(1) == y_test).mean())
    acc_ref = float((ref.argmax(1) == y_test).mean())
    err = float(np.abs(out - ref).max())
    m = program.manifest
    print(f"digits: {len(x_train)} train / {len(x_test)} test samples; {what} trained "
          f"{args.epochs} epochs in {t_train:.1f} s")
    print(f"compiled in {t_compile:.2f} s: {program.op_count} device ops, {m['weights_size']:,} B weights, "
          f"{m['arena_size']:,} B arena per sample; device {args.device}, firmware {fw}")
    print()
    label = f"flaxnpu {args.device}"
    w = max(16, len(label))
    print(f"{'':{w}} {'accuracy':>9} {'samples/s':>12}")
    print(f"{'jax.jit (CPU)':{w}} {acc_ref:9.2%} {ref_rate:12,.0f}")
    print(f"{label + (' int8' if args.quantize else ''):{w}} {acc_npu:9.2%} {npu_rate:12,.0f}")
    print()
    if args.quantize:
        ok = abs(acc_npu - acc_ref) <= INT8_POINTS
        print(f"int8 accuracy {100 * (acc_npu - acc_ref):+.2f} points from float32 (bound ±{100 * INT8_POINTS:g}); "
              f"max |NPU - jax.jit| over the logits {err:.3f}: {'OK' if ok else 'FAIL'}")
        return 0 if ok else 1
    ok = acc_npu == acc_ref and err <= LOGIT_BOUND
    print(f"max |NPU - jax.jit| over the logits: {err:.2e} (bound {LOGIT_BOUND:g}): {'OK' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
