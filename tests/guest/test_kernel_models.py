"""Models through /dev/flaxnpuN: MLPs, a mixed program (device jobs over op ranges with CPU host segments
between them), and two processes sharing one device.

Outputs are checked against jax.jit here (1e-4; 1e-5 for the mixed program) and saved with their program and inputs to
$FLAXNPU_GUEST_OUT; tests/vm/test_guest_suite.py then runs the same programs on the host's in-process
simulator and requires identical bytes. (Comparing inside the guest would not be like for like: the
device model runs on the host's CPU, whose BLAS kernels differ from the emulated CPU's in the last bit.)
"""

import multiprocessing as mp
import os
import sys
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest
import shared_device_worker
from flax import nnx
from flaxnpu_abi import hw, prog

import pyflaxnpu
from pyflaxnpu.errors import JobError
from pyflaxnpu.program import Program

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from compiler_models import SortMLP  # also run on the in-process NPU by tests/sim/test_fallback.py


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


def save(name: str, program, xs, ys) -> None:
    """Hand a run to the host, which replays it on its in-process simulator."""
    out = os.environ.get("FLAXNPU_GUEST_OUT")
    if out:
        arrays = {f"x{i}": x for i, x in enumerate(xs)} | {f"y{i}": y for i, y in enumerate(ys)}
        np.savez(Path(out) / f"{name}.npz", program=np.frombuffer(program.to_bytes(), np.uint8), **arrays)


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


def test_linen_mlp_through_the_driver(kdev):
    program, ref = linen_program(0)
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((b, 24), dtype=np.float32) for b in (1, 5, 64, 300, 1500)]
    model = kdev.load(program)
    ys = [model(x) for x in xs]
    for x, y in zip(xs, ys, strict=True):
        np.testing.assert_allclose(y, ref(x), rtol=1e-4, atol=1e-5)
    save("linen_mlp", program, xs, ys)


def test_nnx_mlp_through_the_driver(kdev):
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(12, 20, rngs=rngs)
            self.b = nnx.Linear(20, 3, rngs=rngs)

        def __call__(self, x):
            return self.b(nnx.relu(self.a(x)))

    net = Net(nnx.Rngs(1))
    program = pyflaxnpu.compile(net, None, np.ones((1, 12), np.float32))
    x = np.random.default_rng(2).standard_normal((33, 12), dtype=np.float32)
    y = kdev.load(program)(x)
    np.testing.assert_allclose(y, np.asarray(jax.jit(net)(x)), rtol=1e-4, atol=1e-5)
    save("nnx_mlp", program, [x], [y])


class SmallCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.max_pool(nn.relu(nn.Conv(4, (3, 3))(x)), (2, 2), (2, 2))
        x = nn.relu(nn.Conv(8, (3, 3))(x))
        return nn.Dense(5)(x.reshape(x.shape[0], -1))


def test_int8_cnn_through_the_driver(kdev):
    """Format 1.2's int8 ops (QUANT conv, int8 max pool, CONVERT) through the driver: close to float32,
    and replayed byte for byte on the host (integer products and elementwise float32 are exact anywhere)."""
    module = SmallCNN()
    rng = np.random.default_rng(2)
    calib = rng.standard_normal((32, 6, 6, 2), dtype=np.float32)
    variables = module.init(jax.random.PRNGKey(3), calib[:1])
    program = pyflaxnpu.compile(module, variables, calib[:1], quantize="int8", calibration=calib)
    assert any(int(op["flags"]) & prog.OP_FLAG.QUANT for op in program.ops)
    xs = [rng.standard_normal((b, 6, 6, 2), dtype=np.float32) for b in (1, 17)]
    model = kdev.load(program)
    ys = [model(x) for x in xs]
    for x, y in zip(xs, ys, strict=True):
        want = np.asarray(module.apply(variables, x))
        assert np.sqrt(np.mean((y - want) ** 2)) < 0.05 * np.sqrt(np.mean(want ** 2))
    save("int8_cnn", program, xs, ys)


