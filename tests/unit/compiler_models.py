"""Small Flax models for the compiler and program tests (linen and nnx twins)."""

from __future__ import annotations

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ACTIVATIONS = {
    "relu": nn.relu,
    "gelu_tanh": nn.gelu,
    "gelu_erf": lambda x: nn.gelu(x, approximate=False),
    "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid,
}


class LinenMLP(nn.Module):
    widths: tuple[int, ...]
    act: str = "relu"
    softmax: bool = False

    @nn.compact
    def __call__(self, x):
        for w in self.widths[:-1]:
            x = ACTIVATIONS[self.act](nn.Dense(w)(x))
        x = nn.Dense(self.widths[-1])(x)
        return nn.softmax(x) if self.softmax else x


class NnxMLP(nnx.Module):
    def __init__(self, d_in: int, widths: tuple[int, ...], act: str = "relu", softmax: bool = False,
                 seed: int = 0) -> None:
        rngs = nnx.Rngs(seed)
        dims = (d_in, *widths)
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(dims)])
        self.act, self.softmax = act, softmax

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = ACTIVATIONS[self.act](layer(x))
        x = self.layers[-1](x)
        return nn.softmax(x) if self.softmax else x


class SortMLP(nn.Module):
    """An MLP with sort, cumsum and argsort in the middle: none has an NPU lowering, so with the default
    fallback it compiles to device segments with CPU (host) segments between them."""

    @nn.compact
    def __call__(self, x):
        x = nn.gelu(nn.Dense(32)(x))
        x = jnp.sort(x, axis=-1)
        x = jnp.cumsum(nn.Dense(16)(x), axis=-1) * 0.1
        rank = jnp.argsort(x, axis=-1).astype(jnp.float32)
        return nn.softmax(nn.Dense(10)(jnp.tanh(x) + 0.01 * rank))


def linen(d_in: int, widths: tuple[int, ...], act: str = "relu", softmax: bool = False, seed: int = 0):
    """(model, variables, reference function of x) with non-zero biases, so bias handling is tested."""
    model = LinenMLP(widths, act, softmax)
    variables = model.init(jax.random.key(seed), jnp.ones((1, d_in)))
    variables = jax.tree_util.tree_map(
        lambda p: p + 0.1 * jax.random.normal(jax.random.key(seed + 1), p.shape), variables)
    return model, variables, jax.jit(lambda x: model.apply(variables, x))


def nnx_model(d_in: int, widths: tuple[int, ...], act: str = "relu", softmax: bool = False, seed: int = 0):
    model = NnxMLP(d_in, widths, act, softmax, seed)
    for layer in model.layers:
        layer.bias[...] = layer.bias[...] + 0.1
    graphdef, state = nnx.split(model)
    return model, None, jax.jit(lambda x: nnx.merge(graphdef, state)(x))


def inputs(batch: int, d_in: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, d_in)).astype(np.float32)
