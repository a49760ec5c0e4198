"""CPU fallback: equations the NPU cannot run become host segments run with jax between device jobs.

With compile(..., fallback="auto") the lowering interpreter hands every input-dependent equation to
HostLowering.lower: it tries the NPU rule, and when there is none, or the rule refuses these shapes
(a CompileError from the rule, not from the batch checks), the equation becomes a HostOp in the op
list instead. A HostOp looks like an IR op to the fusion passes (it reads its srcs, writes its outputs,
and matches no pattern: opcode and act are None), so fusion never moves work across it.

After fusion, merge() joins each run of consecutive HostOps into one host segment; export() turns a
segment into a jax.export'ed function of its boundary tensors with a symbolic batch axis, serialized
into the program. Values that never leave a segment stay inside the function; values crossing a
device/host boundary live in the arena (or the input/output segment) like any other tensor, with their
own dtype (a CPU-side int32 or bool never reaches an NPU op: an equation reading one runs on the CPU).
"""

from __future__ import annotations

import base64
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import export
from jax.extend import core

from pyflaxnpu.compiler import cost
from pyflaxnpu.compiler.ir import Buffer, Graph, Op, Provenance, Tensor
from pyflaxnpu.compiler.lower import BView, Const, batch_axis, item_shape
from pyflaxnpu.errors import CompileError

FALLBACKS = ("auto", "error")


@dataclass(eq=False)
class HostBuffer(Buffer):
    """A buffer written by the CPU: like any activation, plus its dtype (not always float32)."""

    dtype: str = "float32"


def dtype_of(buf: Buffer) -> str:
    return buf.dtype if isinstance(buf, HostBuffer) else "float32"


@dataclass
class ConstIn:
    """A batch-invariant operand, baked into the exported function (broadcast to its jaxpr shape)."""

    value: Any
    aval: Any


@dataclass
class TensorIn:
    """Operand = srcs[src] seen with per-item shape `shape`, broadcast to `target` when it differs."""

    src: int
    shape: tuple[int, ...]
    target: tuple[int, ...]


@dataclass(eq=False)
class Step:
    """One jaxpr equation run on the CPU, with why the NPU could not run it."""

    eqn: core.JaxprEqn
    ins: list[ConstIn | TensorIn]
    srcs: list[Tensor]
    outs: list[Tensor]
    prov: Provenance
    reason: str


_uid = itertools.count(1)


class HostOp(Op):
    """A CPU op in the graph: one equation while lowering, one whole host segment after merge()."""

    def __init__(self, steps: list[Step], srcs: list[Tensor], outs: list[Tensor]) -> None:
        prov = steps[0].prov
        for s in steps[1:]:
            prov = prov.merge(s.prov)
        # opcode/act None: no fusion pattern matches, and no op's activation is fused into this one.
        # params holds a unique id so that CSE never merges two of them.
        super().__init__(None, [], srcs, outs[0], prov, None, [next(_uid)])  # type: ignore[arg-type]
        self.steps = steps
        self.outs = outs
        self.blob: str | None = None

    def writes(self) -> list[Buffer]:
        return [t.buf for t in self.outs]


def is_host(op: Op) -> bool:
    return isinstance(op, HostOp)


# ---------------------------------------------------------------------------------------- lowering hook
@dataclass
class HostLowering:
    """What lower.Lowering calls for each input-dependent equation when fallback is "auto"."""

    batch: Any
    steps: list[Step] = field(default_factory=list)

    def lower(self, lw: Any, eqn: core.JaxprEqn, ins: list[Any], rule: Any) -> list[Any]:
        prim = eqn.primitive.name
        lw.check_batch(eqn)  # batch-mixing is refused everywhere: a chunked batch would change results
        _check_axes(lw, eqn)
        foreign = [dtype_of(v.buf if isinstance(v, Tensor) else v.src.buf) for v in ins
                   if isinstance(v, (Tensor, BView))]
        foreign = [d for d in foreign if d != "float32"]
        if rule is None:
            reason = f"no NPU lowering for {prim}"
        elif foreign:
            reason = f"{prim} reads {foreign[0]} values computed on the CPU; the NPU computes in float32 only"
        else:
            mark = len(lw.ops)
            try:
                return rule(lw, eqn, ins)
            except CompileError as e:
                del lw.ops[mark:]  # a rule may have emitted ops before it refused
                reason = _problem(str(e), prim)
        srcs: list[Tensor] = []
        specs: list[ConstIn | TensorIn] = []
        for atom, v in zip(eqn.invars, ins, strict=True):
            aval = atom.aval
            if isinstance(v, Const):
                specs.append(ConstIn(np.asarray(v.value), aval))
                continue
            t = v.src if isinstance(v, BView) else v
            target = item_shape(atom)
            specs.append(TensorIn(len(srcs), tuple(t.shape), target))
            srcs.append(Tensor(t.buf, t.shape))
        outs = []
        for var in eqn.outvars:
            shape = item_shape(var)
            dt = np.dtype(var.aval.dtype)
            buf = HostBuffer(lw._label(), dt.itemsize * math.prod(shape), "act", dtype=dt.name)
            outs.append(Tensor(buf, shape))
        step = Step(eqn, specs, srcs, outs, lw.prov, reason)
        lw.ops.append(HostOp([step], srcs, outs))
        return list(outs)


