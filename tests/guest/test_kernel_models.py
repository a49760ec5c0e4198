"""Models through /dev/flaxnpuN: MLPs, an int8 CNN, a mixed program (device jobs over op ranges with CPU
host segments between them), and two processes sharing one device.

The programs, inputs and jax.jit's outputs come from the host (guest_models.py: jax under TCG would take
minutes). Outputs are checked against jax.jit's (1e-4; 1e-5 for the mixed program; int8 within 5 % rms)
and saved with their program and inputs to $FLAXNPU_GUEST_OUT; tests/vm/test_guest_suite.py then runs the
same programs on the host's in-process simulator and requires identical bytes. (Comparing inside the
guest would not be like for like: the device model runs on the host's CPU, whose BLAS kernels differ
from the emulated CPU's in the last bit.)"""

import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest
import shared_device_worker
from flaxnpu_abi import hw, prog
from guest_models import load

import pyflaxnpu
from pyflaxnpu.errors import JobError
from pyflaxnpu.program import Program


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
    assert all(d.pci_address and d.firmware == "1.2.0" for d in found)


def test_linen_mlp_through_the_driver(kdev):
    program, xs, refs = load("linen_mlp")
    model = kdev.load(program)
    ys = [model(x) for x in xs]
    for y, ref in zip(ys, refs, strict=True):
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
    save("linen_mlp", program, xs, ys)


def test_nnx_mlp_through_the_driver(kdev):
    program, (x,), (ref,) = load("nnx_mlp")
    y = kdev.load(program)(x)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
    save("nnx_mlp", program, [x], [y])


def test_int8_cnn_through_the_driver(kdev):
    """Format 1.2's int8 ops (QUANT convs, int8 max pool, CONVERT) through the driver: close to float32,
    and replayed byte for byte on the host (integer products and elementwise float32 are exact anywhere)."""
    program, xs, refs = load("int8_cnn")
    assert any(int(op["flags"]) & prog.OP_FLAG.QUANT for op in program.ops)
    model = kdev.load(program)
    ys = [model(x) for x in xs]
    for y, want in zip(ys, refs, strict=True):
        assert np.sqrt(np.mean((y - want) ** 2)) < 0.05 * np.sqrt(np.mean(want ** 2))
    save("int8_cnn", program, xs, ys)


def test_second_device_works_too():
    program, (x,), (ref,) = load("second_device")
    with pyflaxnpu.open("/dev/flaxnpu1") as dev1:
        y = dev1.load(program)(x)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
    save("second_device", program, [x], [y])


def test_two_processes_share_one_device():
    """Two processes, each with its own weights on one device at once: buffers crossing between the
    contexts would show as outputs of the other process's program."""
    built = [load(f"process_{i}") for i in range(2)]
    ctx = mp.get_context("spawn")
    queues = [ctx.Queue() for _ in built]
    procs = [ctx.Process(target=shared_device_worker.run, args=(p.to_bytes(), xs, q))
             for (p, xs, _), q in zip(built, queues, strict=True)]
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
    for i, ((program, xs, refs), ys) in enumerate(zip(built, results, strict=True)):
        for y, ref in zip(ys, refs, strict=True):
            np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
        save(f"process_{i}", program, xs, ys)


@pytest.fixture(scope="module")
def mixed():
    program, xs, refs = load("mixed")
    kinds = [s["kind"] for s in program.manifest["segments"]]
    assert kinds.count("cpu") >= 2 and kinds.count("npu") >= 2, kinds
    return program, dict(zip((len(x) for x in xs), zip(xs, refs, strict=True), strict=True))


def jobs_done() -> int:
    return int(Path("/sys/class/flaxnpu/flaxnpu0/jobs_done").read_text())


# batch 1, 37 in one job, and 37 in jobs of 16 (chunks of 16, 16 and 5)
@pytest.mark.parametrize("batch,max_batch", [(1, None), (37, None), (37, 16)])
def test_mixed_program_through_the_driver(kdev, mixed, batch, max_batch):
    """Each device segment is one EXECUTE over its op range; the host segments run on the mapped arena."""
    program, runs = mixed
    x, ref = runs[batch]
    model = kdev.load(program, max_batch=max_batch)
    before = jobs_done()
    y = model(x)
    device_segments = sum(s["kind"] == "npu" for s in program.manifest["segments"])
    assert jobs_done() - before == device_segments * -(-batch // model.max_batch)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
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
