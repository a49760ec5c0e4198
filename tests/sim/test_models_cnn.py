"""CNNs, ResNets and transformer encoders on the simulated NPU (real firmware, format 1.1 ops) match
jax.jit on the CPU: one compiled program, several batch sizes."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pyflaxnpu

sys.path.insert(0, str(Path(__file__).parent.parent / "unit"))
from compiler_nets import (  # the model zoo of the compiler unit tests
    LinenCNN,
    LinenEncoder,
    LinenResNet,
    NnxCNN,
    NnxEncoder,
    NnxResNet,
    nnx_perturb,
    perturb,
    sample,
)


def check(device, program, ref, shape, dtype=np.float32, batches=(1, 6, 33)):
    model = device.load(program)
    try:
        for b in batches:
            x = sample(b, shape, dtype)
            got, want = model(x), np.asarray(ref(x))
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(want).max())))
    finally:
        model.unload()


def linen(model, shape, dtype=np.float32):
    variables = perturb(model.init(jax.random.key(0), jnp.ones((1, *shape), dtype)))
    return pyflaxnpu.compile(model, variables, np.ones((1, *shape), dtype)), jax.jit(
        lambda x: model.apply(variables, x))


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_cnn_with_batchnorm(device, api):
    shape = (8, 8, 1)
    if api == "linen":
        program, ref = linen(LinenCNN(8, 16), shape)
    else:
        ref = nnx_perturb(NnxCNN(1, 8, 8, 16))
        program = pyflaxnpu.compile(ref, None, np.ones((1, *shape), np.float32))
    check(device, program, ref, shape)


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_resnet(device, api):
    shape = (9, 9, 3)
    if api == "linen":
        program, ref = linen(LinenResNet((8, 16), (1, 2)), shape)
    else:
        ref = nnx_perturb(NnxResNet(3, (8, 16), (1, 2)))
        program = pyflaxnpu.compile(ref, None, np.ones((1, *shape), np.float32))
    check(device, program, ref, shape)


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_transformer_encoder_on_token_ids(device, api):
    shape = (12,)
    if api == "linen":
        program, ref = linen(LinenEncoder(12, 32, 4), shape, np.int32)
    else:
        ref = nnx_perturb(NnxEncoder(12, 32, 4))
        program = pyflaxnpu.compile(ref, None, np.ones((1, *shape), np.int32))
    check(device, program, ref, shape, np.int32)
