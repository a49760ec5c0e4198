"""Lowering rules for the layers beyond Dense (program format 1.1): contractions (MATMUL against
weights, BMM between two per-item tensors), CONV2D, POOL, reductions, TRANSPOSE and embedding GATHER.

Shapes are per batch item (see lower.py); full jaxpr axes (with the batch axis 0) are converted here.
Layouts follow what flax emits: NHWC activations, HWIO kernels; 1-D convolutions and pools run as 2-D
ones with H = 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from flaxnpu_abi.prog import BINOP
from jax.extend import core

from pyflaxnpu.compiler.ir import OPCODE, POOL_AVG, POOL_MAX, REDUCE, Tensor, f32_bits
from pyflaxnpu.compiler.lower import (
    Const,
    Index,
    Lowering,
    Rule,
    Scaled,
    Value,
    _as_index,
    batch_axis,
    item_axis,
    item_shape,
    require_batch_first,
)


def _pair(lo: int, hi: int) -> int:
    return lo | hi << 16


# ---------------------------------------------------------------------------------------- contractions
def dot_general(lw: Lowering, eqn: core.JaxprEqn, ins: list[Value]) -> list[Value]:
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = ins
    if isinstance(lhs, Const) and not isinstance(rhs, Const):
        raise lw.unsupported("the left operand is the weights and the right one depends on the input (W @ x); "
                       "MATMUL computes x @ W: write it as x @ W.T (or swap the einsum operands)")
    if not isinstance(rhs, Const):
        return _bmm(lw, eqn, lw.tensor(lhs), lw.tensor(rhs))
    if lb or rb:
        raise lw.unsupported("dot_general with batch dimensions over weights is not supported: the NPU's "
                       "MATMUL shares one weight matrix across rows; split the batched weights per slice")
    x = lw.tensor(lhs)
    contract = [item_axis(eqn.invars[0], a) for a in lc]
    free = [a for a in range(len(x.shape)) if a not in contract]
    x = lw.permute(x, [*free, *contract])   # a view when the contracted axes already trail, in order
    w = np.asarray(rhs.value)
    wfree = [a for a in range(w.ndim) if a not in rc]
    w = np.transpose(w, [*rc, *wfree])
    k = math.prod(w.shape[: len(rc)])
    n = math.prod(w.shape[len(rc):])
    m = math.prod(x.shape) // k
    kernel = lw.weight(w, (k, n), rhs.name)
    out = lw.new_tensor(item_shape(eqn.outvars[0]))
    return [lw.emit(OPCODE.MATMUL, [m, k, n], [Tensor(x.buf, (m, k)), kernel], out)]


def _bmm(lw: Lowering, eqn: core.JaxprEqn, x: Tensor, y: Tensor) -> list[Value]:
    """Both operands depend on the input (attention): BMM over [B', M, K] x [B', K, N] per item."""
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    vx, vy = eqn.invars
    pair = [i for i, (a, b) in enumerate(zip(lb, rb, strict=True)) if (a, b) == (batch_axis(vx), batch_axis(vy))]
    if not pair:
        raise lw.unsupported("contracts two per-item tensors without pairing their batch axes (the batch axis "
                             "of both as a batch dimension); compute per example, e.g. with jnp.einsum('b...')")
    # The result's batch axis sits at the pair's place among the batch dimensions (behind axes of size 1,
    # check_batch); the other batch dimensions, in order, are BMM's B.
    bx = [item_axis(vx, a) for i, a in enumerate(lb) if i != pair[0]]
    by = [item_axis(vy, a) for i, a in enumerate(rb) if i != pair[0]]
    cx, cy = [item_axis(vx, a) for a in lc], [item_axis(vy, a) for a in rc]
    fx = [a for a in range(len(x.shape)) if a not in bx + cx]
    fy = [a for a in range(len(y.shape)) if a not in by + cy]
    bsz = math.prod(x.shape[a] for a in bx)
    m, k, n = (math.prod(x.shape[a] for a in fx), math.prod(x.shape[a] for a in cx),
               math.prod(y.shape[a] for a in fy))
    # Prefer the layout that is already in memory: BMM reads either operand transposed (params[0]).
    a, ta = _layout(lw, x, [bx + fx + cx, bx + cx + fx])
    b, tb = _layout(lw, y, [by + cy + fy, by + fy + cy])
    out = lw.new_tensor(item_shape(eqn.outvars[0]))
    srcs = [Tensor(a.buf, (bsz, k, m) if ta else (bsz, m, k)), Tensor(b.buf, (bsz, n, k) if tb else (bsz, k, n))]
    return [lw.emit(OPCODE.BMM, [bsz, m, k, n], srcs, out, [ta | tb << 1, f32_bits(1.0)])]


def _layout(lw: Lowering, t: Tensor, perms: list[list[int]]) -> tuple[Tensor, int]:
    """t in the first of perms that needs no data movement (its index), else TRANSPOSEd to perms[0]."""
    for i, perm in enumerate(perms):
        if _is_view(t.shape, perm):
            return lw.permute(t, perm), i
    return lw.permute(t, perms[0]), 0


def _is_view(shape: Sequence[int], perm: list[int]) -> bool:
    moved = [p for p in perm if shape[p] != 1]
    return moved == sorted(moved)


def transpose(lw: Lowering, eqn: core.JaxprEqn, ins: list[Value]) -> list[Value]:
    full = eqn.params["permutation"]
    src, out = eqn.invars[0], eqn.outvars[0]
    if full[batch_axis(out)] != batch_axis(src):
        raise lw.unsupported(f"permutation {full} moves the batch axis; keep axis 0 in place")
    # Moving the batch axis across axes of size 1 (vmap's layouts) moves no data: only the others count.
    return [lw.permute(lw.tensor(ins[0]), [item_axis(src, p) for i, p in enumerate(full) if i != batch_axis(out)])]


# ---------------------------------------------------------------------------------------- conv, pool
def conv(lw: Lowering, eqn: core.JaxprEqn, ins: list[Value]) -> list[Value]:
    p = eqn.params
    require_batch_first(lw, eqn)
    if not isinstance(ins[1], Const):
        raise lw.unsupported("the convolution kernel depends on the input; CONV2D takes its kernel from the "
                       "weights (parameters)")
    x = lw.tensor(ins[0])
    lhs, rhs, out = p["dimension_numbers"]
    nsp = len(lhs) - 2
    nhwc = (0, nsp + 1, *range(1, nsp + 1))
    if nsp not in (1, 2) or tuple(lhs) != nhwc or tuple(out) != nhwc:
        raise lw.unsupported(f"convolution with dimension numbers {lhs}/{out} over {nsp} spatial axes: CONV2D "
                       "takes NHWC (or NLC) activations, flax's default layout; transpose to channels-last")
    if any(d != 1 for d in p["lhs_dilation"]) or p["batch_group_count"] != 1:
        raise lw.unsupported("transposed (input-dilated) or batch-grouped convolution: CONV2D has neither; "
                       "use a strided nn.Conv or nn.ConvTranspose on the host")
    w = np.asarray(ins[1].value)
    hwio = np.transpose(w, [*rhs[2:], rhs[1], rhs[0]])
    strides, dil, pads = list(p["window_strides"]), list(p["rhs_dilation"]), [tuple(q) for q in p["padding"]]
    oshape = item_shape(eqn.outvars[0])
    ishape = x.shape
    if nsp == 1:   # NLC as N1LC
        hwio, strides, dil, pads = hwio[None], [1, *strides], [1, *dil], [(0, 0), *pads]
        ishape, oshape = (1, *ishape), (1, *oshape)
    h, w_, c = ishape
    oh, ow, oc = oshape
    # With padding >= 0 the windows stop fewer than `stride` rows before the end (lax's output length),
    # which is what CONV2D's geometry rule accepts: a strided VALID conv runs as it is.
    if any(q < 0 for pad in pads for q in pad):
        raise lw.unsupported(f"negative padding {pads}: CONV2D pads with zeros only; crop the input on the host, "
                             "or use padding='SAME'/'VALID'")
    kh, kw = hwio.shape[:2]
    kernel = lw.weight(hwio, None, ins[1].name)
    dst = lw.new_tensor(item_shape(eqn.outvars[0]))
    params = [_pair(kh, kw), oc, _pair(*strides), _pair(pads[0][0], pads[1][0]), _pair(*dil),
              int(p["feature_group_count"])]
    return [lw.emit(OPCODE.CONV2D, [1, h, w_, c, oh, ow], [Tensor(x.buf, (h, w_, c)), kernel],
                    Tensor(dst.buf, dst.shape), params)]


def pool(kind: int) -> Rule:
    """reduce_window_max -> POOL MAX; reduce_window_sum -> POOL AVG with the window size pending (Scaled),
    which avg_pool's division then cancels."""
    def rule(lw: Lowering, eqn: core.JaxprEqn, ins: list[Value]) -> list[Value]:
        p = eqn.params
        require_batch_first(lw, eqn)
        x = lw.tensor(ins[0])
        win, stride, pads = list(p["window_dimensions"]), list(p["window_strides"]), list(p["padding"])
        n = len(win)
        dilated = any(d != 1 for d in (*p["base_dilation"], *p["window_dilation"]))
        if n not in (3, 4) or dilated or win[0] != 1 or win[-1] != 1 or stride[0] != 1 or stride[-1] != 1 \
                or tuple(pads[0]) != (0, 0) or tuple(pads[-1]) != (0, 0):
            raise lw.unsupported(f"pooling window {win} (strides {stride}) over shape {x.shape}: POOL takes NHWC or "
                           "NLC windows over the spatial axes only, without dilation")
        if n == 3:
            win, stride, pads = [1, 1, *win[1:]], [1, 1, *stride[1:]], [(0, 0), (0, 0), *pads[1:]]
        shape = x.shape if len(x.shape) == 3 else (1, *x.shape)
        oshape = item_shape(eqn.outvars[0])
        oshape = oshape if len(oshape) == 3 else (1, *oshape)
        return [_pool(lw, kind, Tensor(x.buf, shape), oshape, win[1:3], stride[1:3], [tuple(q) for q in pads[1:3]],
                      item_shape(eqn.outvars[0]))]
    return rule


