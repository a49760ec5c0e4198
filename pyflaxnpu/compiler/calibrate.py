"""Calibration for int8 quantization: run programs on the in-process simulator over the user's batches.

The float program runs with probes (quantize.add_probes) to find each activation's range; the int8
program then runs on the same batches and is compared with the float outputs for the compile report.
Both run on the simulator, the reference for the device's arithmetic, so the error reported is the
error the NPU will have, host segments included.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from pyflaxnpu.errors import CompileError
from pyflaxnpu.program import Program


def batches(calibration: Any, item_shape: tuple[int, ...], dtype: np.dtype) -> list[np.ndarray]:
    """The calibration data as a list of [B, *item_shape] arrays: one array, or an iterable of them."""
    if calibration is None:
        raise CompileError('quantize="int8" needs calibration data: pass calibration=x (an array '
                           f"[batch, {', '.join(map(str, item_shape))}]) or an iterable of such batches, "
                           "a few hundred representative inputs")
    items = [calibration] if hasattr(calibration, "shape") else calibration  # numpy or jax: one batch
    if not isinstance(items, Iterable):
        raise CompileError(f"calibration must be an array or an iterable of arrays, got {type(calibration).__name__}")
    out = []
    for i, b in enumerate(items):
        a = np.asarray(b)
        if a.shape[1:] != item_shape or a.shape[0] == 0:
            raise CompileError(f"calibration batch {i} has shape {a.shape}; the model's input is "
                               f"(batch, {', '.join(map(str, item_shape))}) with batch >= 1")
        out.append(np.ascontiguousarray(a, dtype=dtype))
    if not out:
        raise CompileError("calibration is empty: give at least one batch of representative inputs")
    return out


def run(program: Program, data: list[np.ndarray]) -> list[list[np.ndarray]]:
    """Every output of `program` for every batch: result[output][batch]."""
    from pyflaxnpu.runtime.device import open as open_device

    with open_device("sim") as dev:
        model = dev.load(program)
        results = [model(b) for b in data]
    per_batch = [list(r) if isinstance(r, tuple) else [r] for r in results]
    return [list(col) for col in zip(*per_batch, strict=True)]


def amax(arrays: list[np.ndarray]) -> float:
    return float(max(np.max(np.abs(a)) if a.size else 0.0 for a in arrays))


def accuracy(names: list[str], floats: list[list[np.ndarray]], quants: list[list[np.ndarray]]) -> list[dict]:
    """Per output: the int8 program's error against the float program on the calibration data."""
    out = []
    for name, f, q in zip(names, floats, quants, strict=True):
        fa = np.concatenate([a.reshape(len(a), -1) for a in f]).astype(np.float64)
        qa = np.concatenate([a.reshape(len(a), -1) for a in q]).astype(np.float64)
        err = np.abs(qa - fa)
        entry = {"name": name, "items": len(fa), "max_abs_error": float(err.max(initial=0.0)),
                 "rms_error": float(np.sqrt(np.mean(err ** 2))) if err.size else 0.0,
                 "float_rms": float(np.sqrt(np.mean(fa ** 2))) if fa.size else 0.0}
        if fa.shape[1] > 1:  # class scores: how often the int8 program picks the float program's class
            entry["top1_agreement"] = float(np.mean(fa.argmax(axis=1) == qa.argmax(axis=1)))
        out.append(entry)
    return out
