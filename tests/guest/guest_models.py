"""The models the guest tier runs through /dev/flaxnpuN, built on the host.

jax under TCG takes a minute a model to trace and compile, and nothing in the guest tier tests the
compiler, so tests/vm/test_guest_suite.py builds every program, its inputs and jax.jit's outputs on the
host (`python tests/guest/guest_models.py DIR`) and the guest reads them from $FLAXNPU_GUEST_IN. Without
that variable (a hand-run guest session) a test builds its model in the guest, slowly but the same.
Only programs with host segments need jax in the guest: to run those segments.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pyflaxnpu.program import Program

D_IN = 24


def _mlp_program(seed: int) -> tuple[Program, Callable]:
    import flax.linen as nn
    import jax

    import pyflaxnpu

    class MLP(nn.Module):
        widths: tuple[int, ...] = (32, 16, 10)

        @nn.compact
        def __call__(self, x):
            for w in self.widths[:-1]:
                x = nn.gelu(nn.Dense(w)(x))
            return nn.softmax(nn.Dense(self.widths[-1])(x))

    module = MLP()
    x = np.ones((1, D_IN), np.float32)
    variables = module.init(jax.random.PRNGKey(seed), x)
    ref = jax.jit(lambda v: module.apply(variables, v))
    return pyflaxnpu.compile(module, variables, x), lambda v: np.asarray(ref(v))


def _inputs(seed: int, batches: tuple[int, ...], shape: tuple[int, ...]) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((b, *shape), dtype=np.float32) for b in batches]


def linen_mlp() -> tuple[Program, list[np.ndarray], list[np.ndarray]]:
    program, ref = _mlp_program(0)
    xs = _inputs(1, (1, 5, 64, 300, 1500), (D_IN,))
    return program, xs, [ref(x) for x in xs]


def second_device() -> tuple[Program, list[np.ndarray], list[np.ndarray]]:
    program, ref = _mlp_program(3)
    xs = _inputs(3, (7,), (D_IN,))
    return program, xs, [ref(x) for x in xs]


def process(i: int) -> tuple[Program, list[np.ndarray], list[np.ndarray]]:
    """Two processes share one device, each with its own weights and 25 batches of 1..39 items."""
    program, ref = _mlp_program(10 + i)
    rng = np.random.default_rng(9 + i)
    xs = [rng.standard_normal((int(rng.integers(1, 40)), D_IN), dtype=np.float32) for _ in range(25)]
    return program, xs, [ref(x) for x in xs]


def nnx_mlp() -> tuple[Program, list[np.ndarray], list[np.ndarray]]:
    import jax
    from flax import nnx

    import pyflaxnpu

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(12, 20, rngs=rngs)
            self.b = nnx.Linear(20, 3, rngs=rngs)

        def __call__(self, x):
            return self.b(nnx.relu(self.a(x)))

    net = Net(nnx.Rngs(1))
    program = pyflaxnpu.compile(net, None, np.ones((1, 12), np.float32))
    xs = _inputs(2, (33,), (12,))
    return program, xs, [np.asarray(jax.jit(net)(x)) for x in xs]


def int8_cnn() -> tuple[Program, list[np.ndarray], list[np.ndarray]]:
    """Format 1.2's int8 ops (QUANT convs, an int8 max pool, CONVERT); the outputs are float32 jax's."""
    import flax.linen as nn
    import jax

    import pyflaxnpu

    class SmallCNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.max_pool(nn.relu(nn.Conv(4, (3, 3))(x)), (2, 2), (2, 2))
            x = nn.relu(nn.Conv(8, (3, 3))(x))
            return nn.Dense(5)(x.reshape(x.shape[0], -1))

    module = SmallCNN()
    calib = _inputs(2, (32,), (6, 6, 2))[0]
    variables = module.init(jax.random.PRNGKey(3), calib[:1])
    program = pyflaxnpu.compile(module, variables, calib[:1], quantize="int8", calibration=calib)
    xs = _inputs(4, (1, 17), (6, 6, 2))
    return program, xs, [np.asarray(module.apply(variables, x)) for x in xs]


def mixed() -> tuple[Program, list[np.ndarray], list[np.ndarray]]:
    """SortMLP: device segments with CPU (host) segments between them."""
    import jax

    import pyflaxnpu

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
    from compiler_models import SortMLP  # also run on the in-process NPU by tests/sim/test_fallback.py

    module = SortMLP()
    x = np.ones((1, 12), np.float32)
    variables = module.init(jax.random.key(3), x)
    program = pyflaxnpu.compile(module, variables, x)
    xs = _inputs(37, (1, 37), (12,))
    ref = jax.jit(lambda v: module.apply(variables, v))
    return program, xs, [np.asarray(ref(x)) for x in xs]


BUILDERS: dict[str, Callable[[], tuple[Program, list[np.ndarray], list[np.ndarray]]]] = {
    "linen_mlp": linen_mlp, "second_device": second_device, "process_0": lambda: process(0),
    "process_1": lambda: process(1), "nnx_mlp": nnx_mlp, "int8_cnn": int8_cnn, "mixed": mixed}


def load(name: str) -> tuple[Program, list[np.ndarray], list[np.ndarray]]:
    """Program, inputs and jax.jit's outputs: as the host built them, else built here."""
    where = os.environ.get("FLAXNPU_GUEST_IN")
    if not where:
        return BUILDERS[name]()
    data = np.load(Path(where) / f"{name}.npz")
    n = sum(k.startswith("x") for k in data.files)
    return (Program.from_bytes(data["program"].tobytes()), [data[f"x{i}"] for i in range(n)],
            [data[f"y{i}"] for i in range(n)])


def prepare(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, build in BUILDERS.items():
        program, xs, ys = build()
        arrays = {f"x{i}": x for i, x in enumerate(xs)} | {f"y{i}": y for i, y in enumerate(ys)}
        np.savez(out / f"{name}.npz", program=np.frombuffer(program.to_bytes(), np.uint8), **arrays)


if __name__ == "__main__":
    prepare(Path(sys.argv[1]))
