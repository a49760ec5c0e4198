"""Flax model -> NPU Program.

    program = compile(model, variables, example_input)   # linen: variables from model.init
    program = compile(nnx_model, None, example_input)     # nnx: the module carries its state

Pipeline, one file each: trace (jaxpr, symbolic batch axis) -> lower (registry: primitive -> rule,
constant folding) -> fuse (softmax, bias, activations) -> [quantize, calibrate] -> memory
(liveness-planned arena) -> emit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pyflaxnpu.compiler import calibrate, emit, fuse, lower, memory, partition, quantize, trace
from pyflaxnpu.compiler.ir import Graph
from pyflaxnpu.errors import CompileError
from pyflaxnpu.program import Program

QUANTIZE = (None, "int8")


def compile(module: Any, variables: Any, example_input: Any, *, name: str | None = None,
            fallback: str = "auto", quantize: str | None = None, calibration: Any = None) -> Program:
    """Compile a flax.linen Module (+ variables) or a flax.nnx Module (variables=None) to a Program.

    example_input fixes the per-example shape; its leading axis is the batch, and the program runs any
    batch size. fallback="auto" runs what the NPU cannot (no lowering, or shapes its ops refuse) on the
    CPU with jax, in host segments between device jobs (compiler/partition.py; program.report() says
    which ops and why); fallback="error" raises CompileError instead (UnsupportedPrimitiveError for a
    primitive without a lowering).

    quantize="int8" runs the weight GEMMs (dense and conv layers) in int8 (compiler/quantize.py); it
    needs calibration: an array [batch, *input shape], or an iterable of such batches, of representative
    inputs. The program's report then gives the int8 program's error against float on that data.
    """
    if fallback not in partition.FALLBACKS:
        raise CompileError(f"fallback={fallback!r}: use 'auto' (run unsupported parts on the CPU) or "
                           "'error' (refuse them)")
    if quantize not in QUANTIZE:
        raise CompileError(f"quantize={quantize!r}: use None (float32) or 'int8'")
    traced = trace.trace(module, variables, example_input)
    name = name or traced.name
    if quantize is None:
        return _finish(_graph(traced, fallback), traced, name)
    return _int8(traced, fallback, name, calibration)


def _graph(traced: trace.Traced, fallback: str) -> Graph:
    graph = lower.lower(traced, partition.HostLowering(traced.batch) if fallback == "auto" else None)
    partition.check_outputs(graph)
    fuse.run(graph)
    partition.merge(graph)
    partition.require_device(graph)
    return graph


def _finish(graph: Graph, traced: trace.Traced, name: str) -> Program:
    partition.export_segments(graph, traced.batch)
    plan = memory.plan(graph)
    return emit.emit(graph, plan, name)


def _int8(traced: trace.Traced, fallback: str, name: str, calibration: Any) -> Program:
    """Calibrate on a float program with probes, then build the int8 program from a fresh lowering and
    measure it against the float outputs on the same data."""
    probe_graph = _graph(traced, fallback)
    n_out = len(probe_graph.outputs)
    in_dtype = np.dtype(probe_graph.input.buf.dtype)
    data = calibrate.batches(calibration, tuple(probe_graph.input.shape), in_dtype)
    ops = quantize.targets(probe_graph)
    if not ops:
        raise CompileError(f'quantize="int8": {name} has no dense or conv layer with constant weights on the NPU, '
                           "so there is nothing to quantize; compile without quantize")
    probes = quantize.add_probes(probe_graph, ops)
    observed = calibrate.run(_finish(probe_graph, traced, name + ".calibration"), data)
    amax = [calibrate.amax(observed[n_out + k]) for k in range(probes.count)]
    graph = _graph(traced, fallback)
    qops = quantize.targets(graph)
    assert [(o.opcode, o.dims) for o in qops] == [(o.opcode, o.dims) for o in ops], "lowering is deterministic"
    quantize.apply(graph, qops,
                   [quantize.activation_scale(amax[p], f"the input of op {i} ({qops[i].prov.module})")
                    for i, p in enumerate(probes.inputs)],
                   [quantize.activation_scale(amax[p], f"the output of op {i} ({qops[i].prov.module})")
                    if p >= 0 else None for i, p in enumerate(probes.outputs)])
    program = _finish(graph, traced, name)
    got = calibrate.run(program, data)
    manifest = dict(program.manifest)
    manifest["quantization"] = {
        "scheme": "int8 symmetric: per-channel weight scales, per-tensor activation scales, int32 accumulation",
        "quantized_ops": len(qops), "calibration_items": int(sum(len(b) for b in data)),
        "outputs": calibrate.accuracy([o["name"] for o in program.outputs], observed[:n_out], got)}
    return Program(program.image, program.op_count, manifest)


__all__ = ["compile"]
