"""int8 post-training quantization of the graph's MATMUL and CONV2D ops (compile(..., quantize="int8")).

The scheme is symmetric, with no zero points, so the engines' integer work is one int8 x int8 -> int32
product per MAC:
- weights: one scale per output channel, s_w[n] = max|w[..., n]| / 127;
- activations: one scale per tensor, s_x = max|x| / 127 over the calibration data (calibrate.py);
- the op's requant table holds s_x * s_w[n] and the float bias, so the engine computes
  acc * s_x * s_w[n] + b[n] (+ residual, then the activation) in float32 and, when the result feeds
  only other int8 ops, quantizes it at the consumer's scale in the same op (an I8 dst). Otherwise the dst
  stays float32 and the rest of the graph is unchanged. Max pooling commutes with the scale, so a MAX
  pool between two int8 ops runs on the int8 values (POOL with OP_FLAG.QUANT).
A float tensor that feeds an int8 op is converted once (CONVERT QUANTIZE) before its first int8 user.

Everything else (pooling, layer norm, softmax, attention's batched matmuls, host segments) stays float32:
those ops cost little next to the weight GEMMs, and keeping them exact keeps the accuracy loss where the
calibration measures it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flaxnpu_abi import prog
from flaxnpu_abi.prog import CONVERT, FUNC, OPCODE

from pyflaxnpu.compiler.ir import POOL_MAX, Buffer, Graph, Op, Provenance, Tensor, f32_bits
from pyflaxnpu.compiler.partition import is_host
from pyflaxnpu.errors import CompileError

QMAX = 127


def targets(graph: Graph) -> list[Op]:
    """The ops to quantize: device MATMUL/CONV2D with a weight rhs and a float32 activation lhs."""
    return [op for op in graph.ops
            if not is_host(op) and op.opcode in (OPCODE.MATMUL, OPCODE.CONV2D)
            and op.srcs[1] is not None and not op.srcs[1].scaled
            and op.srcs[0] is not None and op.srcs[0].scaled and op.srcs[0].buf.dtype == "float32"]


@dataclass(frozen=True)
class Probe:
    """What calibration observes: target i's input (src0) and output (dst) buffers."""

    inputs: list[int]   # target i -> index of its input's probe
    outputs: list[int]  # target i -> index of its output's probe; -1 for a model output (stays float32)
    count: int


