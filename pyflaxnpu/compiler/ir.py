"""The compiler's graph IR: NPU ops over buffers, close to the descriptors but still symbolic.

Shapes of batch-dependent tensors are per batch item (the leading batch axis is implicit); weights have
their full shape. Ops name their operands by Tensor (a buffer seen with a shape: reshapes are views), so
passes can fuse and re-wire ops before memory planning gives every buffer its place.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from flaxnpu_abi.prog import BCAST, FUNC, OP_FLAG, OPCODE, POOL
from flaxnpu_abi.prog import REDUCE as REDUCE  # re-exported for the passes

Kind = Literal["weight", "act", "input", "output"]


def f32_bits(x: float) -> int:
    """A float32 params word (eps, alpha, scales): the bits of x rounded to float32."""
    return int.from_bytes(struct.pack("<f", x), "little")


def bits_f32(word: int) -> float:
    return struct.unpack("<f", struct.pack("<I", word))[0]
POOL_MAX, POOL_AVG = int(POOL.MAX), int(POOL.AVG)


@dataclass(eq=False)
class Buffer:
    """Storage: a weight (bytes in the image) or a per-item range of the arena, input or output."""

    name: str
    nbytes: int                      # per batch item unless kind == "weight"
    kind: Kind
    data: np.ndarray | None = None   # contents of a weight (float32, or int8 once quantized)
    dtype: str = "float32"           # "int32" for token indices (GATHER's src0, the input), "int8" when quantized

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    @property
    def scaled(self) -> bool:
        return self.kind != "weight"


@dataclass(eq=False)
class Tensor:
    """A buffer seen with a shape (per item when the buffer is scaled)."""

    buf: Buffer
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def scaled(self) -> bool:
        return self.buf.scaled


@dataclass(frozen=True)
class Provenance:
    module: str
    source: str | None
    primitives: tuple[str, ...]

    def merge(self, other: Provenance) -> Provenance:
        return Provenance(self.module or other.module, self.source or other.source,
                          self.primitives + other.primitives)


@dataclass(eq=False)
class Op:
    """One NPU op. dims are per item; dims[0] is the one that scales with the batch (every op's output
    depends on the input, since everything else was folded into the weights)."""

    opcode: OPCODE
    dims: list[int]
    srcs: list[Tensor | None]        # src0, src1, src2, src3 (src3: the RESIDUAL operand)
    dst: Tensor
    prov: Provenance
    act: FUNC = FUNC.NONE
    params: list[int] = field(default_factory=list)
    bias: bool = False
    quant: bool = False              # OP_FLAG.QUANT: int8 MATMUL/CONV2D (compiler/quantize.py)

    @property
    def residual(self) -> bool:
        return self.srcs[3] is not None

    @property
    def flags(self) -> int:
        return ((OP_FLAG.BIAS if self.bias else 0) | (OP_FLAG.RESIDUAL if self.residual else 0)
                | (OP_FLAG.QUANT if self.quant else 0))

    def reads(self) -> list[Buffer]:
        return [t.buf for t in self.srcs if t is not None]

    def writes(self) -> list[Buffer]:
        return [self.dst.buf]  # a CPU op (partition.HostOp) may write several

    @property
    def bcast(self) -> tuple[BCAST, BCAST]:
        assert self.opcode == OPCODE.BINARY
        return BCAST(self.params[1]), BCAST(self.params[2])


@dataclass
class Graph:
    ops: list[Op]
    input: Tensor
    outputs: list[Tensor]
    out_tree: object
    name: str

    def users(self, buf: Buffer) -> list[Op]:
        return [op for op in self.ops if buf in op.reads()]

    def producer(self, buf: Buffer) -> Op | None:
        for op in self.ops:
            if op.dst.buf is buf:
                return op
        return None

    def is_output(self, buf: Buffer) -> bool:
        return any(t.buf is buf for t in self.outputs)
