"""Fusion passes over the IR: softmax, bias into MATMUL, activations into the op that produces them.

Activations are recognised by what they compute, not by how jax spelled them: a chain of elementwise
ops (UNARY, or BINARY on full tensors and scalars) with one input is evaluated on probe values and
compared with every FUNC. So relu as max(x, 0), gelu's eight-op tanh form, exact gelu via erfc, logistic
and tanh all become one `act`, whatever order or constants jax used, and a near-miss (max(x, 1e-3),
2*gelu(x)) is left alone or fused only in its matching part.
"""

from __future__ import annotations

import math

import numpy as np
from flaxnpu_abi.prog import BCAST, BINOP, FUNC

from pyflaxnpu.compiler import fold
from pyflaxnpu.compiler.ir import OPCODE, REDUCE, Buffer, Graph, Op, Tensor
from pyflaxnpu.compiler.layernorm import fuse_layernorm
from pyflaxnpu.compiler.numerics import BINOPS, FUNCS, PROBE, same_function

ACTIVATIONS = [FUNC.RELU, FUNC.GELU_TANH, FUNC.GELU_ERF, FUNC.SIGMOID, FUNC.TANH, FUNC.EXP, FUNC.LOG,
               FUNC.NEG, FUNC.SQRT, FUNC.RSQRT, FUNC.SQUARE, FUNC.ABS, FUNC.ERF]


def run(graph: Graph) -> None:
    deduplicate(graph)
    fold.fuse_mean(graph)
    fuse_softmax(graph)
    fuse_layernorm(graph)
    fold.fold_bmm_scale(graph)
    fuse_bias(graph)
    fold.fold_affine(graph)      # conv/dense bias, inference BatchNorm, constant scales
    fold.fuse_residual(graph)    # before activations: act(op + bias + src3)
    fuse_activations(graph)
    eliminate_dead(graph)


def _replace(graph: Graph, remove: list[Op], new: Op | None, at: Op) -> None:
    """Put new where `at` was and drop the `remove` ops."""
    idx = graph.ops.index(at)
    if new is not None:
        graph.ops[idx] = new
        remove = [op for op in remove if op is not at]
    for op in remove:
        graph.ops.remove(op)


def _only_users(graph: Graph, buf: Buffer, ops: list[Op]) -> bool:
    return not graph.is_output(buf) and all(any(u is o for o in ops) for u in graph.users(buf))


# ---------------------------------------------------------------------------------------- CSE
def deduplicate(graph: Graph) -> None:
    """Compute each (op, operands) once: jax repeats work the model repeats, e.g. relu(x) * relu(x)."""
    seen: dict[tuple[object, ...], Op] = {}
    for op in list(graph.ops):
        key = (op.opcode, tuple(op.dims), tuple(op.params), op.act, op.bias,
               tuple((id(t.buf), t.shape) if t is not None else None for t in op.srcs))
        first = seen.get(key)
        if first is None or graph.is_output(op.dst.buf):
            seen.setdefault(key, op)
            continue
        for user in graph.users(op.dst.buf):
            user.srcs = [Tensor(first.dst.buf, t.shape) if t is not None and t.buf is op.dst.buf else t
                         for t in user.srcs]
        graph.ops.remove(op)


# ---------------------------------------------------------------------------------------- softmax
def fuse_softmax(graph: Graph) -> None:
    """max, (max with -inf), sub, exp, sum, div over the last axis -> one SOFTMAX op."""
    for d in list(graph.ops):
        match = _match_softmax(graph, d)
        if match is None:
            continue
        x, chain = match
        order = {id(op): i for i, op in enumerate(graph.ops)}
        chain.sort(key=lambda op: order[id(op)])
        prov = chain[0].prov
        for op in chain[1:]:
            prov = prov.merge(op.prov)
        _replace(graph, chain, Op(OPCODE.SOFTMAX, list(d.dims), [x, None, None, None], d.dst, prov), d)


def _is(op: Op | None, opcode: OPCODE, param: int | None = None) -> bool:
    return op is not None and op.opcode == opcode and (param is None or op.params[0] == param)


