"""What the compiler refuses, and that each refusal names the problem, the model line and the fix.

compile() runs what the NPU cannot on the CPU by default (fallback="auto", test_compiler_fallback.py);
these are the refusals of fallback="error", and the batch rules that hold in both modes.
"""

from __future__ import annotations

import inspect

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pyflaxnpu.compiler import compile as _compile
from pyflaxnpu.errors import CompileError, UnsupportedPrimitiveError


def compile(module, variables, x):
    return _compile(module, variables, x, fallback="error")


def _line(fn) -> int:
    """The line number of the statement marked `# <-` inside fn."""
    src, start = inspect.getsourcelines(fn)
    return start + next(i for i, s in enumerate(src) if "# <-" in s)


class Sorts(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(4)(x)
        return jnp.sort(x)  # <-


class Cumsums(nnx.Module):
    def __init__(self) -> None:
        self.lin = nnx.Linear(3, 4, rngs=nnx.Rngs(0))

    def __call__(self, x):
        return jax.lax.cumsum(self.lin(x), axis=1)  # <-


def test_sort_in_linen_names_primitive_line_and_fix():
    m = Sorts()
    v = m.init(jax.random.key(0), jnp.ones((1, 3)))
    with pytest.raises(UnsupportedPrimitiveError) as e:
        compile(m, v, np.ones((2, 3), np.float32))
    msg = str(e.value)
    assert "'sort'" in msg
    assert f"test_compiler_errors.py:{_line(Sorts.__call__)}" in msg
    assert "Rewrite" in msg and "host" in msg


def test_cumsum_in_nnx_names_primitive_module_and_line():
    with pytest.raises(UnsupportedPrimitiveError) as e:
        compile(Cumsums(), None, np.ones((2, 3), np.float32))
    msg = str(e.value)
    assert "'cumsum'" in msg
    assert f"test_compiler_errors.py:{_line(Cumsums.__call__)}" in msg


class Fn(nn.Module):
    fn: object

    @nn.compact
    def __call__(self, x):
        return self.fn(nn.Dense(6)(x))


@pytest.mark.parametrize(("fn", "words"), [
    (lambda x: x.reshape(-1), "mixes the batch axis"),
    (lambda x: x.sum(axis=0), "without the batch axis"),
    (lambda x: x.mean(), "batch"),
    (lambda x: x - x.mean(axis=0), "uses the batch size as a value"),
    (lambda x: x * x.shape[0], "uses the batch size as a value"),
    (lambda x: x.T, "batch axis"),
    (lambda x: x[:, :3], "gather"),
    (lambda x: jnp.where(x > 0, x, 2 * x), "gt"),
    (lambda x: x @ x.T, "batch axis"),
    (lambda x: jnp.argmax(x, axis=-1), "argmax"),
    (lambda x: jnp.broadcast_to(x, (2, *x.shape)), "mixes the batch axis into axis 1"),
    (lambda x: x[None], r"shape \(1, b, 6\): program outputs keep the batch axis first"),
])
def test_batch_mixing_and_unsupported_layouts_are_refused(fn, words):
    m = Fn(fn)
    v = m.init(jax.random.key(0), jnp.ones((1, 5)))
    with pytest.raises(CompileError, match=words):
        compile(m, v, np.ones((2, 5), np.float32))


def test_wrong_arguments_are_named():
    m = Fn(lambda x: x)
    v = m.init(jax.random.key(0), jnp.ones((1, 5)))
    with pytest.raises(CompileError, match="variables"):
        compile(m, None, np.ones((2, 5), np.float32))
    with pytest.raises(CompileError, match="float32"):
        compile(m, v, np.ones((2, 5), np.int32))
    with pytest.raises(CompileError, match="variables=None"):
        compile(Cumsums(), {}, np.ones((2, 3), np.float32))
    with pytest.raises(CompileError, match="Module"):
        compile(lambda x: x, None, np.ones((2, 3), np.float32))
