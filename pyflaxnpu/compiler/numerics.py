"""What each FUNC and BINOP computes, in numpy (float64): the fusion pass matches patterns with it."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from flaxnpu_abi.prog import BINOP, FUNC

_erf = np.frompyfunc(math.erf, 1, 1)


def erf(x: np.ndarray) -> np.ndarray:
    return _erf(x).astype(np.float64)


FUNCS: dict[FUNC, Callable[[np.ndarray], np.ndarray]] = {
    FUNC.NONE: lambda x: x,
    FUNC.RELU: lambda x: np.maximum(x, 0),
    FUNC.GELU_TANH: lambda x: 0.5 * x * (1 + np.tanh(0.7978845608028654 * (x + 0.044715 * x**3))),
    FUNC.GELU_ERF: lambda x: 0.5 * x * (1 + erf(x / math.sqrt(2))),
    FUNC.TANH: np.tanh,
    FUNC.SIGMOID: lambda x: 1 / (1 + np.exp(-x)),
    FUNC.EXP: np.exp,
    FUNC.LOG: np.log,
    FUNC.NEG: np.negative,
    FUNC.SQRT: np.sqrt,
    FUNC.RSQRT: lambda x: 1 / np.sqrt(x),
    FUNC.SQUARE: np.square,
    FUNC.ABS: np.abs,
    FUNC.ERF: erf,
}

BINOPS: dict[BINOP, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    BINOP.ADD: np.add, BINOP.SUB: np.subtract, BINOP.MUL: np.multiply, BINOP.DIV: np.divide,
    BINOP.MAX: np.maximum, BINOP.MIN: np.minimum, BINOP.POW: np.power,
}

# Where activations are told apart: both signs, the GELU knee, and values that saturate.
PROBE = np.concatenate([np.linspace(-9.0, 9.0, 1801), [0.0, 1e-4, -1e-4, 20.0, -20.0]])


def same_function(got: np.ndarray, func: FUNC) -> bool:
    with np.errstate(all="ignore"):
        want = FUNCS[func](PROBE)
        return bool(np.allclose(got, want, rtol=2e-6, atol=1e-7, equal_nan=True))
