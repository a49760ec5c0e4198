"""`flaxnpu compile` then `flaxnpu run` on the simulated NPU: a trained-model factory compiled in float32
and in int8 (calibrated on the simulator), run from .npy files, against jax."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from pyflaxnpu import cli

MODELS = textwrap.dedent("""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    def mlp():
        model = nn.Sequential([nn.Dense(32), nn.relu, nn.Dense(5)])
        return model, model.init(jax.random.key(3), jnp.ones((1, 12)))
""")


@pytest.mark.parametrize("quantize", [[], ["--quantize", "int8", "--calibration", "calib.npy"]],
                         ids=["float32", "int8"])
def test_compile_then_run_from_the_command_line(tmp_path, monkeypatch, capsys, quantize):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cli_models.py").write_text(MODELS)
    rng = np.random.default_rng(0)
    np.save("calib.npy", rng.standard_normal((256, 12)).astype(np.float32))
    x = rng.standard_normal((9, 12)).astype(np.float32)
    np.save("x.npy", x)
    assert cli.main(["compile", "cli_models.py:mlp", "--input-shape", "12", "-o", "m.fnpu", *quantize]) == 0
    assert cli.main(["run", "m.fnpu", "x.npy", "-o", "y.npy", "--device", "sim"]) == 0
    capsys.readouterr()
    import cli_models
    model, variables = cli_models.mlp()
    want = np.asarray(model.apply(variables, x))
    got = np.load("y.npy")
    scale = float(np.abs(want).max())
    tol = 0.05 * scale if quantize else 1e-4 * scale   # int8: a few percent of the output's range
    np.testing.assert_allclose(got, want, rtol=0, atol=tol)
