"""Trace a Flax model to a jaxpr with its parameters as arguments and a symbolic batch axis.

The batch axis is found with jax's shape polymorphism (jax.export.symbolic_shape): the input is traced
with a leading dimension "b", so every value's shape says exactly how it depends on the batch: a
leading "b" is a per-item tensor, no "b" is batch-invariant (foldable into the weights), and "64*b" or a
"b" elsewhere is a layout the scaled-segment format cannot express. This is exact, needs one trace, and
cannot be fooled by a feature dimension that happens to equal the batch size (as comparing two
concrete traces can).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import flax
import jax
import numpy as np
from flax import linen, nnx
from jax import export
from jax._src import source_info_util
from jax._src.interpreters import partial_eval as pe
from jax.extend import core

from pyflaxnpu.errors import CompileError

_SKIP_DIRS = tuple(os.path.dirname(m.__file__) + os.sep for m in (flax, jax))
_OWN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


@dataclass
class Traced:
    """A traced model: the jaxpr, its parameter leaves, and how to name where each eqn came from."""

    jaxpr: core.ClosedJaxpr
    params: list[tuple[str, Any]]       # (path, array) per parameter invar, in invar order
    batch: Any                          # the symbolic batch dimension
    item_shape: tuple[int, ...]         # input shape without the batch axis
    out_tree: Any                       # pytree of output indices (ints), for the manifest
    name: str
    module_path: Callable[[str], str]   # name stack string -> Flax module path
    item_dtype: str = "float32"         # "int32": token ids, only an embedding lookup may read them


def trace(module: Any, variables: Any, example_input: Any) -> Traced:
    x = np.asarray(example_input)
    if x.ndim < 1:
        raise CompileError(f"example_input has shape {x.shape}: it needs a leading batch axis, e.g. "
                           "x[None] for a single example")
    if x.dtype not in (np.float32, np.int32):
        raise CompileError(f"example_input is {x.dtype}: the NPU program takes float32 inputs (or int32 "
                           "token ids for an embedding); pass x.astype(np.float32)")
    (b,) = export.symbolic_shape("b")
    spec = jax.ShapeDtypeStruct((b, *x.shape[1:]), x.dtype)
    if isinstance(module, nnx.Module):
        if variables is not None:
            raise CompileError("an nnx.Module carries its own parameters: pass variables=None")
        graphdef, state = nnx.split(module)

        def fn(state: Any, x: Any) -> Any:
            model = nnx.merge(graphdef, state)
            with _nnx_scopes(model):
                return model(x)

        params, path_of = state, _nnx_path
    elif isinstance(module, linen.Module):
        if variables is None:
            raise CompileError("a flax.linen Module needs its variables: compile(model, "
                               "model.init(key, x), x)")
        params, path_of = variables, _linen_path

        def fn(variables: Any, x: Any) -> Any:
            return module.apply(variables, x)
    else:
        raise CompileError(f"compile() takes a flax.linen or flax.nnx Module, got {type(module).__name__}")
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    try:
        closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(params, spec)
    except export.InconclusiveDimensionOperation as e:
        raise CompileError(
            f"the model's code depends on the batch size ({str(e).splitlines()[0]}); the program runs any "
            "batch size, so keep shape arithmetic per example, e.g. x.reshape(x.shape[0], -1)") from None
    closed = _drop_unused(closed)
    out_leaves, treedef = jax.tree_util.tree_flatten(out_shape)
    tree = jax.tree_util.tree_unflatten(treedef, list(range(len(out_leaves))))
    named = [(jax.tree_util.keystr(p, simple=True, separator="/"), v) for p, v in leaves]
    return Traced(closed, named, b, tuple(x.shape[1:]), tree, type(module).__name__, path_of, str(x.dtype))


def _drop_unused(closed: core.ClosedJaxpr) -> core.ClosedJaxpr:
    """Drop equations no output depends on (x[..., 0] only read for its shape, e.g. by make_causal_mask):
    left in, they would be lowered, or refused, for nothing. Every input is kept: params are positional."""
    jaxpr, _ = pe.dce_jaxpr(closed.jaxpr, [True] * len(closed.jaxpr.outvars), instantiate=True)
    return core.ClosedJaxpr(jaxpr, closed.consts)


def _linen_path(stack: str) -> str:
    # Linen scopes are "<TopClass>/Dense_0/...": the top-level class is not part of the variables path.
    parts = [p for p in stack.split("/") if p]
    return "/".join(parts[1:])


def _nnx_path(stack: str) -> str:
    # _nnx_scopes opens one scope per submodule named by its full attribute path: the innermost wins.
    parts = [p for p in stack.split("/") if p]
    return parts[-1] if parts else ""


@contextlib.contextmanager
def _nnx_scopes(model: nnx.Module) -> Iterator[None]:
    """Open a jax.named_scope named after each submodule's attribute path while it runs.

    NNX, unlike Linen, does not name its modules in the jaxpr's name stack; without this every op would
    be anonymous in the program report. The wrappers are installed on the classes only for the trace.
    """
    paths = {id(m): ".".join(str(k) for k in path) for path, m in nnx.iter_modules(model) if path}
    classes = {type(m) for _, m in nnx.iter_modules(model)}
    saved = {cls: cls.__dict__.get("__call__") for cls in classes}

    def wrap(call: Callable[..., Any]) -> Callable[..., Any]:
        def scoped(self: Any, *args: Any, **kwargs: Any) -> Any:
            path = paths.get(id(self))
            if not path:
                return call(self, *args, **kwargs)
            with jax.named_scope(path):
                return call(self, *args, **kwargs)
        return scoped

    try:
        for cls in classes:
            if callable(getattr(cls, "__call__", None)):  # noqa: B004 -- a method, not "is callable"
                cls.__call__ = wrap(cls.__call__)
        yield
    finally:
        for cls, original in saved.items():
            if original is None:
                with contextlib.suppress(AttributeError):
                    del cls.__call__
            else:
                cls.__call__ = original


def source_line(eqn: core.JaxprEqn) -> str | None:
    """file:line of the model code that produced eqn: the innermost frame outside jax, flax and us."""
    for frame in source_info_util.user_frames(eqn.source_info.traceback):
        name = frame.file_name
        if name.startswith(_SKIP_DIRS) or os.path.abspath(name).startswith(_OWN_DIR):
            continue
        return f"{name}:{frame.start_line}"
    return None
