"""The first slice's models through /dev/flaxnpu0 give outputs identical to the in-process simulator, and
two processes share one device without seeing each other's buffers."""

import multiprocessing as mp

import flax.linen as nn
import jax
import numpy as np
import pytest
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
    return pyflaxnpu.compile(module, variables, x), lambda v: np.asarray(module.apply(variables, v))


@pytest.fixture(scope="module")
def sim():
    with pyflaxnpu.open("sim") as dev:
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


def _worker(seed: int, rounds: int, queue) -> None:
    program, ref = linen_program(seed)
    rng = np.random.default_rng(seed)
    worst = 0.0
    with pyflaxnpu.open("/dev/flaxnpu0") as dev:
        model = dev.load(program)
        for _ in range(rounds):
            x = rng.standard_normal((int(rng.integers(1, 50)), 24), dtype=np.float32)
            worst = max(worst, float(np.abs(model(x) - ref(x)).max()))
    queue.put((seed, worst))


def test_two_processes_share_one_device():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(seed, 30, queue)) for seed in (10, 11)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=240) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    # Different weights per process: any crossing of buffers would show as a large error.
    assert results.keys() == {10, 11}
    assert all(err < 1e-5 for err in results.values()), results