def _pool(lw: Lowering, kind: int, x: Tensor, oshape: tuple[int, ...], win: list[int], stride: list[int],
          pads: list[tuple[int, int]], out_shape: tuple[int, ...]) -> Value:
    h, w, c = x.shape
    oh, ow, _ = oshape
    # As for CONV2D: with padding >= 0 the windows stop fewer than `stride` rows before the end, which POOL
    # runs (a strided VALID pool on a size the stride does not divide leaves its last rows unread).
    if any(q < 0 for pad in pads for q in pad):
        raise lw.unsupported(f"negative pooling padding {pads}: POOL pads with -inf (MAX) or zeros (AVG) only; "
                             "crop the input on the host, or use padding 'SAME' or 'VALID'")
    dst = lw.new_tensor(out_shape)
    lw.emit(OPCODE.POOL, [1, h, w, c, oh, ow], [x], dst,
            [kind, _pair(*win), _pair(*stride), _pair(pads[0][0], pads[1][0])])
    return Scaled(dst, float(win[0] * win[1])) if kind == POOL_AVG else dst


def reduce(kind: REDUCE) -> Rule:
    """Trailing axes -> REDUCE; leading spatial axes with the channels last (global pooling) -> POOL;
    anything else -> TRANSPOSE the reduced axes last, then REDUCE."""
    def rule(lw: Lowering, eqn: core.JaxprEqn, ins: list[Value]) -> list[Value]:
        x = lw.tensor(ins[0])
        axes = sorted(item_axis(eqn.invars[0], a) for a in eqn.params["axes"])  # never the batch axis (check_batch)
        n = len(x.shape)
        out_shape = item_shape(eqn.outvars[0])
        pool_kind = {REDUCE.SUM: POOL_AVG, REDUCE.MAX: POOL_MAX}.get(kind)
        if axes != list(range(n - len(axes), n)) and pool_kind is not None and n in (2, 3) \
                and axes == list(range(n - 1)):
            shape = x.shape if n == 3 else (1, *x.shape)
            return [_pool(lw, pool_kind, Tensor(x.buf, shape), (1, 1, shape[2]), list(shape[:2]), [1, 1],
                          [(0, 0), (0, 0)], out_shape)]
        if axes != list(range(n - len(axes), n)):
            x = lw.permute(x, [*[a for a in range(n) if a not in axes], *axes])
        keep = math.prod(x.shape[: n - len(axes)])
        dims = [keep, math.prod(x.shape[n - len(axes):])]
        return [lw.emit(OPCODE.REDUCE, dims, [x], lw.new_tensor(out_shape), [int(kind)])]
    return rule