_AXIS_PARAMS = ("axis", "axes", "dimension", "dimensions")


def _check_axes(lw: Any, eqn: core.JaxprEqn) -> None:
    """Refuse an equation that works along the batch axis without changing shapes (sort or cumsum over
    axis 0): the runtime splits large batches into jobs, so its result would depend on the split."""
    var = next((a for a in eqn.invars if isinstance(a, core.Var) and any(map(export.is_symbolic_dim, a.aval.shape))),
               None)
    batch = 0 if var is None else batch_axis(var)
    for key in _AXIS_PARAMS:
        v = eqn.params.get(key)
        axes = v if isinstance(v, (tuple, list)) else (v,)
        if any(isinstance(a, int) and not isinstance(a, bool) and a == batch for a in axes):
            raise lw.error(f"works along the batch axis ({key}={v}); one program runs every batch size in "
                           "jobs of any size, so compute it per example (e.g. axis=-1), or on the host after "
                           "the model")


def _problem(message: str, prim: str) -> str:
    """A lowering error without its location prefix ("prim at file:line in module 'M': ...")."""
    head, sep, rest = message.partition(": ")
    return rest if sep and prim in head else message


# ---------------------------------------------------------------------------------------- after fusion
def check_outputs(graph: Graph) -> None:
    """A model output computed on the CPU must be float32: the program's outputs are float32 arrays."""
    for i, t in enumerate(graph.outputs):
        dt = dtype_of(t.buf)
        if dt != "float32":
            raise CompileError(f"output {i} of {graph.name} is {dt} (computed on the CPU by "
                               f"{_writer(graph, t.buf)}); program outputs are float32: return "
                               "x.astype(jnp.float32), or compute it on the host after the model")
    for op in graph.ops:
        if not is_host(op):
            for t in op.srcs:
                if t is not None and dtype_of(t.buf) != "float32":
                    raise CompileError(f"a model output is {dtype_of(t.buf)} (computed on the CPU by "
                                       f"{_writer(graph, t.buf)}); program outputs are float32: return "
                                       "x.astype(jnp.float32)")


def _writer(graph: Graph, buf: Buffer) -> str:
    for op in graph.ops:
        if isinstance(op, HostOp) and any(b is buf for b in op.writes()):
            return "'" + "', '".join(s.eqn.primitive.name for s in op.steps) + "'"
    return "?"


