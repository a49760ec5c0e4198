"""Recognise flax's LayerNorm in the IR and replace its ~12 ops by one LAYERNORM.

flax.linen.LayerNorm / nnx.LayerNorm (use_fast_variance, the default) compute, over the last axis:
    mu = mean(x); var = max(0, mean(x^2) - mu^2); y = (x - mu) * (rsqrt(var + eps) * scale) + bias
and with use_fast_variance=False var = mean((x - mu)^2). After lowering and fuse_mean this is REDUCE
MEAN, UNARY SQUARE and BINARY ops in row (COL) and channel (ROW) broadcasts; the matcher follows those
edges from each mean and takes eps from the added literal. Anything else (another eps placement, a
scale that is not per channel) stays as it was, which is still correct, just more ops.
"""

from __future__ import annotations

import numpy as np
from flaxnpu_abi.prog import BCAST, BINOP, FUNC

from pyflaxnpu.compiler.ir import OPCODE, REDUCE, Buffer, Graph, Op, Tensor, f32_bits


def fuse_layernorm(graph: Graph) -> None:
    for mu in list(graph.ops):
        if any(mu is op for op in graph.ops):
            found = _match(graph, mu)
            if found is not None:
                _rewrite(graph, *found)


def _users(graph: Graph, op: Op) -> list[Op]:
    return graph.users(op.dst.buf)


def _is_mean(op: Op | None, dims: list[int]) -> bool:
    return (op is not None and op.opcode == OPCODE.REDUCE and op.params[0] == REDUCE.MEAN
            and op.act == FUNC.NONE and op.dims == dims)


def _binary(op: Op | None, binop: BINOP, modes: tuple[BCAST, BCAST] | None = None) -> bool:
    return (op is not None and op.opcode == OPCODE.BINARY and op.params[0] == binop and op.act == FUNC.NONE
            and (modes is None or op.bcast == modes))


def _unary(op: Op | None, func: FUNC) -> bool:
    return op is not None and op.opcode == OPCODE.UNARY and op.params[0] == func and op.act == FUNC.NONE


def _weight(t: Tensor | None, size: int) -> np.ndarray | None:
    if t is None or t.scaled or t.buf.data is None or t.buf.data.size != size:
        return None
    return t.buf.data.reshape(size)


def _match(graph: Graph, mu: Op) -> tuple[Tensor, list[Op], Op, np.ndarray, np.ndarray, float] | None:
    if mu.opcode != OPCODE.REDUCE or mu.params[0] != REDUCE.MEAN or mu.act != FUNC.NONE:
        return None
    x = mu.srcs[0]
    assert x is not None
    r, c = mu.dims
    chain: list[Op] = [mu]
    # x - mu (row broadcast), and the variance
    subs = [u for u in _users(graph, mu) if _binary(u, BINOP.SUB, (BCAST.FULL, BCAST.COL))
            and u.srcs[0].buf is x.buf and u.dims == [r, c]]  # type: ignore[union-attr]
    if len(subs) != 1:
        return None
    centered = subs[0]
    chain.append(centered)
    var = _variance(graph, mu, x, centered, chain)
    if var is None:
        return None
    # var (maybe clamped at 0) + eps -> rsqrt
    users = _users(graph, var)
    clamp = users[0] if len(users) == 1 and _binary(users[0], BINOP.MAX) else None
    if clamp is not None:
        if _zero_side(clamp) is None:
            return None
        chain.append(clamp)
        var = clamp
    users = _users(graph, var)
    if len(users) != 1 or not _binary(users[0], BINOP.ADD) or BCAST.SCALAR not in users[0].bcast:
        return None
    add_eps = users[0]
    eps_t = add_eps.srcs[add_eps.bcast.index(BCAST.SCALAR)]
    eps = _weight(eps_t, 1)
    if eps is None:
        return None
    chain.append(add_eps)
    users = _users(graph, add_eps)
    if len(users) != 1 or not _unary(users[0], FUNC.RSQRT):
        return None
    rs = users[0]
    chain.append(rs)
    # rsqrt * scale (a channel row), then (x - mu) * that; or (x - mu) * rsqrt directly
    scale = np.ones(c, np.float32)
    users = _users(graph, rs)
    if len(users) != 1:
        return None
    step = users[0]
    if _binary(step, BINOP.MUL) and sorted(step.bcast) == [BCAST.ROW, BCAST.COL] and step.dims == [r, c]:
        w = _weight(step.srcs[step.bcast.index(BCAST.ROW)], c)
        if w is None:
            return None
        scale = w
        chain.append(step)
        users = _users(graph, step)
        if len(users) != 1 or not _binary(users[0], BINOP.MUL, (BCAST.FULL, BCAST.FULL)):
            return None
        step = users[0]
    elif not (_binary(step, BINOP.MUL) and sorted(step.bcast) == [BCAST.FULL, BCAST.COL]):
        return None
    if {t.buf for t in step.srcs[:2] if t is not None} != {centered.dst.buf, chain[-1].dst.buf}:
        return None
    chain.append(step)
    out = step
    bias = np.zeros(c, np.float32)
    users = _users(graph, step)
    if len(users) == 1 and not graph.is_output(step.dst.buf) and _binary(users[0], BINOP.ADD) \
            and sorted(users[0].bcast) == [BCAST.FULL, BCAST.ROW] and users[0].dims == [r, c]:
        w = _weight(users[0].srcs[users[0].bcast.index(BCAST.ROW)], c)
        if w is not None:
            bias = w
            chain.append(users[0])
            out = users[0]
    # Every intermediate result must be private to the pattern.
    ids = {id(op) for op in chain}
    for op in chain:
        if op is not out and (graph.is_output(op.dst.buf)
                              or any(id(u) not in ids for u in graph.users(op.dst.buf))):
            return None
    return x, chain, out, scale, bias, float(eps[0])


