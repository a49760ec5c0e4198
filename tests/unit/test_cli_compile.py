"""`flaxnpu compile MODEL --input-shape ...`: the factory forms (nnx module, (linen module, variables), a
linen module to initialize), the program it writes against jax, and an error naming the fix for every
mistake (bad spec, import failure, missing name, wrong arguments, wrong return value)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from compiler_nets import LinenCNN, LinenEncoder, NnxCNN, sample
from program_runner import run

from pyflaxnpu import Program, cli

REPO = Path(__file__).resolve().parents[2]
NETS = str(REPO / "examples" / "nets.py")


def compile_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["compile", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def close(got, want):
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-4, atol=1e-4)


def test_linen_class_is_initialized_with_the_seed(capsys, tmp_path):
    out_file = tmp_path / "cnn.fnpu"
    code, out, err = compile_cli(capsys, f"{NETS}:LinenCNN", "--input-shape", "8,8,1", "-a", "c1=4",
                                 "--seed", "3", "-o", str(out_file), "--report")
    assert code == 0, err
    assert "CONV2D" in out and "totals:" in out and f"wrote {out_file}" in out and "random" in out
    program = Program.load(out_file)
    x = sample(2, (8, 8, 1))
    model = LinenCNN(c1=4)
    variables = model.init(jax.random.key(3), np.zeros((1, 8, 8, 1), np.float32))
    close(run(program, x)[0], model.apply(variables, x))


def test_nnx_factory_with_arguments(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = compile_cli(capsys, f"{NETS}:NnxCNN", "--input-shape", "8,8,1", "--arg", "c_in=1",
                                 "--arg", "hw=8", "--fallback", "error")
    assert code == 0, err
    assert out.startswith("program NnxCNN:") and "random" not in out and "wrote NnxCNN.fnpu" in out
    x = sample(3, (8, 8, 1))
    close(run(Program.load(tmp_path / "NnxCNN.fnpu"), x)[0], NnxCNN(1, 8)(x))


def test_token_ids_take_dtype_int32(capsys, tmp_path):
    out_file = tmp_path / "enc.fnpu"
    code, _, err = compile_cli(capsys, f"{NETS}:LinenEncoder", "--input-shape", "6", "--dtype", "int32",
                               "-a", "length=6", "-a", "d=16", "-a", "heads=2", "-o", str(out_file))
    assert code == 0, err
    program = Program.load(out_file)
    assert program.inputs[0]["dtype"] == "int32"
    x = sample(2, (6,), np.int32)
    model = LinenEncoder(6, 16, 2)
    variables = model.init(jax.random.key(0), np.zeros((1, 6), np.int32))
    close(run(program, x)[0], model.apply(variables, x))


def test_module_and_variables_from_an_importable_module(capsys, tmp_path, monkeypatch):
    (tmp_path / "trained_models.py").write_text(textwrap.dedent("""
        import flax.linen as nn
        import jax
        import jax.numpy as jnp

        def mlp(width=8):
            model = nn.Sequential([nn.Dense(width), nn.relu, nn.Dense(3)])
            return model, model.init(jax.random.key(7), jnp.ones((1, 5)))
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    code, out, err = compile_cli(capsys, "trained_models:mlp", "--input-shape", "5", "-a", "width=6",
                                 "--name", "tiny", "-o", "t.fnpu")
    assert code == 0, err
    assert out.startswith("program tiny:") and "random" not in out
    import trained_models
    model, variables = trained_models.mlp(6)
    x = sample(4, (5,))
    close(run(Program.load(tmp_path / "t.fnpu"), x)[0], model.apply(variables, x))


MODELS = """
import flax.linen as nn

NOT_CALLABLE = 3

def number():
    return 42

def triple():
    return nn.Dense(3), {}, 1

def dense():
    return nn.Dense(3)
"""


@pytest.mark.parametrize(("argv", "words"), [
    (["examples/nets.py", "--input-shape", "4"], "write FILE.py:NAME"),
    (["no/such/file.py:f", "--input-shape", "4"], "no file no/such/file.py"),
    (["no_such_module_xyz:f", "--input-shape", "4"], "cannot import 'no_such_module_xyz'"),
    ([f"{NETS}:Nope", "--input-shape", "4"], "has no 'Nope'; it defines .*LinenCNN"),
    (["{models}:NOT_CALLABLE", "--input-shape", "4"], "is an object of type int, not a function or class"),
    (["{broken}:f", "--input-shape", "4"], "importing .*broken.py failed: RuntimeError: no GPU here"),
    ([f"{NETS}:NnxCNN", "--input-shape", "8,8,1"], r"NnxCNN\(\) failed: .*missing.*--arg NAME=VALUE"),
    (["{models}:number", "--input-shape", "4"], "returned an object of type int; a factory returns"),
    (["{models}:triple", "--input-shape", "4"], r"returned a tuple of 3 \(Dense, dict, int\)"),
    ([f"{NETS}:LinenEncoder", "--input-shape", "6", "-a", "length=5", "--dtype", "int32"], "check --input-shape"),
    (["{models}:dense", "--input-shape", "4", "--quantize", "int8"], "needs --calibration FILE.npy.*4"),
    (["{models}:dense", "--input-shape", "4", "--calibration", "x.npy"], "only read with --quantize int8"),
])
def test_mistakes_are_named_with_the_fix(capsys, tmp_path, monkeypatch, argv, words):
    (tmp_path / "models_cli.py").write_text(MODELS)
    (tmp_path / "broken.py").write_text("raise RuntimeError('no GPU here')\n")
    monkeypatch.chdir(tmp_path)
    argv = [a.format(models=tmp_path / "models_cli.py", broken=tmp_path / "broken.py") for a in argv]
    code, _, err = compile_cli(capsys, *argv)
    assert code == 1 and not list(tmp_path.glob("*.fnpu"))
    assert err.startswith("flaxnpu: error: ")
    assert re.search(words, err), err


@pytest.mark.parametrize("shape", ["8x8", "", "8,0", "a,b"])
def test_bad_input_shape_is_a_usage_error(capsys, shape):
    with pytest.raises(SystemExit) as e:
        cli.main(["compile", f"{NETS}:LinenCNN", "--input-shape", shape])
    assert e.value.code == 2 and "without the batch axis" in capsys.readouterr().err


def test_the_installed_command_compiles_and_the_cli_imports_no_jax(tmp_path):
    out_file = tmp_path / "cnn.fnpu"
    done = subprocess.run([sys.executable, "-m", "pyflaxnpu", "compile", "examples/nets.py:LinenCNN",
                           "--input-shape", "8,8,1", "-o", str(out_file)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert Program.load(out_file).op_count == 5
    probe = "import sys, pyflaxnpu.cli; print('jax' in sys.modules, 'flax' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120).stdout.split() == ["False", "False"]