# ---------------------------------------------------------------------------------------- embeddings
def lt(lw: Lowering, eqn: core.JaxprEqn, ins: list[Value]) -> list[Value]:
    a, b = _as_index(ins[0]), ins[1]
    if isinstance(a, Index) and isinstance(b, Const) and np.all(np.asarray(b.value) == 0) and a.add == 0 \
            and not a.negative and a.wrap == 0:
        return [Index(a.src, a.shape, negative=True)]
    raise lw.unsupported("a comparison on the device: the NPU has no comparison op (only jnp.take's index wrap "
                   "before an embedding is recognised); compute it on the host")


def select_n(lw: Lowering, eqn: core.JaxprEqn, ins: list[Value]) -> list[Value]:
    pred, *cases = [_as_index(v) for v in ins]
    if (len(cases) == 2 and isinstance(pred, Index) and pred.negative
            and all(isinstance(c, Index) and c.src.buf is pred.src.buf for c in cases)
            and cases[0].add == 0 and cases[1].add > 0):  # type: ignore[union-attr]
        return [Index(pred.src, pred.shape, wrap=cases[1].add)]  # type: ignore[union-attr]
    if isinstance(pred, Const) and np.asarray(pred.value).dtype == bool and len(cases) == 2 \
            and sum(isinstance(c, Const) for c in cases) == 1:
        return [_masked(lw, eqn, np.asarray(pred.value), cases)]
    raise lw.unsupported("a select (jnp.where) on the device: the NPU has no select op and runs jnp.where(mask, "
                         "x, fill) only with a constant mask and fill (an attention mask); compute it on the host")