def _match_softmax(graph: Graph, d: Op) -> tuple[Tensor, list[Op]] | None:
    if not _is(d, OPCODE.BINARY, BINOP.DIV) or d.bcast != (BCAST.FULL, BCAST.COL) or d.act != FUNC.NONE:
        return None
    e, s = d.srcs[0], d.srcs[1]
    assert e is not None and s is not None
    red_sum = graph.producer(s.buf)
    if not (_is(red_sum, OPCODE.REDUCE, REDUCE.SUM) and red_sum.dims == d.dims and red_sum.act == FUNC.NONE
            and red_sum.srcs[0].buf is e.buf):  # type: ignore[union-attr]
        return None
    exp = graph.producer(e.buf)
    chain: list[Op] = [red_sum, d]  # type: ignore[list-item]
    if _is(exp, OPCODE.UNARY, FUNC.EXP) and exp.act == FUNC.NONE:  # type: ignore[union-attr]
        chain.append(exp)  # type: ignore[arg-type]
        sub = graph.producer(exp.srcs[0].buf)  # type: ignore[union-attr]
        if sub is None or sub.act != FUNC.NONE:
            return None
    elif exp is not None and exp.act == FUNC.EXP:
        sub = exp
    else:
        return None
    if not (_is(sub, OPCODE.BINARY, BINOP.SUB) and sub.bcast == (BCAST.FULL, BCAST.COL)  # type: ignore[union-attr]
            and sub.dims == d.dims):  # type: ignore[union-attr]
        return None
    chain.append(sub)  # type: ignore[arg-type]
    x, m = sub.srcs[0], sub.srcs[1]  # type: ignore[union-attr]
    red_max = graph.producer(m.buf)  # type: ignore[union-attr]
    clamped = _clamped(red_max) if _is(red_max, OPCODE.BINARY, BINOP.MAX) else None
    if clamped is not None:
        chain.append(red_max)  # type: ignore[arg-type]
        red_max = graph.producer(clamped)
    if not (_is(red_max, OPCODE.REDUCE, REDUCE.MAX) and red_max.dims == d.dims  # type: ignore[union-attr]
            and red_max.act == FUNC.NONE and red_max.srcs[0].buf is x.buf):  # type: ignore[union-attr]
        return None
    chain.append(red_max)  # type: ignore[arg-type]
    # Every intermediate must be private to the pattern, or removing it would break another reader.
    for op in chain:
        if op is not d and not _only_users(graph, op.dst.buf, chain):
            return None
    return x, chain  # type: ignore[return-value]


def _clamped(op: Op) -> Buffer | None:
    """The tensor op clamps with max(-inf, .) (jax.nn.softmax's `initial`), or None."""
    if op.act != FUNC.NONE:
        return None
    for mode, t, other in ((op.bcast[0], op.srcs[0], op.srcs[1]), (op.bcast[1], op.srcs[1], op.srcs[0])):
        if (mode == BCAST.SCALAR and t is not None and t.buf.data is not None
                and bool(np.isneginf(t.buf.data).all()) and other is not None and other.scaled):
            return other.buf
    return None


# ---------------------------------------------------------------------------------------- bias
def fuse_bias(graph: Graph) -> None:
    """MATMUL followed by + bias row -> MATMUL with OP_FLAG.BIAS."""
    for mm in list(graph.ops):
        if mm.opcode != OPCODE.MATMUL or mm.bias or mm.act != FUNC.NONE:
            continue
        users = graph.users(mm.dst.buf)
        if len(users) != 1 or graph.is_output(mm.dst.buf):
            continue
        add = users[0]
        if not (_is(add, OPCODE.BINARY, BINOP.ADD) and add.act == FUNC.NONE
                and add.dims == [mm.dims[0], mm.dims[2]]):
            continue
        modes = add.bcast
        side = 0 if add.srcs[0].buf is mm.dst.buf else 1  # type: ignore[union-attr]
        bias = add.srcs[1 - side]
        if modes[side] != BCAST.FULL or modes[1 - side] != BCAST.ROW or bias is None or bias.scaled:
            continue
        mm.bias = True
        mm.srcs[2] = bias
        mm.dst = Tensor(add.dst.buf, mm.dst.shape)
        mm.prov = mm.prov.merge(add.prov)
        graph.ops.remove(add)


