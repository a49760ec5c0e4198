"""Flax model -> NPU Program.

    program = compile(model, variables, example_input)   # linen: variables from model.init
    program = compile(nnx_model, None, example_input)     # nnx: the module carries its state

Pipeline, one file each: trace (jaxpr, symbolic batch axis) -> lower (registry: primitive -> rule,
constant folding) -> fuse (softmax, bias, activations) -> memory (liveness-planned arena) -> emit.
"""

from __future__ import annotations

from typing import Any

from pyflaxnpu.compiler import emit, fuse, lower, memory, partition, trace
from pyflaxnpu.errors import CompileError
from pyflaxnpu.program import Program


def compile(module: Any, variables: Any, example_input: Any, *, name: str | None = None,
            fallback: str = "auto") -> Program:
    """Compile a flax.linen Module (+ variables) or a flax.nnx Module (variables=None) to a Program.

    example_input fixes the per-example shape; its leading axis is the batch, and the program runs any
    batch size. fallback="auto" runs what the NPU cannot (no lowering, or shapes its ops refuse) on the
    CPU with jax, in host segments between device jobs (compiler/partition.py; program.report() says
    which ops and why); fallback="error" raises CompileError instead (UnsupportedPrimitiveError for a
    primitive without a lowering).
    """
    if fallback not in partition.FALLBACKS:
        raise CompileError(f"fallback={fallback!r}: use 'auto' (run unsupported parts on the CPU) or "
                           "'error' (refuse them)")
    traced = trace.trace(module, variables, example_input)
    graph = lower.lower(traced, partition.HostLowering(traced.batch) if fallback == "auto" else None)
    partition.check_outputs(graph)
    fuse.run(graph)
    partition.merge(graph)
    partition.require_device(graph)
    partition.export_segments(graph, traced.batch)
    plan = memory.plan(graph)
    return emit.emit(graph, plan, name or traced.name)


__all__ = ["compile"]