def _masked(lw: Lowering, eqn: core.JaxprEqn, pred: np.ndarray, cases: list[Value]) -> Value:
    """jnp.where(mask, x, fill) with a constant mask and fill (attention masks, causal or fixed): x clamped
    into [lo, hi], lo = hi = fill where the fill is chosen and (-inf, inf) where x is. Exact for every x
    but NaN, in two BINARY ops, where x * mask + fill * (1 - mask) would turn an infinite x into NaN."""
    k = 0 if isinstance(cases[0], Const) else 1
    fill, x = cases[k], cases[1 - k]
    assert isinstance(fill, Const)
    take_x, value = np.broadcast_arrays(pred != (k == 1), np.asarray(fill.value, np.float32))  # select_n: case[pred]
    hi = Const(np.where(take_x, np.inf, value).astype(np.float32), fill.name)
    lo = Const(np.where(take_x, -np.inf, value).astype(np.float32), fill.name)
    shape = item_shape(eqn.outvars[0])
    return lw.binary(BINOP.MAX, lw.binary(BINOP.MIN, x, hi, shape), lo, shape)


def gather(lw: Lowering, eqn: core.JaxprEqn, ins: list[Value]) -> list[Value]:
    require_batch_first(lw, eqn)
    table, idx = ins[0], _as_index(ins[1])
    dn, p = eqn.params["dimension_numbers"], eqn.params
    if not isinstance(table, Const) or not isinstance(idx, Index):
        raise lw.unsupported("gather other than an embedding lookup (a table from the parameters indexed by "
                       "int32 token ids from the input); use nn.Embed or jnp.take(table, ids, axis=0)")
    t = np.asarray(table.value)
    v, d = t.shape if t.ndim == 2 else (0, 0)
    ok = (t.ndim == 2 and tuple(dn.collapsed_slice_dims) == (0,) and tuple(dn.start_index_map) == (0,)
          and tuple(p["slice_sizes"]) == (1, d) and not dn.operand_batching_dims and idx.shape[-1:] == (1,)
          and "FILL_OR_DROP" in str(p["mode"]) and idx.wrap == v and idx.add == 0)
    if not ok:
        raise lw.unsupported("gather is not jnp.take(table, ids, axis=0) with its default mode: GATHER looks rows "
                       "up, wraps negative ids and gives NaN rows for ids out of range; use nn.Embed")
    r = math.prod(idx.shape[:-1])
    ids = Tensor(idx.src.buf, (r,))
    out = lw.new_tensor(item_shape(eqn.outvars[0]))
    return [lw.emit(OPCODE.GATHER, [r, v, d], [ids, lw.weight(t, None, table.name)], out)]
