"""int8 post-training quantization (compile(..., quantize="int8", calibration=...)) on the simulated NPU:
an independent integer reference for one layer, the digits CNN within one point of float (linen and
nnx), the other model families close to float, host segments, the report, and the errors."""

import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flaxnpu_abi.prog import CONVERT, DTYPE, OP_FLAG, OPCODE

import pyflaxnpu
from pyflaxnpu.errors import CompileError, ProgramFormatError
from pyflaxnpu.program import Program

sys.path.insert(0, str(Path(__file__).parent.parent / "unit"))
sys.path.insert(0, str(Path(__file__).parent.parent.parent / "examples"))
from compiler_models import SortMLP
from compiler_nets import LinenEncoder, LinenResNet, NnxResNet, nnx_perturb, perturb, sample
from digits import DigitsCNN, load_data, train


def f32(bits: int) -> float:
    return float(np.array(bits, "<u4").view("<f4"))


class Dense(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.relu(nn.Dense(7)(x))


def test_one_dense_layer_matches_an_integer_reference(device):
    rng = np.random.default_rng(0)
    model = Dense()
    variables = perturb(model.init(jax.random.key(0), jnp.ones((1, 13))))
    calib = rng.normal(size=(200, 13)).astype(np.float32)
    program = pyflaxnpu.compile(model, variables, calib[:1], quantize="int8", calibration=[calib[:120], calib[120:]])
    ops = program.ops
    assert [OPCODE(int(o["opcode"])).name for o in ops] == ["CONVERT", "MATMUL"]
    assert int(ops[1]["flags"]) == OP_FLAG.QUANT and int(ops[1]["src1"]["dtype"]) == DTYPE.I8
    assert int(ops[1]["dst"]["dtype"]) == DTYPE.F32  # a model output stays float32
    # the reference: symmetric scales from the calibration max and the weights' per-column max
    s_x = np.float32(np.abs(calib).max() / 127)
    assert f32(int(ops[0]["params"][0])) == s_x and int(ops[0]["params"][1]) == CONVERT.QUANTIZE
    w = np.asarray(variables["params"]["Dense_0"]["kernel"], np.float32)
    b = np.asarray(variables["params"]["Dense_0"]["bias"], np.float32)
    s_w = (np.abs(w).max(axis=0) / 127).astype(np.float32)
    x = rng.normal(size=(31, 13)).astype(np.float32) * 1.5  # some values saturate
    xq = np.clip(np.rint(x / s_x), -128, 127).astype(np.int64)
    wq = np.rint(w / s_w).astype(np.int64)
    want = np.maximum((xq @ wq).astype(np.float32) * (s_x * s_w).astype(np.float32) + b, 0)
    got = device.load(program)(x)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def digits():
    x_train, x_test, y_train, y_test = load_data()
    x_train, x_test = x_train.reshape(-1, 8, 8, 1), x_test.reshape(-1, 8, 8, 1)
    model = DigitsCNN()
    return model, train(model, x_train, y_train, epochs=30), x_train, x_test, y_test


def nnx_digits_cnn(params):
    """The trained linen DigitsCNN's weights in an nnx twin."""

    class NnxDigitsCNN(nnx.Module):
        def __init__(self):
            rngs = nnx.Rngs(0)
            self.c1, self.c2 = nnx.Conv(1, 8, (3, 3), rngs=rngs), nnx.Conv(8, 16, (3, 3), rngs=rngs)
            self.d1, self.d2 = nnx.Linear(64, 32, rngs=rngs), nnx.Linear(32, 10, rngs=rngs)

        def __call__(self, x):
            x = nnx.max_pool(nnx.relu(self.c1(x)), (2, 2), (2, 2))
            x = nnx.avg_pool(nnx.relu(self.c2(x)), (2, 2), (2, 2))
            return self.d2(nnx.relu(self.d1(x.reshape(x.shape[0], -1))))

    m = NnxDigitsCNN()
    for layer, name in ((m.c1, "Conv_0"), (m.c2, "Conv_1"), (m.d1, "Dense_0"), (m.d2, "Dense_1")):
        layer.kernel[...] = jnp.asarray(params["params"][name]["kernel"])
        layer.bias[...] = jnp.asarray(params["params"][name]["bias"])
    return m


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_digits_cnn_int8_is_within_one_point_of_float(device, digits, api):
    model, variables, x_train, x_test, y_test = digits
    if api == "nnx":
        model, variables = nnx_digits_cnn(variables), None
        ref = model
    else:
        ref = jax.jit(lambda x: model.apply(variables, x))
    program = pyflaxnpu.compile(model, variables, x_test[:1], quantize="int8", calibration=x_train[:512])
    # conv -> max pool -> conv runs on int8 end to end: one CONVERT at the input, one before the first dense
    names = [OPCODE(int(o["opcode"])).name for o in program.ops]
    assert names == ["CONVERT", "CONV2D", "POOL", "CONV2D", "POOL", "CONVERT", "MATMUL", "MATMUL"]
    assert int(program.ops[2]["flags"]) == OP_FLAG.QUANT  # the max pool
    float_acc = float((np.asarray(ref(x_test)).argmax(1) == y_test).mean())
    int8_acc = float((device.load(program)(x_test).argmax(1) == y_test).mean())
    assert float_acc > 0.9
    assert abs(int8_acc - float_acc) <= 0.01, (float_acc, int8_acc)
    q = program.manifest["quantization"]
    assert q["quantized_ops"] == 4 and q["calibration_items"] == 512
    assert q["outputs"][0]["top1_agreement"] >= 0.97
    report = program.report()
    assert "CONV2D+RELU i8" in report and "POOL i8" in report and "top-1 agrees on" in report
    # int8 weights: a quarter of the bytes, plus the requant tables
    float_program = pyflaxnpu.compile(model, variables, x_test[:1])
    assert program.weights_size < 0.45 * float_program.weights_size


def rel_rms(got, want):
    return float(np.sqrt(np.mean((got - want) ** 2)) / np.sqrt(np.mean(want ** 2)))


@pytest.mark.parametrize("family", ["resnet_linen", "resnet_nnx", "encoder"])
def test_other_families_quantize_close_to_float(device, family):
    if family == "encoder":
        shape, dtype = (16,), np.int32
        model = LinenEncoder(length=16)
        variables = perturb(model.init(jax.random.key(0), jnp.ones((1, *shape), dtype)))
        ref = jax.jit(lambda x: model.apply(variables, x))
    else:
        shape, dtype = (9, 9, 3), np.float32
        if family == "resnet_linen":
            model = LinenResNet()
            variables = perturb(model.init(jax.random.key(0), jnp.ones((1, *shape))))
            ref = jax.jit(lambda x: model.apply(variables, x))
        else:
            model, variables = nnx_perturb(NnxResNet(3)), None
            ref = model
    calib = sample(64, shape, dtype, seed=3)
    program = pyflaxnpu.compile(model, variables, calib[:1], quantize="int8", calibration=calib)
    weight_ops = [o for o in program.ops if int(o["opcode"]) in (OPCODE.MATMUL, OPCODE.CONV2D)
                  and int(o["src1"]["seg"]) == 0]
    assert weight_ops and all(int(o["flags"]) & OP_FLAG.QUANT for o in weight_ops)
    assert not any(int(o["flags"]) & OP_FLAG.BIAS for o in weight_ops)
    x = sample(40, shape, dtype, seed=4)
    got, want = device.load(program)(x), np.asarray(ref(x))
    assert rel_rms(got, want) < 0.05
    err = program.manifest["quantization"]["outputs"][0]
    assert 0 < err["rms_error"] / err["float_rms"] < 0.05


def test_int8_with_host_segments(device):
    model = SortMLP()
    variables = perturb(model.init(jax.random.key(0), jnp.ones((1, 6))))
    calib = sample(100, (6,), seed=5)
    program = pyflaxnpu.compile(model, variables, calib[:1], quantize="int8", calibration=calib)
    assert any(s["kind"] == "cpu" for s in program.manifest["segments"])
    x = sample(9, (6,), seed=6)
    want = np.asarray(jax.jit(lambda x: model.apply(variables, x))(x))
    assert rel_rms(device.load(program)(x), want) < 0.05


def test_saved_int8_program_loads_runs_and_reports(device, tmp_path):
    model = Dense()
    variables = perturb(model.init(jax.random.key(0), jnp.ones((1, 13))))
    calib = sample(50, (13,))
    program = pyflaxnpu.compile(model, variables, calib[:1], quantize="int8", calibration=calib)
    path = tmp_path / "dense.fnpu"
    program.save(path)
    again = Program.load(path)
    assert again.version == (1, 2) and again.manifest["quantization"] == program.manifest["quantization"]
    x = sample(7, (13,))
    np.testing.assert_array_equal(device.load(again)(x), device.load(program)(x))
    assert "int8: 1 ops quantized" in again.report()
    bad = dict(program.manifest, quantization={"outputs": [{"max_abs_error": "big"}]})
    with pytest.raises(ProgramFormatError, match=r"quantization\.outputs"):
        Program(program.image, program.op_count, bad)


class Elementwise(nn.Module):
    @nn.compact
    def __call__(self, x):
        return jnp.tanh(x) * 2.0


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(quantize="int4"), "quantize='int4'"),
    (dict(quantize="int8"), "needs calibration data"),
    (dict(quantize="int8", calibration=np.ones((4, 12), np.float32)), r"calibration batch 0 has shape \(4, 12\)"),
    (dict(quantize="int8", calibration=[]), "calibration is empty"),
    (dict(quantize="int8", calibration=np.full((4, 13), np.nan, np.float32)), "finite"),
    (dict(quantize="int8", calibration=3), "array or an iterable"),
])
def test_bad_quantization_arguments_are_named(kwargs, match):
    model = Dense()
    variables = model.init(jax.random.key(0), jnp.ones((1, 13)))
    with pytest.raises(CompileError, match=match):
        pyflaxnpu.compile(model, variables, np.ones((1, 13), np.float32), **kwargs)


def test_nothing_to_quantize_is_named():
    with pytest.raises(CompileError, match="nothing to quantize"):
        pyflaxnpu.compile(Elementwise(), {}, np.ones((1, 5), np.float32), quantize="int8",
                          calibration=np.ones((3, 5), np.float32))


def test_device_without_int8_engines_refuses_the_program_at_load():
    from flaxnpu_abi.hw import Reg

    model = Dense()
    variables = perturb(model.init(jax.random.key(0), jnp.ones((1, 13))))
    calib = sample(20, (13,))
    q8 = pyflaxnpu.compile(model, variables, calib[:1], quantize="int8", calibration=calib)
    fp = pyflaxnpu.compile(model, variables, calib[:1])
    with pyflaxnpu.open("sim") as dev:
        regs = dev.driver.regs
        regs.write(Reg.CAPS, regs.read(Reg.CAPS) & ~(1 << OPCODE.CONVERT))  # an engine set from before 1.2
        with pytest.raises(pyflaxnpu.DeviceError, match=r"format 1\.2\) uses CONVERT"):
            dev.load(q8)
        # the float32 program needs no CONVERT and still runs
        np.testing.assert_allclose(dev.load(fp)(calib), model.apply(variables, calib), rtol=1e-5, atol=1e-5)