def _variance(graph: Graph, mu: Op, x: Tensor, centered: Op, chain: list[Op]) -> Op | None:
    """The op computing the biased variance: mean(x^2) - mu^2, or mean((x - mu)^2)."""
    dims = mu.dims
    for sq in _users(graph, centered):
        if _unary(sq, FUNC.SQUARE):
            means = _users(graph, sq)
            if len(means) == 1 and _is_mean(means[0], dims):
                chain += [sq, means[0]]
                return means[0]
    sq_mu = [u for u in _users(graph, mu) if _unary(u, FUNC.SQUARE)
             or (_binary(u, BINOP.MUL, (BCAST.FULL, BCAST.FULL)) and all(t.buf is mu.dst.buf for t in u.srcs[:2]))]  # type: ignore[union-attr]
    if len(sq_mu) != 1:
        return None
    users = _users(graph, sq_mu[0])
    if len(users) != 1 or not _binary(users[0], BINOP.SUB, (BCAST.FULL, BCAST.FULL)) \
            or users[0].srcs[1].buf is not sq_mu[0].dst.buf:  # type: ignore[union-attr]
        return None
    sub = users[0]
    mu2 = graph.producer(sub.srcs[0].buf)  # type: ignore[union-attr]
    if not _is_mean(mu2, dims):
        return None
    sqx = graph.producer(mu2.srcs[0].buf)  # type: ignore[union-attr]
    if not _unary(sqx, FUNC.SQUARE) or sqx.srcs[0].buf is not x.buf:  # type: ignore[union-attr]
        return None
    if len(_users(graph, mu2)) != 1 or len(_users(graph, sqx)) != 1:  # type: ignore[arg-type]
        return None
    chain += [sq_mu[0], sub, mu2, sqx]  # type: ignore[list-item]
    return sub


def _zero_side(op: Op) -> int | None:
    for i, mode in enumerate(op.bcast):
        if mode == BCAST.SCALAR and _weight(op.srcs[i], 1) is not None and float(op.srcs[i].buf.data.reshape(())) == 0:  # type: ignore[union-attr]
            return i
    return None


def _rewrite(graph: Graph, x: Tensor, chain: list[Op], out: Op, scale: np.ndarray, bias: np.ndarray,
             eps: float) -> None:
    r, c = chain[0].dims
    prov = chain[0].prov
    for op in chain[1:]:
        prov = prov.merge(op.prov)
    weights = [Tensor(Buffer(f"{out.prov.module or 'LayerNorm'}/{n}", 4 * c, "weight", np.asarray(v, np.float32)), (c,))
               for n, v in (("scale", scale), ("bias", bias))]
    ln = Op(OPCODE.LAYERNORM, [r, c], [Tensor(x.buf, (r, c)), *weights, None], out.dst, prov, FUNC.NONE,
            [f32_bits(eps)])
    first = min(graph.ops.index(op) for op in chain)
    for op in chain:
        graph.ops.remove(op)
    graph.ops.insert(first, ln)