def test_second_device_works_too():
    program, ref = linen_program(3)
    x = np.random.default_rng(3).standard_normal((7, 24), dtype=np.float32)
    with pyflaxnpu.open("/dev/flaxnpu1") as dev1:
        y = dev1.load(program)(x)
    np.testing.assert_allclose(y, ref(x), rtol=1e-4, atol=1e-5)
    save("second_device", program, [x], [y])


def test_two_processes_share_one_device():
    """Two processes, each with its own weights on one device at once: buffers crossing between the
    contexts would show as outputs of the other process's program."""
    rng = np.random.default_rng(9)
    built = [linen_program(seed) for seed in (10, 11)]
    inputs = [[rng.standard_normal((int(rng.integers(1, 40)), 24), dtype=np.float32) for _ in range(25)]
              for _ in built]
    ctx = mp.get_context("spawn")
    queues = [ctx.Queue() for _ in built]
    procs = [ctx.Process(target=shared_device_worker.run, args=(p.to_bytes(), xs, q))
             for (p, _), xs, q in zip(built, inputs, queues, strict=True)]
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
    assert not [r for r in results if isinstance(r, str)], results
    for i, ((program, ref), xs, ys) in enumerate(zip(built, inputs, results, strict=True)):
        for x, y in zip(xs, ys, strict=True):
            np.testing.assert_allclose(y, ref(x), rtol=1e-4, atol=1e-5)
        save(f"process_{i}", program, xs, ys)


@pytest.fixture(scope="module")
def mixed():
    module = SortMLP()
    x = np.ones((1, 12), np.float32)
    variables = module.init(jax.random.key(3), x)
    program = pyflaxnpu.compile(module, variables, x)
    kinds = [s["kind"] for s in program.manifest["segments"]]
    assert kinds.count("cpu") >= 2 and kinds.count("npu") >= 2, kinds
    return program, jax.jit(lambda v: module.apply(variables, v))


def jobs_done() -> int:
    return int(Path("/sys/class/flaxnpu/flaxnpu0/jobs_done").read_text())


@pytest.mark.parametrize("batch,max_batch", [(1, None), (37, None), (37, 16)])
def test_mixed_program_through_the_driver(kdev, mixed, batch, max_batch):
    """Each device segment is one EXECUTE over its op range; the host segments run on the mapped arena."""
    program, ref = mixed
    model = kdev.load(program, max_batch=max_batch)
    x = np.random.default_rng(batch).standard_normal((batch, 12), dtype=np.float32)
    before = jobs_done()
    y = model(x)
    device_segments = sum(s["kind"] == "npu" for s in program.manifest["segments"])
    assert jobs_done() - before == device_segments * -(-batch // model.max_batch)
    np.testing.assert_allclose(y, np.asarray(ref(x)), rtol=1e-5, atol=1e-5)
    model.unload()
    save(f"mixed_b{batch}_m{max_batch}", program, [x], [y])


def test_mixed_program_names_a_failing_op_of_a_later_device_segment(kdev, mixed):
    """The driver reports the failing op as an index into the whole op stream, not the job's range."""
    program, _ = mixed
    seg = [s for s in program.manifest["segments"] if s["kind"] == "npu"][1]
    bad = seg["first"] + 1 if seg["last"] - seg["first"] > 1 else seg["first"]
    image = bytearray(program.image)
    image[bad * prog.OP_SIZE + prog.OP.fields["reserved1"][1]] = 1  # the firmware refuses it: OP_RESERVED
    broken = Program(bytes(image), program.op_count, program.manifest, program.version)
    model = kdev.load(broken)
    with pytest.raises(JobError) as e:
        model(np.ones((3, 12), np.float32))
    assert e.value.status == hw.STATUS.OP_RESERVED and e.value.op_index == bad
    module = program.manifest["ops"][bad]["module"]
    assert f"at op {bad}:" in str(e.value) and f"from {module}" in str(e.value)
    model.unload()
