"""The first slice's models through /dev/flaxnpu0 give outputs identical to the in-process simulator, and
two processes share one device without seeing each other's buffers."""

import multiprocessing as mp

import flax.linen as nn
import jax
import numpy as np
import pytest
import shared_device_worker
from flax import nnx

import pyflaxnpu


class MLP(nn.Module):
    widths: tuple[int, ...] = (32, 16, 10)

    @nn.compact
    def __call__(self, x):
        for w in self.widths[:-1]:
            x = nn.gelu(nn.Dense(w)(x))
        return nn.softmax(nn.Dense(self.widths[-1])(x))


def linen_program(seed: int, d_in: int = 24):
    module = MLP()
    x = np.ones((1, d_in), np.float32)
    variables = module.init(jax.random.PRNGKey(seed), x)
    ref = jax.jit(lambda v: module.apply(variables, v))
    return pyflaxnpu.compile(module, variables, x), lambda v: np.asarray(ref(v))


@pytest.fixture(scope="module")
def sim():
    # The guest has 512 MiB; the simulator's device-visible memory must leave room for everything else.
    with pyflaxnpu.open("sim", memory_size=64 << 20) as dev:
        yield dev


@pytest.fixture(scope="module")
def kdev():
    with pyflaxnpu.open("/dev/flaxnpu0") as dev:
        yield dev


def test_auto_prefers_the_kernel_device():
    with pyflaxnpu.open("auto") as dev:
        assert dev.name == "flaxnpu0"
        assert dev.info()["state"] == "READY"


def test_devices_are_listed_with_pci_address_and_firmware():
    found = pyflaxnpu.devices()
    assert [d.node for d in found][:2] == ["/dev/flaxnpu0", "/dev/flaxnpu1"]
    assert all(d.pci_address and d.firmware == "1.0.0" for d in found)


@pytest.mark.parametrize("batch", [1, 5, 64, 300])
def test_linen_mlp_identical_to_the_simulator(sim, kdev, batch):
    program, ref = linen_program(0)
    x = np.random.default_rng(batch).standard_normal((batch, 24), dtype=np.float32)
    got = kdev.load(program)(x)
    np.testing.assert_array_equal(got, sim.load(program)(x))
    np.testing.assert_allclose(got, ref(x), rtol=1e-4, atol=1e-5)


def test_nnx_mlp_identical_to_the_simulator(sim, kdev):
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(12, 20, rngs=rngs)
            self.b = nnx.Linear(20, 3, rngs=rngs)

        def __call__(self, x):
            return self.b(nnx.relu(self.a(x)))

    net = Net(nnx.Rngs(1))
    program = pyflaxnpu.compile(net, None, np.ones((1, 12), np.float32))
    x = np.random.default_rng(2).standard_normal((33, 12), dtype=np.float32)
    np.testing.assert_array_equal(kdev.load(program)(x), sim.load(program)(x))


def test_second_device_works_too(sim):
    program, _ = linen_program(3)
    x = np.random.default_rng(3).standard_normal((7, 24), dtype=np.float32)
    with pyflaxnpu.open("/dev/flaxnpu1") as dev1:
        np.testing.assert_array_equal(dev1.load(program)(x), sim.load(program)(x))


def test_two_processes_share_one_device(sim):
    """Two processes, each with its own program on one device at once: a crossing of buffers between the
    contexts would show as outputs that differ from the simulator's for that process's program."""
    rng = np.random.default_rng(9)
    programs = [linen_program(seed)[0] for seed in (10, 11)]
    inputs = [[rng.standard_normal((int(rng.integers(1, 40)), 24), dtype=np.float32) for _ in range(25)]
              for _ in programs]
    ctx = mp.get_context("spawn")
    queues = [ctx.Queue() for _ in programs]
    procs = [ctx.Process(target=shared_device_worker.run, args=(p.to_bytes(), xs, q))
             for p, xs, q in zip(programs, inputs, queues, strict=True)]
    try:
        for p in procs:
            p.start()
        results = [q.get(timeout=300) for q in queues]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.exitcode is None:
                p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    for program, xs, outs in zip(programs, inputs, results, strict=True):
        model = sim.load(program)
        for x, y in zip(xs, outs, strict=True):
            np.testing.assert_array_equal(y, model(x))
