"""CPU fallback: what the NPU cannot run becomes host segments, exactly like jax.jit; and the report."""

from __future__ import annotations

import inspect
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flaxnpu_abi import cycles, prog
from flaxnpu_sim.engines import run_op
from flaxnpu_sim.memory import AnonymousMemory
from flaxnpu_sim.mmu import Segments
from program_runner import scale
from segtable import write_table

from pyflaxnpu.compiler import compile, cost
from pyflaxnpu.errors import CompileError, ProgramFormatError, UnsupportedPrimitiveError
from pyflaxnpu.program import Program
from pyflaxnpu.runtime import host

BASE = 0x1000_0000


def _sort_line() -> str:
    src, start = inspect.getsourcelines(Mixed.__call__)
    return f"test_compiler_fallback.py:{start + next(i for i, s in enumerate(src) if '# <- sort' in s)}"


class Mixed(nn.Module):
    """An MLP with sort, argsort, cumsum and cumprod in the middle (none has an NPU lowering)."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(16)(x))
        x = jnp.sort(x, axis=-1)  # <- sort
        x = nn.Dense(8)(x)
        rank = jnp.argsort(x, axis=-1).astype(jnp.float32)
        x = jax.lax.cumsum(x, axis=1) + rank
        return nn.Dense(4)(jnp.cumprod(x * 0.1, axis=-1))


class Fn(nn.Module):
    fn: object

    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(self.fn(nn.Dense(6)(x)))


def _setup(module, d_in=5):
    x = np.ones((1, d_in), np.float32)
    variables = module.init(jax.random.key(0), x)
    return variables, jax.jit(lambda v: module.apply(variables, v))


def run_mixed(program: Program, x: np.ndarray) -> np.ndarray:
    """Device segments on the engines (as the firmware would run them), host segments with runtime.host."""
    x = np.ascontiguousarray(x, np.float32)
    n = x.shape[0]
    out = program.outputs[0]
    sizes = [len(program.image), max(program.arena_size * n, 4), x.nbytes, (out["offset"] + out["size"]) * n]
    addrs, at = [], BASE + 4096
    for size in sizes:
        addrs.append(at)
        at += -(-size // 4096) * 4096
    mem = AnonymousMemory(at - BASE, base=BASE)
    rights = [1, 3, 1, 2]
    write_table(mem, BASE, list(zip(addrs, sizes, rights, strict=True)))
    segments = Segments.load(mem, BASE, prog.SEG_COUNT)
    mem.write(addrs[0], program.image)
    mem.write(addrs[2], x.tobytes())
    mem.write(addrs[1], np.full(sizes[1] // 4, np.nan, np.float32).tobytes())  # poison: unwritten reads show
    views = {s: mem.view(addrs[s], sizes[s]) for s in (prog.SEG_ARENA, prog.SEG_INPUT, prog.SEG_OUTPUT)}
    for seg in host.plan(program):
        if seg.kind == "cpu":
            host.run(seg, views, n)
        else:
            for op in program.ops[seg.first:seg.last]:
                run_op(np.frombuffer(scale(op, n).tobytes(), prog.OP)[0], segments)
    return np.frombuffer(mem.read(addrs[3] + out["offset"] * n, out["size"] * n), np.float32).reshape(n, *out["shape"])


def test_mixed_model_is_partitioned_in_order():
    module = Mixed()
    variables, _ = _setup(module)
    program = compile(module, variables, np.ones((1, 5), np.float32))
    segs = program.manifest["segments"]
    assert [s["kind"] for s in segs] == ["npu", "cpu", "npu", "cpu", "npu", "cpu", "npu"]
    prims = [[e["primitive"] for e in s["eqns"]] for s in segs if s["kind"] == "cpu"]
    assert prims == [["sort"], ["sort", "convert_element_type", "cumsum"], ["cumprod"]]
    assert [(s["first"], s["last"]) for s in segs if s["kind"] == "npu"] == [(0, 1), (1, 2), (2, 4), (4, 5)]
    # argsort's int32 indices stay inside their segment; only float32 values cross to the NPU.
    for s in segs:
        if s["kind"] == "cpu":
            assert all(t["dtype"] == "float32" and t["seg"] == prog.SEG_ARENA for t in s["outputs"])


@pytest.mark.parametrize("batch", [1, 37])
def test_mixed_model_matches_jax(batch):
    module = Mixed()
    variables, ref = _setup(module)
    program = Program.from_bytes(compile(module, variables, np.ones((1, 5), np.float32)).to_bytes())
    x = np.random.default_rng(batch).standard_normal((batch, 5), dtype=np.float32)
    np.testing.assert_allclose(run_mixed(program, x), np.asarray(ref(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fn", [
    lambda x: jnp.sort(x, axis=-1),
    lambda x: jnp.cumsum(x, axis=-1),
    lambda x: jnp.argsort(x, axis=-1).astype(jnp.float32) * x,
    lambda x: jnp.floor(x * 4).astype(jnp.int32).astype(jnp.float32) + x,  # a rule refuses the int cast
    lambda x: jnp.where(x > 0, x, 0.5 * x),
    lambda x: x + jnp.sort(x[:, ::-1], axis=-1),
], ids=["sort", "cumsum", "argsort", "int-cast", "where", "rev-sort"])
def test_single_fallbacks_match_jax(fn):
    module = Fn(fn)
    variables, ref = _setup(module)
    program = compile(module, variables, np.ones((1, 5), np.float32))
    assert any(s["kind"] == "cpu" for s in program.manifest["segments"])
    for batch in (1, 37):
        x = np.random.default_rng(batch).standard_normal((batch, 5), dtype=np.float32)
        np.testing.assert_allclose(run_mixed(program, x), np.asarray(ref(x)), rtol=1e-5, atol=1e-5)


class PaddedAttention(nnx.Module):
    """nnx.MultiHeadAttention with a padding mask computed from the input: the comparison and the select
    run on the CPU, on values with a size-1 axis in front of the batch axis (the layout of
    jax.nn.dot_product_attention's vmap), the projections, scores and softmax on the NPU."""

    def __init__(self) -> None:
        self.att = nnx.MultiHeadAttention(2, 6, decode=False, rngs=nnx.Rngs(0))

    def __call__(self, x):
        keep = x[..., 0] > -0.5
        return self.att(x, mask=nnx.make_attention_mask(keep, keep))


def test_attention_with_a_padding_mask_from_the_input_matches_jax():
    model = PaddedAttention()
    program = compile(model, None, np.ones((1, 7, 6), np.float32))
    npu = [prog.OPCODE(int(op["opcode"])).name for op in program.ops]
    assert npu.count("BMM") == 2 and npu.count("SOFTMAX") == 1, npu
    cpu = {e["primitive"] for s in program.manifest["segments"] if s["kind"] == "cpu" for e in s["eqns"]}
    assert {"gt", "select_n"} <= cpu, cpu
    for batch in (1, 5):
        x = np.random.default_rng(batch).standard_normal((batch, 7, 6), dtype=np.float32)
        np.testing.assert_allclose(run_mixed(program, x), np.asarray(model(x)), rtol=1e-4, atol=1e-5)


def test_rule_refusal_reason_is_recorded():
    module = Fn(lambda x: x.astype(jnp.int32).astype(jnp.float32))
    variables, _ = _setup(module)
    program = compile(module, variables, np.ones((1, 5), np.float32))
    (seg,) = [s for s in program.manifest["segments"] if s["kind"] == "cpu"]
    first = seg["eqns"][0]
    assert first["primitive"] == "convert_element_type" and "float32 only" in first["reason"]
    assert "at " not in first["reason"]  # the location is in "source", not repeated in the reason


def test_error_mode_still_raises():
    module = Mixed()
    variables, _ = _setup(module)
    with pytest.raises(UnsupportedPrimitiveError, match=f"'sort'.*{_sort_line()}"):
        compile(module, variables, np.ones((1, 5), np.float32), fallback="error")
    with pytest.raises(CompileError, match="fallback='cpu'"):
        compile(module, variables, np.ones((1, 5), np.float32), fallback="cpu")


@pytest.mark.parametrize("fn", [lambda x: jnp.sort(x, axis=0), lambda x: jnp.cumsum(x, axis=0),
                                lambda x: jnp.cumprod(x, axis=0)])
def test_batch_mixing_is_refused_even_with_fallback(fn):
    module = Fn(fn)
    variables, _ = _setup(module)
    with pytest.raises(CompileError, match="batch"):
        compile(module, variables, np.ones((1, 5), np.float32))


def test_non_float_output_and_all_cpu_are_named():
    class Argsort(nn.Module):
        @nn.compact
        def __call__(self, x):
            return jnp.argsort(nn.Dense(4)(x), axis=-1)

    module = Argsort()
    variables, _ = _setup(module)
    with pytest.raises(CompileError, match="int32"):
        compile(module, variables, np.ones((1, 5), np.float32))
    with pytest.raises(CompileError, match=r"no part of .* runs on the NPU"):
        compile(_Sort(), {}, np.ones((1, 5), np.float32))


class _Sort(nn.Module):
    @nn.compact
    def __call__(self, x):
        return jnp.sort(x, axis=-1)


def test_report_lists_every_op_where_and_why():
    module = Mixed()
    variables, _ = _setup(module)
    program = compile(module, variables, np.ones((1, 5), np.float32))
    report = program.report()
    assert "5 ops on the NPU, 5 on the CPU in 3 host segments" in report
    for text in ("MATMUL+RELU+BIAS", "Dense_0", "why: no NPU lowering for sort", "why: no NPU lowering for cumsum",
                 "reads int32 values computed on the CPU", "peak activations", "estimated NPU cycles",
                 _sort_line()):
        assert text in report, text
    rows = re.findall(r"^ +\d+  (npu|cpu)", report, re.MULTILINE)
    assert rows == ["npu", "cpu", "npu", "cpu", "cpu", "cpu", "npu", "npu", "cpu", "npu"]


def test_cycle_estimates_are_the_device_models():
    module = Mixed()
    variables, _ = _setup(module)
    program = compile(module, variables, np.ones((1, 5), np.float32))
    for desc, meta in zip(program.ops, program.manifest["ops"], strict=True):
        used = [int(d) for d in desc["dims"] if d]
        for batch, est in zip((1, cost.PER_ITEM_BATCH), meta["cycles"], strict=True):
            dims = tuple(d * batch if int(desc["scale_mask"]) >> i & 1 else d for i, d in enumerate(used))
            assert est == cycles.op_cycles(int(desc["opcode"]), dims, int(desc["act"]),
                                           bool(int(desc["flags"]) & prog.OP_FLAG.BIAS),
                                           tuple(int(p) for p in desc["params"]),
                                           bool(int(desc["flags"]) & prog.OP_FLAG.RESIDUAL))


def test_loader_checks_segments_and_header_flag():
    module = Mixed()
    variables, _ = _setup(module)
    program = compile(module, variables, np.ones((1, 5), np.float32))
    data = program.to_bytes()
    assert int(np.frombuffer(data[:64], prog.FILE_HEADER)[0]["flags"]) == 1
    m = program.manifest
    bad = {**m, "segments": [s for s in m["segments"] if s["kind"] == "npu"][1:]}
    with pytest.raises(ProgramFormatError, match="covers ops"):
        Program(program.image, program.op_count, bad, program.version)
    cpu = next(s for s in m["segments"] if s["kind"] == "cpu")
    moved = {**cpu, "outputs": [{**cpu["outputs"][0], "offset": 1 << 20}]}
    with pytest.raises(ProgramFormatError, match="outside segment"):
        Program(program.image, program.op_count, {**m, "segments": [moved if s is cpu else s for s in m["segments"]]},
                program.version)
    # A file that claims no host segments in its header but has them is refused (and vice versa).
    hdr = bytearray(data)
    hdr[12] = 0
    from pyflaxnpu.program.format import crc32
    hdr[44:48] = crc32(hdr).to_bytes(4, "little")
    with pytest.raises(ProgramFormatError, match="host segments"):
        Program.from_bytes(bytes(hdr))
