"""Lower a traced jaxpr to the graph IR, one JAX primitive at a time, through ONE registry.

The interpreter walks the jaxpr in order. An eqn whose inputs are all batch-invariant (parameters,
literals, and what is computed from them alone) is evaluated right here with jax, so BatchNorm-style
parameter math and broadcasts of parameters end up as weights (constant folding). An eqn that depends on
the input goes to its rule in REGISTRY; a primitive without a rule is an UnsupportedPrimitiveError that
names it, the model line and module that used it, and what to do.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from flaxnpu_abi.prog import BCAST, BINOP, FUNC
from jax import export
from jax._src import source_info_util
from jax.extend import core

from pyflaxnpu.compiler.broadcast import choose_split, materialize_row, tensor_modes, weight_modes
from pyflaxnpu.compiler.ir import OPCODE, POOL_AVG, POOL_MAX, REDUCE, Buffer, Graph, Op, Provenance, Tensor
from pyflaxnpu.compiler.trace import Traced, source_line
from pyflaxnpu.errors import CompileError, UnsupportedPrimitiveError


@dataclass
class Const:
    """A batch-invariant value (full shape; a broadcast along the batch axis is kept as size 1)."""

    value: Any
    name: str = ""


@dataclass
class BView:
    """A per-item tensor broadcast to a larger per-item shape, not yet materialized."""

    src: Tensor   # shape: the target rank, 1 on broadcast axes
    shape: tuple[int, ...]


@dataclass
class Scaled:
    """A per-item tensor times a pending constant factor: the device computed a mean (POOL AVG) where
    jax asked for a sum. A following division by the window size cancels it; anything else writes it out."""

    src: Tensor
    factor: float


@dataclass
class Index:
    """int32 token ids from the input, on their way to an embedding lookup (jnp.take's pattern).

    jnp.take wraps negative ids (lt, add, select_n) before its gather; GATHER wraps them itself, so the
    pattern is tracked here and only the final gather becomes an op. wrap is the V of `id + V if id < 0`.
    """

    src: Tensor
    shape: tuple[int, ...]
    add: int = 0
    wrap: int = 0
    negative: bool = False   # the value is the predicate id < 0


Value = Const | Tensor | BView | Scaled | Index


class Inline:
    """A call-like primitive whose body (params[key], a ClosedJaxpr) is lowered in place."""

    def __init__(self, key: str) -> None:
        self.key = key


class Lowering:
    def __init__(self, traced: Traced) -> None:
        self.traced = traced
        self.ops: list[Op] = []
        self.prov = Provenance("", None, ())
        self._weights: dict[tuple[Any, ...], Buffer] = {}
        self._count = 0
        self.host: Any = None  # set for fallback="auto" (compiler/partition.py)

    # ------------------------------------------------------------------ interpreter
    def run(self, jaxpr: core.Jaxpr, consts: list[Any], args: list[Value], stack: Any,
            source: str | None) -> list[Value]:
        env: dict[Any, Value] = {}

        def read(atom: Any) -> Value:
            return Const(np.asarray(atom.val)) if isinstance(atom, core.Literal) else env[atom]

        env.update({v: Const(c) for v, c in zip(jaxpr.constvars, consts, strict=True)})
        env.update(dict(zip(jaxpr.invars, args, strict=True)))
        for eqn in jaxpr.eqns:
            ins = [read(a) for a in eqn.invars]
            name_stack = stack + eqn.source_info.name_stack
            src = source_line(eqn) or source
            prim = eqn.primitive.name
            self.prov = Provenance(self.traced.module_path(str(name_stack)), src, (prim,))
            rule = REGISTRY.get(prim)
            if isinstance(rule, Inline):
                body = eqn.params[rule.key]
                outs = self.run(body.jaxpr, list(body.consts), ins, name_stack, src)
            elif all(isinstance(v, Const) for v in ins):
                outs = self.fold(eqn, ins)
            elif self.host is not None:  # fallback="auto": partition.HostLowering tries the rule
                outs = self.host.lower(self, eqn, ins, rule)
            elif rule is None:
                raise UnsupportedPrimitiveError(
                    f"unsupported primitive '{prim}'{self.where()}: the NPU has no lowering for it. "
                    f"Supported: {', '.join(sorted(REGISTRY))}. Rewrite this part of the model with "
                    "supported operations, or run it on the host before or after the compiled model")
            else:
                self.check_batch(eqn)
                outs = rule(self, eqn, ins)
            env.update(dict(zip(eqn.outvars, outs, strict=True)))
        return [read(v) for v in jaxpr.outvars]

    def where(self) -> str:
        src = f" at {self.prov.source}" if self.prov.source else ""
        mod = f" in module '{self.prov.module}'" if self.prov.module else ""
        return src + mod

    def error(self, problem: str) -> CompileError:
        return CompileError(f"{self.prov.primitives[-1]}{self.where()}: {problem}")

    def unsupported(self, problem: str) -> UnsupportedPrimitiveError:
        """A primitive the NPU runs in some forms but not this one (problem says which, and the fix)."""
        return UnsupportedPrimitiveError(
            f"unsupported primitive '{self.prov.primitives[-1]}'{self.where()}: {problem}")

    def fold(self, eqn: core.JaxprEqn, ins: list[Value]) -> list[Value]:
        if eqn.primitive.name == "dim_as_value":  # jnp.mean over the batch axis divides by the batch size
            raise self.error("uses the batch size as a value (a mean over the batch axis, or x.shape[0] in "
                             "arithmetic); one program runs every batch size in jobs of any size, so compute "
                             "it per example (e.g. axis=-1), or on the host after the model")
        params = {k: self._concrete(v) for k, v in eqn.params.items()}
        out = eqn.primitive.bind(*[c.value for c in ins if isinstance(c, Const)], **params)
        outs = out if eqn.primitive.multiple_results else [out]
        # A reshaped or broadcast parameter keeps the parameter's name in the program's tensor table.
        named = [c.name for c in ins if isinstance(c, Const) and c.name]
        if len(named) == 1 and len(ins) == 1 and eqn.primitive.name in _LAYOUT:
            return [Const(outs[0], named[0])]
        return [Const(o, self._label()) for o in outs]

    def _concrete(self, v: Any) -> Any:
        # A parameter broadcast along the batch axis is the same for every item: fold it with batch 1.
        if isinstance(v, tuple):
            return tuple(self._concrete(x) for x in v)
        if export.is_symbolic_dim(v):
            if v == self.traced.batch:
                return 1
            raise self.error(
                f"uses the batch size as a value ({v}), e.g. a mean over the batch axis; one program runs "
                "every batch size, so combine batch items on the host, after the model")
        return v

    def check_batch(self, eqn: core.JaxprEqn) -> None:
        """Every result keeps the batch axis separate, with only axes of size 1 in front of it (the same
        bytes as the batch axis first: vmap puts its axis there, e.g. in jax.nn.dot_product_attention)."""
        for var in eqn.outvars:
            shape = var.aval.shape
            sym = [i for i, d in enumerate(shape) if export.is_symbolic_dim(d)]
            bad = [i for i in sym if i != sym[0] or shape[i] != self.traced.batch]
            if sym and any(shape[i] != 1 for i in range(sym[0])):
                bad.insert(0, sym[0])
            if bad:
                raise self.error(
                    f"the result has shape {_fmt(shape)}, which mixes the batch axis into axis {bad[0]}; the "
                    "program keeps the batch axis leading and separate, so reshape per example, e.g. "
                    "x.reshape(x.shape[0], -1), and keep axis 0 in place")
            if not sym:
                raise self.error(
                    f"the result has shape {_fmt(shape)} without the batch axis: it combines batch items "
                    "(e.g. a reduction or contraction over axis 0), which one program for every batch size "
                    "cannot do; compute it per example, or on the host after the model")

    # ------------------------------------------------------------------ building blocks
    def _label(self) -> str:
        self._count += 1
        return f"{self.prov.module or self.traced.name}/{self.prov.primitives[-1]}:{self._count}"

    def new_tensor(self, shape: tuple[int, ...]) -> Tensor:
        return Tensor(Buffer(self._label(), 4 * math.prod(shape), "act"), tuple(shape))

    def weight(self, value: Any, shape: tuple[int, ...] | None = None, name: str = "") -> Tensor:
        arr = np.asarray(value)
        if arr.dtype.kind != "f":
            raise self.error(f"a {arr.dtype} parameter meets the input; the NPU computes in float32 only")
        arr = np.ascontiguousarray(arr, dtype=np.float32).reshape(shape if shape is not None else arr.shape)
        key = (arr.shape, arr.tobytes())
        buf = self._weights.get(key)
        if buf is None:
            buf = Buffer(name or self._label(), arr.nbytes, "weight", arr)
            self._weights[key] = buf
        return Tensor(buf, arr.shape)

    def emit(self, opcode: OPCODE, dims: list[int], srcs: list[Tensor | None], dst: Tensor,
             params: list[int] | None = None, act: FUNC = FUNC.NONE) -> Tensor:
        self.ops.append(Op(opcode, dims, [*srcs, *[None] * (4 - len(srcs))], dst, self.prov, act,
                           params or []))
        return dst

    def tensor(self, v: Value) -> Tensor:
        """v as a stored per-item tensor: a pending broadcast is written out (x + 0)."""
        if isinstance(v, BView):
            return self.binary(BINOP.ADD, v, Const(np.float32(0)), v.shape)
        if isinstance(v, Scaled):
            return self.binary(BINOP.MUL, v.src, Const(np.float32(v.factor)), v.src.shape)
        if isinstance(v, Const):
            raise self.error("this operand must depend on the input, but it is a constant")
        if isinstance(v, Index) or v.buf.dtype != "float32":
            raise self.error("token ids (int32) are used for something other than an embedding lookup "
                             "(jnp.take / nn.Embed); the NPU computes in float32 only")
        return v

    def permute(self, t: Tensor, perm: list[int]) -> Tensor:
        """t with its per-item axes permuted (out axis i = t's axis perm[i]): a view when no data moves,
        else one TRANSPOSE over the fewest axes (size-1 axes dropped, runs that stay together merged)."""
        shape = (1, *t.shape)   # the batch axis leads, scaled by the firmware
        keep = [a for a in range(len(shape)) if a == 0 or shape[a] != 1]
        full = [0, *[p + 1 for p in perm]]
        order = [keep.index(p) for p in full if p in keep]
        groups: list[list[int]] = []
        for p in order:
            if groups and groups[-1][-1] + 1 == p:
                groups[-1].append(p)
            else:
                groups.append([p])
        out_shape = tuple(t.shape[p] for p in perm)
        if len(groups) == 1:
            return Tensor(t.buf, out_shape)
        by_input = sorted(range(len(groups)), key=lambda g: groups[g][0])
        dims = [math.prod(shape[keep[a]] for a in groups[g]) for g in by_input]
        gperm = [by_input.index(g) for g in range(len(groups))]
        if len(dims) > 6:
            raise self.error(f"permutes {len(dims)} independent axes; TRANSPOSE moves at most 6 (with the "
                             "batch axis): reshape to merge axes first")
        packed = sum(p << (4 * i) for i, p in enumerate(gperm))
        return self.emit(OPCODE.TRANSPOSE, dims, [t], self.new_tensor(out_shape), [packed, len(dims)])

    def unary(self, func: FUNC, x: Value) -> Tensor:
        t = self.tensor(x)
        return self.emit(OPCODE.UNARY, [t.size], [t], self.new_tensor(t.shape), [int(func)])

    def binary(self, op: BINOP, a: Value, b: Value, shape: tuple[int, ...]) -> Tensor:
        n = len(shape)
        items = [self._operand(v, n) for v in (a, b)]
        for copy in (False, True):
            options = [tensor_modes(e, shape) if isinstance(v, Tensor) else weight_modes(e, shape, copy)
                       for v, e in items]
            k = choose_split(options, n)
            if k is not None:
                break
        else:
            raise self.error(f"operand shapes {[e for _, e in items]} broadcast to {shape} in a way "
                             "BINARY's row/column/scalar modes cannot express")
        srcs, modes = [], []
        for (v, e), opts in zip(items, options, strict=True):
            mode = opts[k]
            if isinstance(v, Tensor):
                srcs.append(Tensor(v.buf, v.shape))
            elif mode == BCAST.SCALAR:
                srcs.append(self.weight(np.asarray(v.value).reshape(1), name=v.name))
            else:
                srcs.append(self.weight(materialize_row(np.asarray(v.value).reshape(e), shape, k),
                                        name=v.name))
            modes.append(int(mode))
        dims = [math.prod(shape[:k]), math.prod(shape[k:])]
        return self.emit(OPCODE.BINARY, dims, srcs, self.new_tensor(shape), [int(op), *modes])

    def _operand(self, v: Value, n: int) -> tuple[Const | Tensor, tuple[int, ...]]:
        """A BINARY operand and its per-item shape at the output's rank."""
        if isinstance(v, (Scaled, Index)):
            v = self.tensor(v)
        if isinstance(v, BView):
            return v.src, v.src.shape
        if isinstance(v, Tensor):
            return v, v.shape
        arr = np.asarray(v.value)
        if arr.ndim == 0:
            return Const(arr.reshape((1,) * n), v.name), (1,) * n
        if arr.ndim != n + 1 or arr.shape[0] != 1:
            raise self.error(f"a constant of shape {arr.shape} meets a per-item tensor of rank {n}")
        return Const(arr.reshape(arr.shape[1:]), v.name), tuple(arr.shape[1:])


_LAYOUT = {"reshape", "broadcast_in_dim", "convert_element_type", "squeeze", "expand_dims", "transpose"}


def _fmt(shape: tuple[Any, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def batch_axis(var: Any) -> int:
    """Where a per-item value's batch axis is: 0, or behind axes of size 1 (Lowering.check_batch)."""
    return next(i for i, d in enumerate(var.aval.shape) if export.is_symbolic_dim(d))


def item_shape(var: Any) -> tuple[int, ...]:
    """A per-item value's shape without its batch axis: the per-item tensor's shape (Tensor.shape)."""
    p = batch_axis(var)
    shape = var.aval.shape
    return tuple(int(d) for d in (*shape[:p], *shape[p + 1:]))


def item_axis(var: Any, axis: int) -> int:
    """Axis `axis` of var's full shape (not its batch axis) as an axis of its per-item tensor."""
    return axis - (axis > batch_axis(var))


def require_batch_first(lw: Lowering, eqn: core.JaxprEqn) -> None:
    """Rules whose parameters count axes with the batch axis at 0 (windows, gathers) refuse other layouts."""
    for var in [*eqn.invars, *eqn.outvars]:
        if isinstance(var, core.Var) and any(export.is_symbolic_dim(d) for d in var.aval.shape) \
                and batch_axis(var) != 0:
            raise lw.unsupported(f"an operand of shape {_fmt(var.aval.shape)} has axes in front of the batch "
                                 "axis, which this operation cannot take on the NPU; keep the batch axis first")


# ---------------------------------------------------------------------------------------- rules
Rule = Callable[[Lowering, core.JaxprEqn, list[Value]], list[Value]]


def _identity(lw: Lowering, eqn: core.JaxprEqn, ins: list[Value]) -> list[Value]:
    v = _as_index(ins[0])
    if eqn.primitive.name == "convert_element_type":
        to = np.dtype(eqn.params["new_dtype"])
        if isinstance(v, Index) and to == np.int32:
            return [v]
        if to != np.float32 or isinstance(v, Index):
            what = "token ids" if isinstance(v, Index) else "a value"
            raise lw.error(f"conversion of {what} to {to}: the NPU computes in float32 only (int32 token ids "
                           "may only index an embedding)")
    return [v]


def _unary(func: FUNC) -> Rule:
    return lambda lw, eqn, ins: [lw.unary(func, ins[0])]


def _binary(op: BINOP) -> Rule:
    def rule(lw: Lowering, eqn: core.JaxprEqn, ins: list[Value]) -> list[Value]:
        a, b = ins
        if any(isinstance(v, Index) or (isinstance(v, Tensor) and v.buf.dtype == "int32") for v in ins):
            return [_index_add(lw, a, b) if op == BINOP.ADD else lw.tensor(_as_index(a))]
        if isinstance(a, Scaled) and isinstance(b, Const) and np.size(b.value) == 1 and op in (
                BINOP.DIV, BINOP.MUL):
            c = float(np.asarray(b.value).reshape(()))
            factor = a.factor / c if op == BINOP.DIV else a.factor * c
            # avg_pool and mean divide the window sum by its size: the POOL AVG / REDUCE MEAN result.
            return [a.src if np.float32(factor) == np.float32(1) else Scaled(a.src, factor)]
        return [lw.binary(op, a, b, item_shape(eqn.outvars[0]))]
    return rule


def _as_index(v: Value) -> Value:
    return Index(v, v.shape) if isinstance(v, Tensor) and v.buf.dtype == "int32" else v


def _index_add(lw: Lowering, a: Value, b: Value) -> Value:
    a, b = _as_index(a), _as_index(b)
    if isinstance(b, Index):
        a, b = b, a
    if not (isinstance(a, Index) and isinstance(b, Const) and np.size(b.value) == 1 and not a.negative
            and a.add == 0 and a.wrap == 0):
        return lw.tensor(a)   # names the problem
    return Index(a.src, a.shape, add=int(np.asarray(b.value).reshape(())))


def _integer_pow(lw: Lowering, eqn: core.JaxprEqn, ins: list[Value]) -> list[Value]:
    y = int(eqn.params["y"])
    if y == 1:
        return ins[:1]
    if y == 2:
        return [lw.unary(FUNC.SQUARE, ins[0])]
    return [lw.binary(BINOP.POW, ins[0], Const(np.float32(y)), item_shape(eqn.outvars[0]))]


def _erfc(lw: Lowering, eqn: core.JaxprEqn, ins: list[Value]) -> list[Value]:
    erf = lw.unary(FUNC.ERF, ins[0])
    return [lw.binary(BINOP.SUB, Const(np.float32(1)), erf, erf.shape)]


def _view(lw: Lowering, eqn: core.JaxprEqn, ins: list[Value]) -> list[Value]:
    # Per-item tensors are contiguous row-major blocks, so any reshape that keeps the batch axis
    # leading (check_batch) is a new shape on the same bytes.
    if eqn.params.get("dimensions") is not None:
        raise lw.error("reshape with a 'dimensions' permutation: write it as a transpose, then a reshape")
    v = _as_index(ins[0])
    if isinstance(v, Index) and not v.negative:
        return [Index(v.src, item_shape(eqn.outvars[0]), v.add, v.wrap)]
    if isinstance(v, Scaled):
        return [Scaled(Tensor(v.src.buf, item_shape(eqn.outvars[0])), v.factor)]
    x = lw.tensor(v)
    return [Tensor(x.buf, item_shape(eqn.outvars[0]))]


def _broadcast_in_dim(lw: Lowering, eqn: core.JaxprEqn, ins: list[Value]) -> list[Value]:
    dims = eqn.params["broadcast_dimensions"]
    v = _as_index(ins[0])
    if isinstance(v, Index) and math.prod(item_shape(eqn.outvars[0])) == math.prod(v.shape):
        return [Index(v.src, item_shape(eqn.outvars[0]), v.add, v.wrap)]   # the gather's trailing 1
    x = lw.tensor(v)
    src_var, out_var = eqn.invars[0], eqn.outvars[0]
    if dims[batch_axis(src_var)] != batch_axis(out_var):
        raise lw.error("broadcast_in_dim moves the batch axis behind an axis larger than 1")
    shape = item_shape(out_var)
    e = [1] * len(shape)
    for src_axis, d in enumerate(dims):
        if src_axis != batch_axis(src_var):
            e[item_axis(out_var, d)] = x.shape[item_axis(src_var, src_axis)]
    src = Tensor(x.buf, tuple(e))
    return [src if tuple(e) == shape else BView(src, shape)]


from pyflaxnpu.compiler import lower_nn as nnr  # noqa: E402 -- its rules build on the classes above

REGISTRY: dict[str, Rule | Inline] = {
    # call-like wrappers: their bodies are lowered in place
    "jit": Inline("jaxpr"), "pjit": Inline("jaxpr"), "custom_jvp_call": Inline("call_jaxpr"),
    "custom_vjp_call": Inline("call_jaxpr"),
    # layout: views of the same bytes
    "reshape": _view, "squeeze": _view, "expand_dims": _view, "broadcast_in_dim": _broadcast_in_dim,
    "transpose": nnr.transpose,
    "stop_gradient": _identity, "copy": _identity, "copy_p": _identity, "convert_element_type": _identity,
    # MATMUL, BMM (both operands from the input), CONV2D, POOL, GATHER (embeddings)
    "dot_general": nnr.dot_general, "conv_general_dilated": nnr.conv,
    "reduce_window_max": nnr.pool(POOL_MAX), "reduce_window_sum": nnr.pool(POOL_AVG),
    "gather": nnr.gather, "lt": nnr.lt, "select_n": nnr.select_n,
    # BINARY
    "add": _binary(BINOP.ADD), "sub": _binary(BINOP.SUB), "mul": _binary(BINOP.MUL),
    "div": _binary(BINOP.DIV), "max": _binary(BINOP.MAX), "min": _binary(BINOP.MIN),
    "pow": _binary(BINOP.POW), "integer_pow": _integer_pow,
    # UNARY
    "exp": _unary(FUNC.EXP), "log": _unary(FUNC.LOG), "neg": _unary(FUNC.NEG), "sqrt": _unary(FUNC.SQRT),
    "rsqrt": _unary(FUNC.RSQRT), "tanh": _unary(FUNC.TANH), "logistic": _unary(FUNC.SIGMOID),
    "erf": _unary(FUNC.ERF), "abs": _unary(FUNC.ABS), "square": _unary(FUNC.SQUARE), "erfc": _erfc,
    # REDUCE
    "reduce_sum": nnr.reduce(REDUCE.SUM), "reduce_max": nnr.reduce(REDUCE.MAX),
    "reduce_min": nnr.reduce(REDUCE.MIN),
}


def lower(traced: Traced, host: Any = None) -> Graph:
    """The whole model as IR ops, with the input and outputs placed in their segments.

    host: a partition.HostLowering to run what the NPU cannot on the CPU, or None to refuse it.
    """
    lw = Lowering(traced)
    lw.host = host
    x = Tensor(Buffer("input", 4 * math.prod(traced.item_shape), "input", dtype=traced.item_dtype),
               traced.item_shape)
    jaxpr = traced.jaxpr
    params = [Const(v, name) for name, v in traced.params]
    outs = lw.run(jaxpr.jaxpr, list(jaxpr.consts), [*params, x], source_info_util.new_name_stack(), None)
    lw.prov = Provenance("", None, ("output",))
    tensors = []
    for i, (v, var) in enumerate(zip(outs, jaxpr.jaxpr.outvars, strict=True)):
        if isinstance(v, Const):
            raise CompileError(f"output {i} of {traced.name} does not depend on the input; return only "
                               "values computed from the input (constants can be added on the host)")
        if batch_axis(var):   # the runtime returns [batch, *per-item shape]: jax's shape only with batch first
            raise CompileError(f"output {i} of {traced.name} has shape {_fmt(var.aval.shape)}: program outputs "
                               f"keep the batch axis first; return jnp.moveaxis(y, {batch_axis(var)}, 0)")
        tensors.append(lw.tensor(v))
    graph = Graph(lw.ops, x, tensors, traced.out_tree, traced.name)
    place_outputs(graph, lw)
    return graph


def place_outputs(graph: Graph, lw: Lowering) -> None:
    """Give each output its own write-only buffer; copy when the value is also read, or is the input."""
    seen: set[int] = set()
    for i, t in enumerate(graph.outputs):
        buf = t.buf
        if buf.kind != "act" or id(buf) in seen or graph.users(buf):
            lw.prov = Provenance("", None, ("copy",))
            t = lw.emit(OPCODE.UNARY, [t.size], [t], lw.new_tensor(t.shape), [int(FUNC.NONE)])
            graph.outputs[i] = t
        seen.add(id(t.buf))
        t.buf.kind = "output"
        t.buf.name = f"output{i}" if len(graph.outputs) > 1 else "output"
