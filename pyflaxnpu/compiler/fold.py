"""Folding passes for conv nets and transformers: per-channel affine maps into MATMUL/CONV2D weights
(bias adds, inference BatchNorm, constant scales), means into REDUCE MEAN, the attention scale into BMM's
alpha, and residual adds into the op producing one of their operands (OP_FLAG.RESIDUAL, src3).

Each rewrite keeps the math exact up to float rounding: (x @ W + b) * s + t == x @ (W * s) + (b * s + t)
for a per-output-channel s and t; weights are copied before they change, since the lowering shares
weights with equal bytes between ops.
"""

from __future__ import annotations

import numpy as np
from flaxnpu_abi.prog import BCAST, BINOP, FUNC

from pyflaxnpu.compiler.ir import OPCODE, REDUCE, Buffer, Graph, Op, Tensor, bits_f32, f32_bits


def _only_user(graph: Graph, op: Op) -> Op | None:
    """The single op reading op's result, when nothing else (an output, a second reader) needs it."""
    users = graph.users(op.dst.buf)
    if len(users) != 1 or graph.is_output(op.dst.buf):
        return None
    return users[0]


def _scalar(t: Tensor | None) -> float | None:
    if t is None or t.scaled or t.buf.data is None or t.buf.data.size != 1:
        return None
    return float(t.buf.data.reshape(()))


def _new_weight(name: str, data: np.ndarray) -> Tensor:
    arr = np.ascontiguousarray(data, dtype=np.float32)
    return Tensor(Buffer(name, arr.nbytes, "weight", arr), arr.shape)


# ---------------------------------------------------------------------------------------- affine
def fold_affine(graph: Graph) -> None:
    """MATMUL/CONV2D followed by + - * / a per-channel row or a scalar -> new weights and bias.

    This is where a Dense or Conv bias becomes OP_FLAG.BIAS and where an inference BatchNorm
    (sub mean, mul rsqrt(var + eps) * scale, add offset: all per channel) disappears into the conv.
    """
    changed = True
    while changed:
        changed = False
        for op in list(graph.ops):
            if op.opcode not in (OPCODE.MATMUL, OPCODE.CONV2D) or op.act != FUNC.NONE or op.residual:
                continue
            nxt = _only_user(graph, op)
            if nxt is not None and _fold_one(graph, op, nxt):
                changed = True


def _fold_one(graph: Graph, op: Op, nxt: Op) -> bool:
    if nxt.opcode != OPCODE.BINARY or nxt.act != FUNC.NONE or nxt.dims[0] * nxt.dims[1] != op.dst.size:
        return False
    n = op.srcs[1].shape[-1]  # type: ignore[union-attr]  # output channels: the kernel's last axis
    binop = BINOP(nxt.params[0])
    side = 0 if nxt.srcs[0].buf is op.dst.buf else 1  # type: ignore[union-attr]
    mine, other = nxt.bcast[side], nxt.bcast[1 - side]
    c = nxt.srcs[1 - side]
    if mine != BCAST.FULL or c is None or c.scaled or c.buf.data is None:
        return False
    if other == BCAST.SCALAR:
        vec = np.full(n, float(c.buf.data.reshape(())), np.float64)
    elif other == BCAST.ROW and nxt.dims[1] == n:
        vec = c.buf.data.reshape(n).astype(np.float64)
    else:
        return False
    w = op.srcs[1].buf.data.astype(np.float64)  # type: ignore[union-attr]
    b = op.srcs[2].buf.data.reshape(n).astype(np.float64) if op.bias else np.zeros(n)  # type: ignore[union-attr]
    if binop == BINOP.ADD:
        b = b + vec
    elif binop == BINOP.SUB:
        w, b = (w, b - vec) if side == 0 else (-w, vec - b)
    elif binop == BINOP.MUL:
        w, b = w * vec, b * vec
    elif binop == BINOP.DIV and side == 0 and np.all(vec != 0):
        w, b = w / vec, b / vec
    else:
        return False
    name = op.srcs[1].buf.name  # type: ignore[union-attr]
    op.srcs[1] = _new_weight(name, w.reshape(op.srcs[1].shape))  # type: ignore[union-attr]
    op.srcs[2] = _new_weight(f"{name}:bias", b)
    op.bias = True
    op.dst = Tensor(nxt.dst.buf, op.dst.shape)
    op.prov = op.prov.merge(nxt.prov)
    graph.ops.remove(nxt)
    return True