def merge(graph: Graph) -> None:
    """Join each run of consecutive HostOps into one segment; only values read later leave it."""
    for op in graph.ops:
        if isinstance(op, HostOp) and len(op.steps) == 1:
            op.steps[0].srcs = op.srcs  # CSE may have re-pointed srcs at an equal buffer
    merged: list[Op] = []
    for is_h, group in itertools.groupby(graph.ops, key=is_host):
        run = list(group)
        if not is_h:
            merged.extend(run)
            continue
        steps = [s for h in run for s in h.steps]  # type: ignore[attr-defined]
        inside = {id(t.buf) for s in steps for t in s.outs}
        srcs: dict[int, Tensor] = {}
        for s in steps:
            for t in s.srcs:
                if id(t.buf) not in inside:
                    srcs.setdefault(id(t.buf), Tensor(t.buf, (t.buf.nbytes // _itemsize(t.buf),)))
        merged.append(HostOp(steps, list(srcs.values()), [t for s in steps for t in s.outs]))
    graph.ops[:] = merged
    # Outputs nobody reads after the segment stay inside it.
    for i, op in enumerate(graph.ops):
        if isinstance(op, HostOp):
            later = [o for o in graph.ops[i + 1:]]
            used = [t for t in op.outs if graph.is_output(t.buf) or any(t.buf in o.reads() for o in later)]
            op.outs = used
            if used:
                op.dst = used[0]
    graph.ops[:] = [op for op in graph.ops if not (isinstance(op, HostOp) and not op.outs)]


def _itemsize(buf: Buffer) -> int:
    return np.dtype(dtype_of(buf)).itemsize


def export_segments(graph: Graph, batch: Any) -> None:
    """Serialize each host segment's function with jax.export (symbolic batch axis)."""
    for op in graph.ops:
        if isinstance(op, HostOp):
            op.blob = base64.b64encode(_export(op, batch)).decode("ascii")


def _export(op: HostOp, batch: Any) -> bytes:
    inputs = [t.buf for t in op.srcs]
    outputs = list(op.outs)

    def fn(*args: Any) -> tuple[Any, ...]:
        env: dict[int, Any] = {id(buf): a for buf, a in zip(inputs, args, strict=True)}
        for step in op.steps:
            vals = []
            for atom, spec in zip(step.eqn.invars, step.ins, strict=True):
                if isinstance(spec, ConstIn):
                    v = jnp.asarray(spec.value, dtype=spec.aval.dtype)
                    if v.shape != spec.aval.shape:
                        v = jnp.broadcast_to(v, spec.aval.shape)
                else:
                    v = env[id(step.srcs[spec.src].buf)].reshape((batch, *spec.shape))
                    if spec.shape != spec.target:
                        v = jnp.broadcast_to(v, (batch, *spec.target))
                    if batch_axis(atom):   # axes of size 1 in front of the batch axis: the same bytes
                        v = v.reshape([batch if export.is_symbolic_dim(d) else d for d in atom.aval.shape])
                vals.append(v)
            # What jax's own eval_jaxpr does with an equation (older jax also returned sub-functions).
            params = step.eqn.primitive.get_bind_params(step.eqn.params)
            subfuns, params = params if isinstance(params, tuple) else ([], params)
            with step.eqn.ctx.manager:
                out = step.eqn.primitive.bind(*subfuns, *vals, **params)
            for t, o in zip(step.outs, out if step.eqn.primitive.multiple_results else [out], strict=True):
                env[id(t.buf)] = o
        return tuple(env[id(t.buf)].reshape((batch, *t.shape)) for t in outputs)

    specs = [jax.ShapeDtypeStruct((batch, buf.nbytes // _itemsize(buf)), np.dtype(dtype_of(buf)))
             for buf in inputs]
    try:
        exported = export.export(jax.jit(fn))(*specs)
    except Exception as e:
        prims = ", ".join(s.eqn.primitive.name for s in op.steps)
        raise CompileError(f"cannot export the CPU segment ({prims}) from module "
                           f"'{op.prov.module or '-'}' with a symbolic batch axis: {e}") from None
    return bytes(exported.serialize())


# ---------------------------------------------------------------------------------------- emission
def device_graph(graph: Graph) -> Graph:
    """The same graph with only the NPU ops: what the op stream holds."""
    return Graph([op for op in graph.ops if not is_host(op)], graph.input, graph.outputs, graph.out_tree,
                 graph.name)


def require_device(graph: Graph) -> None:
    if all(is_host(op) for op in graph.ops):
        prims = sorted({s.eqn.primitive.name for op in graph.ops if isinstance(op, HostOp) for s in op.steps})
        raise CompileError(f"no part of {graph.name} runs on the NPU (everything is CPU fallback: "
                           f"{', '.join(prims)}); run this model with jax.jit instead")


def annotate(manifest: dict[str, Any], graph: Graph, device: Graph, plan: Any) -> None:
    """Add what the report needs to the op records, and the segments when some ops run on the CPU."""
    for meta, op in zip(manifest["ops"], device.ops, strict=True):
        meta["shape"] = list(op.dst.shape)
        meta["activation_bytes"] = op.dst.buf.nbytes
        meta["cycles"] = [cost.scaled_cycles(int(op.opcode), list(op.dims), 1, int(op.act), op.bias, b,
                                             list(op.params), op.residual, op.quant)
                          for b in (1, cost.PER_ITEM_BATCH)]
    if not any(is_host(op) for op in graph.ops):
        return
    index = {id(op): i for i, op in enumerate(device.ops)}

    def where(t: Tensor) -> dict[str, Any]:
        dt = dtype_of(t.buf)
        return {"name": t.buf.name, "shape": list(t.shape), "dtype": dt, "seg": plan.seg[id(t.buf)],
                "offset": plan.offset[id(t.buf)], "size": np.dtype(dt).itemsize * math.prod(t.shape)}

    segments: list[dict[str, Any]] = []
    blobs: list[str] = []
    for is_h, group in itertools.groupby(graph.ops, key=is_host):
        run = list(group)
        if not is_h:
            segments.append({"kind": "npu", "first": index[id(run[0])], "last": index[id(run[-1])] + 1})
            continue
        for op in run:
            assert isinstance(op, HostOp) and op.blob is not None
            blobs.append(op.blob)
            segments.append({"kind": "cpu", "blob": len(blobs) - 1,
                             "inputs": [where(t) for t in op.srcs], "outputs": [where(t) for t in op.outs],
                             "eqns": [_step_meta(s) for s in op.steps]})
    manifest["segments"] = segments
    manifest["host_blobs"] = blobs


def _step_meta(step: Step) -> dict[str, Any]:
    const_bytes = sum(int(np.asarray(s.value).nbytes) for s in step.ins if isinstance(s, ConstIn))
    return {"primitive": step.eqn.primitive.name, "reason": step.reason, "module": step.prov.module,
            "source": step.prov.source, "shapes": [list(t.shape) for t in step.outs],
            "dtypes": [dtype_of(t.buf) for t in step.outs],
            "activation_bytes": sum(t.buf.nbytes for t in step.outs), "weight_bytes": const_bytes}