def add_probes(graph: Graph, ops: list[Op]) -> Probe:
    """Copy every buffer calibration needs into an extra graph output (appended after the model's own),
    right after the op that writes it: arena memory is reused, and outputs are write-only."""
    index: dict[int, int] = {}
    copies: list[tuple[Buffer, Tensor]] = []

    def probe(t: Tensor) -> int:
        if id(t.buf) not in index:
            index[id(t.buf)] = len(copies)
            out = Tensor(Buffer(f"probe{len(copies)}", t.buf.nbytes, "output"), (t.buf.nbytes // 4,))
            copies.append((t.buf, out))
        return index[id(t.buf)]

    probe_in = [probe(op.srcs[0]) for op in ops]  # type: ignore[arg-type]
    probe_out = [-1 if graph.is_output(op.dst.buf) else probe(op.dst) for op in ops]
    for buf, out in copies:
        src = Tensor(buf, out.shape)
        copy = Op(OPCODE.UNARY, [out.size], [src, None, None, None], out, Provenance("calibration", None, ()),
                  params=[0])
        producer = graph.producer(buf)
        graph.ops.insert(graph.ops.index(producer) + 1 if producer is not None else 0, copy)
        graph.outputs.append(out)
    return Probe(probe_in, probe_out, len(copies))


def weight_scales(w: np.ndarray) -> np.ndarray:
    """Per output channel (the last axis) max|w| / 127; 1 for an all-zero channel (its weights stay 0)."""
    amax = np.abs(w.reshape(-1, w.shape[-1])).max(axis=0)
    return np.where(amax > 0, amax / QMAX, 1.0)


def quantize_array(x: np.ndarray, scale: np.ndarray | float) -> np.ndarray:
    return np.clip(np.rint(x / scale), -QMAX - 1, QMAX).astype(np.int8)


def activation_scale(amax: float, what: str) -> float:
    if not np.isfinite(amax):
        raise CompileError(f"calibration: {what} reached {amax} on the calibration data; int8 needs finite "
                           "activations (check the calibration inputs for NaN or inf)")
    return float(amax) / QMAX if amax > 0 else 1.0


def apply(graph: Graph, ops: list[Op], in_scale: list[float], out_scale: list[float | None]) -> None:
    """Rewrite `ops` (targets(graph)) as int8 ops with the calibrated per-tensor scales."""
    quantized: dict[int, tuple[Buffer, float]] = {}  # float buffer -> its int8 form and scale
    chosen = {id(op) for op in ops}
    for i, op in enumerate(ops):
        x = op.srcs[0]
        assert x is not None and op.srcs[1] is not None
        if id(x.buf) not in quantized:
            size = x.buf.nbytes // 4
            qbuf = Buffer(x.buf.name + ".q", size, "act", dtype="int8")
            convert = Op(OPCODE.CONVERT, [size], [Tensor(x.buf, (size,)), None, None, None], Tensor(qbuf, (size,)),
                         op.prov, params=[f32_bits(in_scale[i]), int(CONVERT.QUANTIZE)])
            graph.ops.insert(graph.ops.index(op), convert)
            quantized[id(x.buf)] = (qbuf, in_scale[i])
        qbuf, s_x = quantized[id(x.buf)]
        w = np.asarray(op.srcs[1].buf.data, np.float32)
        s_w = weight_scales(w)
        bias = (np.asarray(op.srcs[2].buf.data, np.float32).reshape(-1) if op.bias and op.srcs[2] is not None
                else np.zeros(w.shape[-1], np.float32))
        table = np.stack([s_x * s_w, bias]).astype(np.float32)
        wq = Buffer(op.srcs[1].buf.name + ".q", w.size, "weight", quantize_array(w, s_w), dtype="int8")
        tb = Buffer(op.srcs[1].buf.name + ".requant", table.nbytes, "weight", table)
        op.srcs = [Tensor(qbuf, x.shape), Tensor(wq, op.srcs[1].shape), Tensor(tb, table.shape), op.srcs[3]]
        op.bias, op.quant = False, True
        op.params = [*op.params, *[0] * (8 - len(op.params))]
        s_y = out_scale[i]
        pools = _int8_readers(graph, op.dst.buf, chosen)
        if s_y is not None and pools is not None:
            # every reader takes int8 (directly, or through max pools): quantize here, in the epilogue
            op.params[prog.QSCALE_PARAM] = f32_bits(s_y)
            for buf in [op.dst.buf, *(p.dst.buf for p in pools)]:
                buf.dtype, buf.nbytes = "int8", buf.nbytes // 4
                quantized[id(buf)] = (buf, s_y)  # max pooling keeps the scale
            for p in pools:
                p.quant = True


def _int8_readers(graph: Graph, buf: Buffer, chosen: set[int]) -> list[Op] | None:
    """The max pools between `buf` and its int8 readers, when every reader can take int8: an op being
    quantized that reads it as its activations only, or a MAX pool without act (on the NPU, not an output)
    whose own readers all can. None when some reader needs float32."""
    users = graph.users(buf)
    if not users or graph.is_output(buf):
        return None
    pools: list[Op] = []
    for u in users:
        only_src0 = u.srcs[0] is not None and u.srcs[0].buf is buf and all(
            s is None or s.buf is not buf for s in u.srcs[1:])
        if not only_src0:
            return None
        if id(u) in chosen:
            continue
        if is_host(u) or u.opcode != OPCODE.POOL or u.params[0] != POOL_MAX or u.act != FUNC.NONE:
            return None
        below = _int8_readers(graph, u.dst.buf, chosen)
        if below is None:
            return None
        pools += [u, *below]
    return pools
