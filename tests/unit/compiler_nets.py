"""Conv nets, ResNets and transformer encoders (linen and nnx twins) for the compiler tests, and the
check that runs a compiled program on the engines (program_runner) against jax.jit."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from flaxnpu_abi.prog import OPCODE
from program_runner import run

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from nets import (  # noqa: F401 - the model zoo lives with the examples; tests import it from here
    LinenBlock,
    LinenCNN,
    LinenEncoder,
    LinenResNet,
    NnxBlock,
    NnxCNN,
    NnxEncoder,
    NnxResNet,
)

RTOL = 1e-4


def perturb(variables, seed=1):
    """Non-trivial parameters: BatchNorm starts as the identity (mean 0, var 1, scale 1, bias 0)."""
    return jax.tree_util.tree_map(
        lambda p: p + 0.3 * jax.random.uniform(jax.random.key(seed), p.shape, p.dtype), variables)


def nnx_perturb(model, seed=1):
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, perturb(state, seed))


def sample(batch, shape, dtype=np.float32, vocab=17, seed=0):
    rng = np.random.default_rng(seed + batch)
    if dtype == np.int32:
        return rng.integers(0, vocab, size=(batch, *shape)).astype(np.int32)
    return rng.normal(size=(batch, *shape)).astype(np.float32)


def check(program, ref, shape, dtype=np.float32, batches=(1, 5)):
    """The ONE program at every batch size matches jax within RTOL relative to the output's scale."""
    for b in batches:
        x = sample(b, shape, dtype)
        got = run(program, x)
        want = [np.asarray(w) for w in jax.tree_util.tree_leaves(ref(x))]
        for g, w in zip(got, want, strict=True):
            scale = max(1.0, float(np.abs(w).max()))
            np.testing.assert_allclose(g, w, rtol=RTOL, atol=RTOL * scale)


def opcodes(program):
    return [OPCODE(int(op["opcode"])).name for op in program.ops]


