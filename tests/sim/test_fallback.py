"""Mixed programs (NPU ops + CPU host segments) on the in-process NPU: exact, saved and loaded, and run
without importing the compiler."""

import subprocess
import sys
import textwrap
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest

import pyflaxnpu

sys.path.insert(0, str(Path(__file__).parent.parent / "unit"))
from compiler_models import SortMLP  # the mixed model the guest tier runs through the driver too


@pytest.fixture(scope="module")
def compiled():
    module = SortMLP()
    x = np.ones((1, 12), np.float32)
    variables = module.init(jax.random.key(3), x)
    return pyflaxnpu.compile(module, variables, x), jax.jit(lambda v: module.apply(variables, v))


@pytest.mark.parametrize("batch", [1, 37])
def test_mixed_program_matches_jax(device, compiled, batch):
    program, ref = compiled
    assert [s["kind"] for s in program.manifest["segments"]].count("cpu") >= 2
    model = device.load(program)
    x = np.random.default_rng(batch).standard_normal((batch, 12), dtype=np.float32)
    np.testing.assert_allclose(model(x), np.asarray(ref(x)), rtol=1e-5, atol=1e-5)
    model.unload()


def test_batches_split_into_several_jobs_stay_exact(device, compiled):
    program, ref = compiled
    model = device.load(program, max_batch=16)
    x = np.random.default_rng(5).standard_normal((37, 12), dtype=np.float32)
    np.testing.assert_allclose(model(x), np.asarray(ref(x)), rtol=1e-5, atol=1e-5)
    model.unload()


def test_saved_mixed_program_runs_without_the_compiler(compiled, tmp_path):
    program, ref = compiled
    path = tmp_path / "mixed.fnpu"
    program.save(path)
    again = pyflaxnpu.Program.load(path)
    assert again.manifest == program.manifest and again.image == program.image
    x = np.random.default_rng(9).standard_normal((37, 12), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import pyflaxnpu
        program = pyflaxnpu.Program.load({str(path)!r})
        with pyflaxnpu.open("sim") as dev:
            y = dev.load(program)(np.load({str(tmp_path / 'x.npy')!r}))
        np.save({str(tmp_path / 'y.npy')!r}, y)
        bad = sorted(m for m in sys.modules if m.startswith("pyflaxnpu.compiler") or m == "flax")
        assert not bad, bad
        assert "jax" in sys.modules  # host segments need jax, imported lazily by the runtime
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), np.asarray(ref(x)), rtol=1e-5, atol=1e-5)


def test_device_only_program_does_not_import_jax(tmp_path):
    module = nn.Dense(4)
    x = np.ones((1, 3), np.float32)
    program = pyflaxnpu.compile(module, module.init(jax.random.key(0), x), x)
    assert "segments" not in program.manifest
    program.save(tmp_path / "dense.fnpu")
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import pyflaxnpu
        with pyflaxnpu.open("sim") as dev:
            dev.load(pyflaxnpu.Program.load({str(tmp_path / 'dense.fnpu')!r}))(np.ones((2, 3), np.float32))
        assert "jax" not in sys.modules and "pyflaxnpu.compiler" not in sys.modules
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
