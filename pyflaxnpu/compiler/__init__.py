"""Flax model -> NPU Program.

    program = compile(model, variables, example_input)   # linen: variables from model.init
    program = compile(nnx_model, None, example_input)     # nnx: the module carries its state

Pipeline, one file each: trace (jaxpr, symbolic batch axis) -> lower (registry: primitive -> rule,
constant folding) -> fuse (softmax, bias, activations) -> memory (liveness-planned arena) -> emit.
"""

from __future__ import annotations

from typing import Any

from pyflaxnpu.compiler import emit, fuse, lower, memory, trace
from pyflaxnpu.program import Program


def compile(module: Any, variables: Any, example_input: Any, *, name: str | None = None) -> Program:
    """Compile a flax.linen Module (+ variables) or a flax.nnx Module (variables=None) to a Program.

    example_input fixes the per-example shape; its leading axis is the batch, and the program runs any
    batch size. Raises CompileError (UnsupportedPrimitiveError for a primitive without a lowering).
    """
    traced = trace.trace(module, variables, example_input)
    graph = lower.lower(traced)
    fuse.run(graph)
    plan = memory.plan(graph)
    return emit.emit(graph, plan, name or traced.name)


__all__ = ["compile"]
