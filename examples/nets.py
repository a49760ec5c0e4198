"""Conv nets, ResNets and transformer encoders, linen and nnx twins: the model zoo of the compiler tests
and of the benchmark (bench/throughput.py)."""

from __future__ import annotations

import flax.linen as nn
import jax
from flax import nnx


# ---------------------------------------------------------------------------------------- CNN
class LinenCNN(nn.Module):
    """Conv+BN+relu, max_pool, Conv+BN+relu, avg_pool, flatten, Dense (the digits CNN)."""

    c1: int = 8
    c2: int = 16

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(self.c1, (3, 3))(x)))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(self.c2, (3, 3), use_bias=False)(x)))
        x = nn.avg_pool(x, (2, 2), (2, 2))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


class NnxCNN(nnx.Module):
    def __init__(self, c_in: int, hw: int, c1: int = 8, c2: int = 16, seed: int = 0) -> None:
        rngs = nnx.Rngs(seed)
        self.conv1 = nnx.Conv(c_in, c1, (3, 3), rngs=rngs)
        self.bn1 = nnx.BatchNorm(c1, use_running_average=True, rngs=rngs)
        self.conv2 = nnx.Conv(c1, c2, (3, 3), use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(c2, use_running_average=True, rngs=rngs)
        self.head = nnx.Linear(c2 * (hw // 4) ** 2, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = nnx.max_pool(x, (2, 2), (2, 2))
        x = nnx.relu(self.bn2(self.conv2(x)))
        x = nnx.avg_pool(x, (2, 2), (2, 2))
        return self.head(x.reshape(x.shape[0], -1))


# ---------------------------------------------------------------------------------------- ResNet
class LinenBlock(nn.Module):
    width: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        bn = lambda: nn.BatchNorm(use_running_average=True)  # noqa: E731
        y = nn.relu(bn()(nn.Conv(self.width, (3, 3), self.stride, use_bias=False)(x)))
        y = bn()(nn.Conv(self.width, (3, 3), use_bias=False)(y))
        if x.shape[-1] != self.width or self.stride != 1:
            x = bn()(nn.Conv(self.width, (1, 1), self.stride, use_bias=False)(x))
        return nn.relu(y + x)


class LinenResNet(nn.Module):
    widths: tuple[int, ...] = (8, 16)
    strides: tuple[int, ...] = (1, 2)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(self.widths[0], (3, 3), use_bias=False)(x)))
        for w, s in zip(self.widths, self.strides, strict=True):
            x = LinenBlock(w, s)(x)
        return nn.Dense(10)(x.mean(axis=(1, 2)))


class NnxBlock(nnx.Module):
    def __init__(self, c_in: int, width: int, stride: int, rngs: nnx.Rngs) -> None:
        self.conv1 = nnx.Conv(c_in, width, (3, 3), stride, use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(width, use_running_average=True, rngs=rngs)
        self.conv2 = nnx.Conv(width, width, (3, 3), use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(width, use_running_average=True, rngs=rngs)
        project = c_in != width or stride != 1
        self.proj = nnx.data(nnx.Conv(c_in, width, (1, 1), stride, use_bias=False, rngs=rngs) if project else None)
        self.bnp = nnx.data(nnx.BatchNorm(width, use_running_average=True, rngs=rngs) if project else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.bn2(self.conv2(nnx.relu(self.bn1(self.conv1(x)))))
        if self.proj is not None:
            x = self.bnp(self.proj(x))
        return nnx.relu(y + x)


class NnxResNet(nnx.Module):
    def __init__(self, c_in: int, widths: tuple[int, ...] = (8, 16), strides: tuple[int, ...] = (1, 2),
                 seed: int = 0) -> None:
        rngs = nnx.Rngs(seed)
        self.stem = nnx.Conv(c_in, widths[0], (3, 3), use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(widths[0], use_running_average=True, rngs=rngs)
        chans = (widths[0], *widths)
        self.blocks = nnx.List([NnxBlock(a, w, s, rngs) for a, w, s in zip(chans, widths, strides, strict=False)])
        self.head = nnx.Linear(widths[-1], 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(axis=(1, 2)))


# ---------------------------------------------------------------------------------------- transformer
class LinenEncoder(nn.Module):
    """Embed + learned positions, pre-LN attention and MLP blocks with residuals, LN, mean pool, Dense.
    causal: each token attends to itself and the tokens before it (a constant mask)."""

    length: int
    d: int = 32
    heads: int = 4
    vocab: int = 17
    causal: bool = False

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        x = nn.Embed(self.vocab, self.d)(t) + self.param("pos", nn.initializers.normal(0.02), (self.length, self.d))
        mask = nn.make_causal_mask(t) if self.causal else None
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads)(nn.LayerNorm()(x), mask=mask)
        x = x + nn.Dense(self.d)(nn.gelu(nn.Dense(2 * self.d)(nn.LayerNorm()(x))))
        return nn.Dense(10)(nn.LayerNorm()(x).mean(axis=1))


class NnxEncoder(nnx.Module):
    """The same encoder in nnx, with nnx.MultiHeadAttention."""

    def __init__(self, length: int, d: int = 32, heads: int = 4, vocab: int = 17, causal: bool = False,
                 seed: int = 0) -> None:
        rngs = nnx.Rngs(seed)
        self.causal = causal
        self.emb = nnx.Embed(vocab, d, rngs=rngs)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (length, d)))
        self.ln1, self.ln2, self.ln3 = (nnx.LayerNorm(d, rngs=rngs) for _ in range(3))
        self.att = nnx.MultiHeadAttention(heads, d, decode=False, rngs=rngs)
        self.up, self.down = nnx.Linear(d, 2 * d, rngs=rngs), nnx.Linear(2 * d, d, rngs=rngs)
        self.head = nnx.Linear(d, 10, rngs=rngs)

    def __call__(self, t: jax.Array) -> jax.Array:
        x = self.emb(t) + self.pos[...]
        mask = nnx.make_causal_mask(t) if self.causal else None
        x = x + self.att(self.ln1(x), mask=mask)
        x = x + self.down(nnx.gelu(self.up(self.ln2(x))))
        return self.head(self.ln3(x).mean(axis=1))