# ---------------------------------------------------------------------------------------- means
def fuse_mean(graph: Graph) -> None:
    """REDUCE SUM over C followed by / C -> REDUCE MEAN (jnp.mean, LayerNorm's statistics)."""
    for red in list(graph.ops):
        if red.opcode != OPCODE.REDUCE or red.params[0] != REDUCE.SUM or red.act != FUNC.NONE:
            continue
        div = _only_user(graph, red)
        if (div is None or div.opcode != OPCODE.BINARY or div.params[0] != BINOP.DIV or div.act != FUNC.NONE
                or div.bcast != (BCAST.FULL, BCAST.SCALAR) or div.srcs[0].buf is not red.dst.buf  # type: ignore[union-attr]
                or _scalar(div.srcs[1]) != float(red.dims[1])):
            continue
        red.params = [int(REDUCE.MEAN)]
        red.dst = Tensor(div.dst.buf, red.dst.shape)
        red.prov = red.prov.merge(div.prov)
        graph.ops.remove(div)


# ---------------------------------------------------------------------------------------- attention
def fold_bmm_scale(graph: Graph) -> None:
    """q * c or q / c (a constant) feeding a BMM, maybe through a TRANSPOSE, or applied to its result
    (scores / sqrt(d)) -> BMM's alpha."""
    for bmm in list(graph.ops):
        if bmm.opcode != OPCODE.BMM:
            continue
        after = _only_user(graph, bmm)
        c = _scale_of(after)
        if after is not None and c is not None and bmm.act == FUNC.NONE:
            _times_alpha(bmm, c)
            bmm.dst = Tensor(after.dst.buf, bmm.dst.shape)
            bmm.prov = bmm.prov.merge(after.prov)
            graph.ops.remove(after)
        for slot in (0, 1):
            t = bmm.srcs[slot]
            assert t is not None
            via = graph.producer(t.buf)
            hop = via if via is not None and via.opcode == OPCODE.TRANSPOSE and via.act == FUNC.NONE else None
            scale = graph.producer(hop.srcs[0].buf) if hop is not None else via  # type: ignore[union-attr]
            c = _scale_of(scale)
            if c is None or scale is None:
                continue
            if hop is not None and not (_only_user(graph, hop) is bmm and _only_user(graph, scale) is hop):
                continue
            if hop is None and _only_user(graph, scale) is not bmm:
                continue
            src = scale.srcs[0] if scale.bcast[0] == BCAST.FULL else scale.srcs[1]
            assert src is not None
            if hop is not None:
                hop.srcs[0] = Tensor(src.buf, hop.srcs[0].shape)  # type: ignore[union-attr]
            else:
                bmm.srcs[slot] = Tensor(src.buf, t.shape)
            _times_alpha(bmm, c)
            bmm.prov = scale.prov.merge(bmm.prov)
            graph.ops.remove(scale)


def _times_alpha(bmm: Op, c: float) -> None:
    bmm.params[1] = f32_bits(bits_f32(bmm.params[1]) * c)


def _scale_of(op: Op | None) -> float | None:
    """c when op computes x * c, c * x or x / c for a scalar constant c (and nothing else)."""
    if op is None or op.opcode != OPCODE.BINARY or op.act != FUNC.NONE:
        return None
    binop, modes = BINOP(op.params[0]), op.bcast
    if modes == (BCAST.FULL, BCAST.SCALAR) and op.srcs[0].scaled:  # type: ignore[union-attr]
        c = _scalar(op.srcs[1])
        if c is None or c == 0:
            return None
        return c if binop == BINOP.MUL else 1.0 / c if binop == BINOP.DIV else None
    if modes == (BCAST.SCALAR, BCAST.FULL) and binop == BINOP.MUL and op.srcs[1].scaled:  # type: ignore[union-attr]
        c = _scalar(op.srcs[0])
        return c if c else None
    return None


# ---------------------------------------------------------------------------------------- residual
def fuse_residual(graph: Graph) -> None:
    """a + b of two full per-item tensors -> RESIDUAL on the MATMUL/CONV2D producing a, with b as src3,
    when b is ready before that op runs (the input, or computed earlier) and a is read only by the add."""
    order = {id(op): i for i, op in enumerate(graph.ops)}
    for add in list(graph.ops):
        if add.opcode != OPCODE.BINARY or add.params[0] != BINOP.ADD or add.act != FUNC.NONE \
                or add.bcast != (BCAST.FULL, BCAST.FULL):
            continue
        for side in (0, 1):
            a, b = add.srcs[side], add.srcs[1 - side]
            assert a is not None and b is not None
            host = graph.producer(a.buf)
            if host is None or host.opcode not in (OPCODE.MATMUL, OPCODE.CONV2D) or host.act != FUNC.NONE \
                    or host.residual or _only_user(graph, host) is not add or a.buf is b.buf:
                continue
            ready = graph.producer(b.buf)
            if ready is not None and order[id(ready)] > order[id(host)]:
                continue
            host.srcs[3] = Tensor(b.buf, host.dst.shape)
            host.dst = Tensor(add.dst.buf, host.dst.shape)
            host.prov = host.prov.merge(add.prov)
            graph.ops.remove(add)
            break
