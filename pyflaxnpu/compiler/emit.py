"""Emit a Program: op descriptors, the weights blob and the manifest, from the planned graph."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from flaxnpu_abi import prog

from pyflaxnpu.compiler import partition
from pyflaxnpu.compiler.ir import Buffer, Graph, Tensor
from pyflaxnpu.compiler.memory import Plan, align
from pyflaxnpu.program import Program

PRODUCER = "pyflaxnpu 0.1.0"


def emit(graph: Graph, plan: Plan, name: str) -> Program:
    full, graph = graph, partition.device_graph(graph)  # the op stream holds the NPU's ops only
    weights = _weights(graph)
    ops_end = align(len(graph.ops) * prog.OP_SIZE)
    where: dict[int, tuple[int, int]] = {id(b): (plan.seg[id(b)], plan.offset[id(b)]) for b in _scaled(graph)}
    blob = bytearray()
    for buf in weights:
        where[id(buf)] = (prog.SEG_PROGRAM, ops_end + len(blob))
        blob += buf.data.tobytes()  # type: ignore[union-attr]
        blob += bytes(align(len(blob)) - len(blob))
    descs = np.zeros(len(graph.ops), dtype=prog.OP)
    op_meta = []
    for i, op in enumerate(graph.ops):
        d = descs[i]
        d["opcode"], d["act"], d["flags"] = int(op.opcode), int(op.act), op.flags
        d["scale_mask"] = 1  # dims[0] is per item: see ir.Op
        d["dims"][: len(op.dims)] = op.dims
        d["params"][: len(op.params)] = op.params
        for slot, t in zip(("src0", "src1", "src2", "src3", "dst"), [*op.srcs, op.dst], strict=True):
            if t is not None:
                _ref(d[slot], t, where)
        op_meta.append({"index": i, "opcode": op.opcode.name, "act": op.act.name, "module": op.prov.module,
                        "primitives": list(op.prov.primitives), "source": op.prov.source})
        if op.quant or op.dst.buf.dtype == "int8":
            op_meta[-1]["int8"] = True
    image = descs.tobytes() + bytes(ops_end - descs.nbytes) + bytes(blob)
    manifest: dict[str, Any] = {
        "format_version": [prog.ABI_MAJOR, prog.ABI_MINOR],
        "producer": PRODUCER,
        "name": name,
        "inputs": [_io(graph.input, "input", where)],
        "outputs": [_io(t, t.buf.name, where) for t in graph.outputs],
        "arena_size": plan.arena_size,
        "weights_size": len(blob),
        "tensors": [_tensor(b, where) for b in [*_scaled(graph), *weights]],
        "ops": op_meta,
    }
    if not isinstance(graph.out_tree, int):
        manifest["output_tree"] = _tree(graph.out_tree)
    partition.annotate(manifest, full, graph, plan)
    return Program(image, len(graph.ops), manifest)


def _scaled(graph: Graph) -> list[Buffer]:
    seen: dict[int, Buffer] = {id(graph.input.buf): graph.input.buf}
    for op in graph.ops:
        for t in [*op.srcs, op.dst]:
            if t is not None and t.scaled:
                seen.setdefault(id(t.buf), t.buf)
    return list(seen.values())


def _weights(graph: Graph) -> list[Buffer]:
    seen: dict[int, Buffer] = {}
    for op in graph.ops:
        for t in op.srcs:
            if t is not None and not t.scaled:
                seen.setdefault(id(t.buf), t.buf)
    return list(seen.values())


DTYPES = {"float32": prog.DTYPE.F32, "int32": prog.DTYPE.I32, "int8": prog.DTYPE.I8}


def _ref(ref: np.void, t: Tensor, where: dict[int, tuple[int, int]]) -> None:
    seg, offset = where[id(t.buf)]
    ref["seg"], ref["offset"], ref["size"] = seg, offset, t.buf.itemsize * t.size
    ref["dtype"] = DTYPES[t.buf.dtype]
    ref["flags"] = prog.REF_FLAG.SCALED if t.scaled else 0


def _io(t: Tensor, name: str, where: dict[int, tuple[int, int]]) -> dict[str, Any]:
    return {"name": name, "shape": list(t.shape), "dtype": t.buf.dtype, "offset": where[id(t.buf)][1],
            "size": t.buf.itemsize * math.prod(t.shape)}


def _tensor(buf: Buffer, where: dict[int, tuple[int, int]]) -> dict[str, Any]:
    seg, offset = where[id(buf)]
    shape = list(buf.data.shape) if buf.data is not None else [buf.nbytes // buf.itemsize]
    return {"name": buf.name, "shape": shape, "dtype": buf.dtype, "seg": seg, "offset": offset,
            "size": buf.nbytes, "scaled": buf.scaled}


def _tree(node: Any) -> Any:
    if isinstance(node, int):
        return node
    if isinstance(node, (list, tuple)):
        return [_tree(c) for c in node]
    if isinstance(node, dict):
        return {str(k): _tree(c) for k, c in node.items()}
    raise TypeError(node)
