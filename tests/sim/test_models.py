"""Whole Flax models on the simulated NPU match jax.jit on the CPU (fp32, 1e-4)."""

import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyflaxnpu

sys.path.insert(0, str(Path(__file__).parent.parent / "unit"))
from compiler_models import ACTIVATIONS, LinenMLP, NnxMLP  # the MLP zoo of the compiler unit tests


def check(device, program, fn, d_in, batches=(1, 7, 64)):
    model = device.load(program)
    rng = np.random.default_rng(0)
    for b in batches:
        x = rng.standard_normal((b, d_in), dtype=np.float32)
        got = model(x)
        want = np.asarray(jax.jit(fn)(x))
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    model.unload()


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("widths", [(10,), (32, 10), (128, 64, 10)], ids=lambda w: "x".join(map(str, w)))
def test_linen_mlp_matches_jax(device, act, widths):
    module = LinenMLP(widths, act)
    x = np.ones((1, 20), np.float32)
    variables = module.init(jax.random.PRNGKey(1), x)
    program = pyflaxnpu.compile(module, variables, x)
    check(device, program, lambda v: module.apply(variables, v), 20)


def test_linen_mlp_with_softmax_head(device):
    module = LinenMLP((48, 10), "relu", softmax=True)
    x = np.ones((1, 16), np.float32)
    variables = module.init(jax.random.PRNGKey(2), x)
    program = pyflaxnpu.compile(module, variables, x)
    check(device, program, lambda v: module.apply(variables, v), 16)


@pytest.mark.parametrize("act", ["relu", "gelu_tanh", "sigmoid"])
@pytest.mark.parametrize("widths", [(10,), (64, 32, 10)], ids=lambda w: "x".join(map(str, w)))
def test_nnx_mlp_matches_jax(device, act, widths):
    module = NnxMLP(24, widths, act, seed=3)
    x = np.ones((1, 24), np.float32)
    program = pyflaxnpu.compile(module, None, x)
    check(device, program, lambda v: module(v), 24)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(widths=st.lists(st.integers(1, 96), min_size=1, max_size=4).map(tuple),
       d_in=st.integers(1, 80), act=st.sampled_from(sorted(ACTIVATIONS)), batch=st.integers(1, 300))
def test_random_mlps_match_jax(device, widths, d_in, act, batch):
    module = LinenMLP(widths, act)
    x = np.ones((1, d_in), np.float32)
    variables = module.init(jax.random.PRNGKey(4), x)
    program = pyflaxnpu.compile(module, variables, x)
    check(device, program, lambda v: module.apply(variables, v), d_in, batches=(batch,))


def test_saved_program_runs_identically(device, tmp_path):
    module = LinenMLP((32, 10), "relu")
    x = np.random.default_rng(5).standard_normal((9, 12), dtype=np.float32)
    variables = module.init(jax.random.PRNGKey(5), x[:1])
    program = pyflaxnpu.compile(module, variables, x[:1])
    path = tmp_path / "m.fnpu"
    program.save(path)
    loaded = pyflaxnpu.Program.load(path)
    assert loaded.to_bytes() == program.to_bytes()
    a = device.load(program)(x)
    b = device.load(loaded)(x)
    np.testing.assert_array_equal(a, b)


def test_batches_larger_than_one_job_are_split(device):
    module = LinenMLP((16, 4), "tanh")
    x = np.random.default_rng(6).standard_normal((1000, 8), dtype=np.float32)
    variables = module.init(jax.random.PRNGKey(6), x[:1])
    model = device.load(pyflaxnpu.compile(module, variables, x[:1]), max_batch=128)
    np.testing.assert_allclose(model(x), np.asarray(module.apply(variables, x)), rtol=1e-4, atol=1e-4)


def test_wrong_input_shape_is_a_clear_error(device):
    module = LinenMLP((4,), "relu")
    x = np.ones((1, 8), np.float32)
    variables = module.init(jax.random.PRNGKey(7), x)
    model = device.load(pyflaxnpu.compile(module, variables, x))
    with pytest.raises(ValueError, match=r"must have shape \(batch, 8\)"):
        model(np.ones((3, 9), np.float32))
    with pytest.raises(TypeError, match="takes 1 input"):
        model(x, x)