# ---------------------------------------------------------------------------------------- activations
def _elementwise(op: Op) -> bool:
    if op.opcode == OPCODE.UNARY:
        return True
    if op.opcode != OPCODE.BINARY:
        return False
    return all((m == BCAST.FULL and t is not None and t.scaled) or m == BCAST.SCALAR
               for m, t in zip(op.bcast, op.srcs[:2], strict=True))


def _eval(op: Op, env: dict[int, np.ndarray]) -> np.ndarray:
    def src(i: int) -> np.ndarray:
        t = op.srcs[i]
        assert t is not None
        return env[id(t.buf)] if t.scaled else np.float64(t.buf.data.reshape(-1)[0])  # type: ignore[union-attr]

    with np.errstate(all="ignore"):
        if op.opcode == OPCODE.UNARY:
            y = FUNCS[FUNC(op.params[0])](src(0))
        else:
            y = BINOPS[BINOP(op.params[0])](src(0), src(1))
        return FUNCS[op.act](np.broadcast_to(y, PROBE.shape))


def _region(graph: Graph, out: Op, x: Buffer) -> list[Op] | None:
    """The elementwise ops computing out from x and scalars alone, in graph order (None if impossible)."""
    region: list[Op] = []
    todo = [out]
    while todo:
        op = todo.pop()
        if any(op is r for r in region):
            continue
        region.append(op)
        for t in op.srcs[:2]:
            if t is None or not t.scaled or t.buf is x:
                continue
            prod = graph.producer(t.buf)
            if prod is None or not _elementwise(prod):
                return None
            todo.append(prod)
    order = {id(op): i for i, op in enumerate(graph.ops)}
    region.sort(key=lambda op: order[id(op)])
    for op in region:
        if op is not out and not _only_users(graph, op.dst.buf, region):
            return None
    return region


def _candidates(graph: Graph, out: Op) -> list[Buffer]:
    """Scaled buffers the elementwise ancestry of out reads, farthest first."""
    seen: list[Buffer] = []
    frontier = [out]
    while frontier:
        nxt = []
        for op in frontier:
            for t in op.srcs[:2]:
                if t is not None and t.scaled and all(t.buf is not b for b in seen):
                    seen.append(t.buf)
                    prod = graph.producer(t.buf)
                    if prod is not None and _elementwise(prod):
                        nxt.append(prod)
        frontier = nxt
    return seen[::-1]


def _match(graph: Graph, out: Op) -> tuple[Buffer, list[Op], FUNC] | None:
    for x in _candidates(graph, out):
        region = _region(graph, out, x)
        if region is None:
            continue
        env = {id(x): PROBE}
        for op in region:
            env[id(op.dst.buf)] = _eval(op, env)
        for func in ACTIVATIONS:
            if same_function(env[id(out.dst.buf)], func):
                return x, region, func
    return None


def fuse_activations(graph: Graph) -> None:
    """Replace each elementwise chain that computes a FUNC by the producer's act, or by one UNARY."""
    changed = True
    while changed:
        changed = False
        # Front to back: an early op's activation goes into its producer (tanh of a MATMUL) before a
        # later op can claim it; a longer chain still matches later, since acts are part of evaluation.
        for out in list(graph.ops):
            if not _elementwise(out):
                continue
            found = _match(graph, out)
            if found is None:
                continue
            x, region, func = found
            producer = graph.producer(x)
            prov = region[0].prov
            for op in region[1:]:
                prov = prov.merge(op.prov)
            if producer is not None and producer.act == FUNC.NONE and _only_users(graph, x, region):
                producer.act = func
                producer.dst = Tensor(out.dst.buf, producer.dst.shape)
                producer.prov = producer.prov.merge(prov)
                _replace(graph, region, None, out)
            elif len(region) > 1 or out.opcode != OPCODE.UNARY or out.act != FUNC.NONE:
                src = Tensor(x, (math.prod(out.dst.shape),))
                new = Op(OPCODE.UNARY, [src.size], [src, None, None, None], out.dst, prov, FUNC.NONE, [int(func)])
                _replace(graph, region, new, out)
            else:
                continue
            changed = True
            break


def eliminate_dead(graph: Graph) -> None:
    """Drop ops whose results nobody reads (what fusion left behind, or unused model outputs)."""
    changed = True
    while changed:
        changed = False
        for op in list(graph.ops):
            if not any(graph.is_output(b) or graph.users(b) for b in op.writes()):
                graph.ops.remove(op)
                changed = True
