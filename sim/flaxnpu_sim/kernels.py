"""numpy float32 kernels of the format 1.1 ops: convolution, pooling, layer norm, batched matmul, gather,
transpose. Inputs are checked already (op_rules.py); every kernel returns a new float32 array.

Memory stays proportional to the operands whatever the op's geometry: the convolution gathers its
im2col patches a bounded number of output rows at a time, and pooling reduces each window range with
ufunc.reduceat, one axis after the other, instead of padding the input or looping over kernel taps.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32
PATCH_ELEMS = 1 << 22  # im2col elements gathered at once (16 MiB of float32)


def _taps(out: int, k: int, stride: int, dil: int, pad: int, size: int) -> np.ndarray:
    """[out, k] input index of every window tap along one axis; `size` (a zero row/column) where the tap
    falls into the padding."""
    idx = np.arange(out, dtype=np.int64)[:, None] * stride - pad + np.arange(k, dtype=np.int64)[None, :] * dil
    return np.where((idx >= 0) & (idx < size), idx, size)


def conv2d(x: np.ndarray, w: np.ndarray, oh: int, ow: int, stride: tuple[int, int], pad: tuple[int, int],
           dil: tuple[int, int], groups: int, dtype: type = F32) -> np.ndarray:
    """NHWC x [N,H,W,C] conv HWIO w [KH,KW,C/groups,OC] -> [N,OH,OW,OC]; zero padding pad = (top, left),
    the bottom/right padding being what OH/OW imply. Output channels are grouped like lax's
    feature_group_count: channel o belongs to group o // (OC/groups)."""
    n, h, wd, c = x.shape
    kh, kw, cg, oc = w.shape
    ocg = oc // groups
    w = w.astype(dtype, copy=False)
    xz = np.zeros((n, h + 1, wd + 1, c), dtype)  # row h and column wd are the zero padding
    xz[:, :h, :wd] = x
    rows = _taps(oh, kh, stride[0], dil[0], pad[0], h)
    cols = _taps(ow, kw, stride[1], dil[1], pad[1], wd)
    # weights as [groups, KH*KW*Cg, OCg], matching patches laid out [.., KH, KW, group, Cg]
    wm = w.reshape(kh, kw, cg, groups, ocg).transpose(3, 0, 1, 2, 4).reshape(groups, kh * kw * cg, ocg)
    out = np.empty((n * oh, ow, oc), dtype)
    per_row = ow * kh * kw * c
    step = max(1, PATCH_ELEMS // max(per_row, 1))
    for r0 in range(0, n * oh, step):
        r = np.arange(r0, min(r0 + step, n * oh))
        ni, oi = r // oh, r % oh
        patches = xz[ni[:, None, None, None], rows[oi][:, None, :, None], cols[None, :, None, :]]  # [R,OW,KH,KW,C]
        p = patches.reshape(len(r) * ow, kh * kw, groups, cg)
        if groups == 1:
            res = p.reshape(len(r) * ow, kh * kw * cg) @ wm[0]
        else:
            res = np.matmul(p.transpose(2, 0, 1, 3).reshape(groups, len(r) * ow, kh * kw * cg), wm)
            res = res.transpose(1, 0, 2).reshape(len(r) * ow, oc)
        out[r0:r0 + len(r)] = res.reshape(len(r), ow, oc)
    return out.reshape(n, oh, ow, oc)


# int8 x int8 products summed in float32 are exact while every partial sum stays below 2^24: 1024 terms
# of at most 128 * 128 (2^14). Longer sums use float64 (exact to 2^53), still through BLAS.
EXACT_F32_TERMS = 1024


# Below this many terms no int32 sum of int8 products can wrap: |sum| <= terms * 2^14 < 2^31.
NO_WRAP_TERMS = 1 << 17


def _wrap_i32(acc: np.ndarray, terms: int) -> np.ndarray:
    """The int32 accumulator's two's-complement wraparound, from the exact (integer-valued) sum."""
    if terms < NO_WRAP_TERMS:
        return acc.astype(np.int32)
    a = np.rint(acc).astype(np.int64)
    return ((a + (1 << 31)) % (1 << 32) - (1 << 31)).astype(np.int32)


def qmatmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """int8 [M,K] @ int8 [K,N] with int32 accumulation -> int32 [M,N]."""
    dtype = F32 if x.shape[1] <= EXACT_F32_TERMS else np.float64
    return _wrap_i32(np.matmul(x.astype(dtype), w.astype(dtype)), x.shape[1])


def qconv2d(x: np.ndarray, w: np.ndarray, oh: int, ow: int, stride: tuple[int, int], pad: tuple[int, int],
            dil: tuple[int, int], groups: int) -> np.ndarray:
    """conv2d of int8 x and w with int32 accumulation -> int32 [N,OH,OW,OC]."""
    kh, kw, cg, _ = w.shape
    dtype = F32 if kh * kw * cg <= EXACT_F32_TERMS else np.float64
    return _wrap_i32(conv2d(x, w, oh, ow, stride, pad, dil, groups, dtype), kh * kw * cg)


def requant(acc: np.ndarray, table: np.ndarray) -> np.ndarray:
    """int32 accumulators -> float32: acc * scale + bias per output channel (the table's two rows)."""
    return acc.astype(F32) * table[0] + table[1]


def quantize(x: np.ndarray, scale: float) -> np.ndarray:
    """float32 -> int8: round half to even of x / scale, saturated; NaN becomes 0."""
    q = np.rint(x / F32(scale))
    return np.clip(np.nan_to_num(q, nan=0.0), -128, 127).astype(np.int8)


def _window_reduce(x: np.ndarray, axis: int, out: int, k: int, stride: int, pad: int, ufunc: np.ufunc,
                   neutral: float) -> np.ndarray:
    """Reduce windows [o*stride - pad, + k) along `axis`, the padding being `neutral`."""
    size = x.shape[axis]
    if pad == 0 and stride == k and out * k <= size:  # windows tile the axis: one reshape, one reduce
        tiles = np.take(x, np.arange(out * k), axis=axis) if out * k < size else x
        shape = (*x.shape[:axis], out, k, *x.shape[axis + 1:])
        return ufunc.reduce(tiles.reshape(shape), axis=axis + 1)
    start = np.arange(out, dtype=np.int64) * stride - pad
    lo, hi = np.clip(start, 0, size), np.clip(start + k, 0, size)
    empty = lo >= hi
    lo, hi = np.where(empty, size, lo), np.where(empty, size, hi)  # index `size`: the neutral element
    shape = list(x.shape)
    shape[axis] = 1
    xs = np.concatenate([x, np.full(shape, neutral, F32)], axis=axis)
    idx = np.empty(2 * out, np.int64)
    idx[0::2], idx[1::2] = lo, hi  # reduceat's odd results (between windows) are dropped
    red = ufunc.reduceat(xs, idx, axis=axis)
    return np.take(red, np.arange(0, 2 * out, 2), axis=axis)


def pool(x: np.ndarray, kind_max: bool, oh: int, ow: int, k: tuple[int, int], stride: tuple[int, int],
         pad: tuple[int, int]) -> np.ndarray:
    """MAX (padding -inf) or AVG (zero padding, divided by KH*KW) pooling of NHWC x -> [N,OH,OW,C]."""
    ufunc, neutral = (np.maximum, -np.inf) if kind_max else (np.add, 0.0)
    t = _window_reduce(x, 2, ow, k[1], stride[1], pad[1], ufunc, neutral)
    t = _window_reduce(t, 1, oh, k[0], stride[0], pad[0], ufunc, neutral)
    return t if kind_max else t / F32(k[0] * k[1])


def layernorm(x: np.ndarray, scale: np.ndarray, offset: np.ndarray, eps: float) -> np.ndarray:
    """(x - mean) / sqrt(biased var + eps) * scale + offset over the last axis, in float32."""
    mean = x.mean(axis=1, dtype=F32, keepdims=True)
    d = x - mean
    var = np.mean(d * d, axis=1, dtype=F32, keepdims=True)
    return d / np.sqrt(var + F32(eps)) * scale + offset


def bmm(a: np.ndarray, b: np.ndarray, a_t: bool, b_t: bool, alpha: float) -> np.ndarray:
    """alpha * a @ b over a batch axis; a stored [B,K,M] when a_t, b stored [B,N,K] when b_t (views)."""
    out = np.matmul(a.transpose(0, 2, 1) if a_t else a, b.transpose(0, 2, 1) if b_t else b)
    if alpha != 1.0:
        out *= F32(alpha)  # in place: a second result-sized buffer costs more than the matmul
    return out


def gather(idx: np.ndarray, table: np.ndarray) -> np.ndarray:
    """table rows idx; [-V, V) wraps like numpy, any other index gives a row of NaN (jnp.take's fill)."""
    v = table.shape[0]
    idx = idx.astype(np.int64)
    ok = (idx >= -v) & (idx < v)
    out = table[np.where(ok, idx, 0)]
    out[~ok] = np.nan
    return out


def transpose(x: np.ndarray, perm: tuple[int, ...]) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(perm))
