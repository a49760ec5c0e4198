"""The vector unit's function table: FUNC_* and BINOP_* codes as float32 numpy kernels.

Everything is computed in float32, the way XLA computes the same jax.nn functions on the CPU, so results
agree with jax.jit to float32 rounding. erf comes from scipy (a jax dependency, so always installed next to
jax); without scipy math.erf is vectorised, exact but slow.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from flaxnpu_abi.prog import BINOP, FUNC, REDUCE

try:  # scipy's erf is a float32 ufunc accurate to an ulp; the fallback is correct, only slower
    from scipy.special import erf as _erf
except ImportError:  # pragma: no cover - scipy ships with jax
    _erf_scalar = np.vectorize(math.erf, otypes=[np.float64])

    def _erf(x: np.ndarray) -> np.ndarray:
        return _erf_scalar(x.astype(np.float64)).astype(np.float32)


F32 = np.float32
_SQRT_2_OVER_PI = F32(math.sqrt(2.0 / math.pi))
_INV_SQRT2 = F32(1.0 / math.sqrt(2.0))


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return F32(0.5) * x * (F32(1) + np.tanh(_SQRT_2_OVER_PI * (x + F32(0.044715) * x * x * x)))


def _gelu_erf(x: np.ndarray) -> np.ndarray:
    return F32(0.5) * x * (F32(1) + _erf(x * _INV_SQRT2))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp of a large positive argument overflows to inf and 1/inf = 0: the right limit, no warning kept.
    return F32(1) / (F32(1) + np.exp(-x))


FUNCS: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    FUNC.NONE: lambda x: x,
    FUNC.RELU: lambda x: np.maximum(x, F32(0)),
    FUNC.GELU_TANH: _gelu_tanh,
    FUNC.GELU_ERF: _gelu_erf,
    FUNC.TANH: np.tanh,
    FUNC.SIGMOID: _sigmoid,
    FUNC.EXP: np.exp,
    FUNC.LOG: np.log,
    FUNC.NEG: np.negative,
    FUNC.SQRT: np.sqrt,
    FUNC.RSQRT: lambda x: F32(1) / np.sqrt(x),
    FUNC.SQUARE: np.square,
    FUNC.ABS: np.abs,
    FUNC.ERF: _erf,
}

BINOPS: dict[int, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    BINOP.ADD: np.add,
    BINOP.SUB: np.subtract,
    BINOP.MUL: np.multiply,
    BINOP.DIV: np.divide,
    BINOP.MAX: np.maximum,
    BINOP.MIN: np.minimum,
    BINOP.POW: np.power,
}

REDUCES: dict[int, Callable[..., np.ndarray]] = {
    REDUCE.SUM: np.sum,
    REDUCE.MAX: np.max,
    REDUCE.MIN: np.min,
}


def apply_func(code: int, x: np.ndarray) -> np.ndarray:
    """FUNC `code` on a float32 array; float32 out (IEEE results for out-of-domain input, no warnings)."""
    with np.errstate(all="ignore"):
        return np.asarray(FUNCS[code](x), dtype=F32)
