"""MLPs (linen and nnx) compile to a fused op stream whose engine execution matches jax.jit."""

from __future__ import annotations

import numpy as np
import pytest
from compiler_models import inputs, linen, nnx_model
from flaxnpu_abi.prog import FUNC, OP_FLAG, OPCODE, REF_FLAG
from program_runner import run

from pyflaxnpu.compiler import compile

ACT_FUNC = {"relu": FUNC.RELU, "gelu_tanh": FUNC.GELU_TANH, "gelu_erf": FUNC.GELU_ERF, "tanh": FUNC.TANH,
            "sigmoid": FUNC.SIGMOID}
BUILDERS = {"linen": linen, "nnx": nnx_model}
CASES = [((16,), "relu", False), ((32, 10), "relu", True), ((128, 64, 10), "relu", True),
         ((24, 8), "gelu_tanh", False), ((24, 16, 8), "gelu_erf", True), ((20, 5), "tanh", True),
         ((12, 12, 12, 3), "sigmoid", False)]


@pytest.mark.parametrize("api", sorted(BUILDERS))
@pytest.mark.parametrize(("widths", "act", "softmax"), CASES)
def test_mlp_is_one_op_per_layer_and_matches_jax(api, widths, act, softmax):
    d_in = 64 if len(widths) == 3 else 7
    model, variables, ref = BUILDERS[api](d_in, widths, act, softmax)
    program = compile(model, variables, inputs(2, d_in))

    ops = program.ops
    assert program.op_count == len(widths) + softmax
    for i, op in enumerate(ops[: len(widths)]):
        assert op["opcode"] == OPCODE.MATMUL
        assert op["flags"] == OP_FLAG.BIAS
        assert op["act"] == (ACT_FUNC[act] if i < len(widths) - 1 else FUNC.NONE)
        assert op["scale_mask"] == 1
        assert op["src1"]["flags"] == 0 and op["src2"]["flags"] == 0          # weights: not scaled
        assert op["src0"]["flags"] == REF_FLAG.SCALED == op["dst"]["flags"]   # activations: per item
    if softmax:
        assert ops[-1]["opcode"] == OPCODE.SOFTMAX
    modules = [m["module"] for m in program.manifest["ops"]][: len(widths)]
    assert all(modules), modules

    # ONE program for every batch size: the batch rule makes the difference.
    for batch in (1, 3, 64):
        x = inputs(batch, d_in, seed=batch)
        (got,) = run(program, x)
        np.testing.assert_allclose(got, np.asarray(ref(x)), rtol=1e-4, atol=1e-4)


def test_linen_module_paths_and_source_lines():
    model, variables, _ = linen(8, (16, 4), "relu", True)
    program = compile(model, variables, inputs(1, 8))
    meta = program.manifest["ops"]
    assert [m["module"] for m in meta[:2]] == ["Dense_0", "Dense_1"]
    assert meta[0]["primitives"] == ["dot_general", "add", "max"]
    # The source is the model's own line (in compiler_models.py), not flax's or the compiler's.
    assert all(m["source"] and "compiler_models.py:" in m["source"] for m in meta)


def test_nnx_module_paths():
    model, _, _ = nnx_model(8, (16, 4), "relu")
    program = compile(model, None, inputs(1, 8))
    assert [m["module"] for m in program.manifest["ops"]] == ["layers.0", "layers.1"]


def test_arena_is_planned_by_liveness():
    # Four equal layers: at most two activations are live at once, so the arena holds two, not four.
    model, variables, _ = linen(32, (32, 32, 32, 32), "relu")
    program = compile(model, variables, inputs(1, 32))
    assert program.arena_size == 2 * 32 * 4
    refs = [(op["dst"]["seg"], op["dst"]["offset"]) for op in program.ops]
    assert len(set(refs[:-1])) == 2


def test_program_survives_save_and_load(tmp_path):
    model, variables, ref = linen(64, (128, 64, 10), "relu", True)
    program = compile(model, variables, inputs(1, 64))
    program.save(tmp_path / "digits.fnpu")
    from pyflaxnpu.program import Program
    again = Program.load(tmp_path / "digits.fnpu")
    assert again.image == program.image and again.manifest == program.manifest
    x = inputs(5, 64)
    np.testing.assert_allclose(run(again, x)[0], np.asarray(ref(x)), rtol=1e-4, atol=1e-4)
    assert "MATMUL+RELU+BIAS" in again.report() and "SOFTMAX" in again.report()
