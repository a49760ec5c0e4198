"""The firmware's checks and batch resolution of the format 1.2 int8 ops: MATMUL and CONV2D under
OP_FLAG_QUANT, and CONVERT, on the real firmware image against the test bus."""

from __future__ import annotations

import pytest
from firmware_bus import FirmwareBus, conv2d, convert, f32_bits, job, matmul, mutate, quant, unary
from flaxnpu_abi import hw, prog
from flaxnpu_abi.hw import STATUS

OK = STATUS.OK
OFF = {name: prog.OP.fields[name][1] for name in prog.OP.names}
I8, F32 = prog.DTYPE.I8, prog.DTYPE.F32
QUANT, BIAS = int(prog.OP_FLAG.QUANT), int(prog.OP_FLAG.BIAS)


def P(i: int) -> int:
    return OFF["params"] + 4 * i


def run(bus: FirmwareBus, ops: list, batch: int = 1) -> tuple[int, int, int]:
    bus.submit(job(bus, ops, batch=batch))
    assert bus.doorbell().reason == "idle"
    (cpl,) = bus.take_completions()
    return int(cpl["status"]), int(cpl["op_index"]), int(cpl["info"])


GOOD = {
    "matmul_f32_dst": quant(matmul()),
    "matmul_i8_dst": quant(matmul(), 0.25),
    "matmul_residual": mutate(quant(matmul()), flags=QUANT | prog.OP_FLAG.RESIDUAL,
                              src3=(0x2000, 2 * 3 * 4, prog.SEG_ARENA, F32, 1)),
    "conv2d_i8_dst": quant(conv2d(), 0.5),
    "conv2d_no_bias_f32_dst": quant(conv2d(bias=False)),
    "quantize": convert(),
    "dequantize": convert(direction=prog.CONVERT.DEQUANTIZE, scale=3.0),
}


@pytest.mark.parametrize("case", GOOD)
def test_good_ops_reach_the_engines(bus, case):
    assert run(bus, [GOOD[case]]) == (OK, hw.OP_NONE, 0)
    assert len(bus.engine_ops) == 1


def test_i8_sizes_are_scaled_by_the_batch(bus):
    op = quant(matmul(m=2, k=4, n=3), 0.25)
    assert run(bus, [op], batch=3) == (OK, hw.OP_NONE, 0)
    (sent,) = bus.engine_ops
    assert int(sent["src0"]["size"]) == 3 * 2 * 4  # one byte an element
    assert int(sent["dst"]["size"]) == 3 * 2 * 3
    assert int(sent["src2"]["size"]) == 2 * 3 * 4  # the table is not scaled


CASES = {
    "quant_with_bias": (mutate(quant(matmul()), flags=QUANT | BIAS), STATUS.OP_FLAGS, QUANT | BIAS),
    "quant_on_bmm": (mutate(unary(), opcode=prog.OPCODE.BMM, flags=QUANT), STATUS.OP_FLAGS, QUANT),
    "quant_f32_activations": (mutate(quant(matmul()), src0__dtype=F32), STATUS.OP_DTYPE, F32),
    "quant_f32_weights": (mutate(quant(matmul()), src1__dtype=F32), STATUS.OP_DTYPE, F32),
    "quant_i8_table": (mutate(quant(matmul()), src2__dtype=I8), STATUS.OP_DTYPE, I8),
    "quant_table_one_row": (mutate(quant(matmul()), src2__size=3 * 4), STATUS.OP_SIZE, 3 * 4),
    "quant_activation_bytes_as_f32": (mutate(quant(matmul()), src0__size=2 * 4 * 4), STATUS.OP_SIZE, 2 * 4 * 4),
    "quant_no_table": (mutate(quant(matmul()), src2__seg=0, src2__offset=0, src2__size=0, src2__dtype=0),
                       STATUS.OP_DTYPE, 0),
    # params[7] != 0 makes the dst I8: an F32 dst then has the wrong dtype
    "quant_scale_f32_dst": (mutate(quant(matmul()), params__7=f32_bits(0.5)), STATUS.OP_DTYPE, F32),
    "quant_i8_dst_no_scale": (mutate(quant(matmul(), 0.25), params__7=0), STATUS.OP_DTYPE, I8),
    "quant_scale_negative": (mutate(quant(matmul(), 0.25), params__7=f32_bits(-0.25)), STATUS.OP_PARAM, P(7)),
    "quant_scale_inf": (mutate(quant(matmul(), 0.25), params__7=0x7F80_0000), STATUS.OP_PARAM, P(7)),
    "dst_scale_without_quant": (mutate(matmul(), params__7=f32_bits(0.5)), STATUS.OP_PARAM, P(7)),
    "conv_dst_scale_without_quant": (mutate(conv2d(), params__7=f32_bits(0.5)), STATUS.OP_PARAM, P(7)),
    "i8_without_quant": (mutate(matmul(), src0__dtype=I8, src0__size=8), STATUS.OP_DTYPE, I8),
    "convert_scale_zero": (mutate(convert(), params__0=0), STATUS.OP_PARAM, P(0)),
    "convert_scale_negative": (mutate(convert(), params__0=f32_bits(-1.0)), STATUS.OP_PARAM, P(0)),
    "convert_scale_nan": (mutate(convert(), params__0=0x7FC0_0000), STATUS.OP_PARAM, P(0)),
    "convert_direction": (mutate(convert(), params__1=2), STATUS.OP_PARAM, P(1)),
    "convert_param2": (mutate(convert(), params__2=1), STATUS.OP_PARAM, P(2)),
    "quantize_i8_source": (mutate(convert(), src0__dtype=I8), STATUS.OP_DTYPE, I8),
    "quantize_f32_dst": (mutate(convert(), dst__dtype=F32), STATUS.OP_DTYPE, F32),
    "dequantize_f32_source": (mutate(convert(direction=prog.CONVERT.DEQUANTIZE), src0__dtype=F32),
                              STATUS.OP_DTYPE, F32),
    "quantize_dst_size": (mutate(convert(), dst__size=6 * 4), STATUS.OP_SIZE, 6 * 4),
    "convert_src1": (mutate(convert(), src1__seg=1), STATUS.OP_RESERVED, OFF["src1"]),
}


@pytest.mark.parametrize("case", CASES)
def test_quant_op_checks(bus, case):
    op, status, info = CASES[case]
    assert run(bus, [unary(), op, unary()]) == (status, 1, info)
    assert len(bus.engine_ops) == 1  # the op before ran; the bad op and the ones after did not


def quant_pool(**changes: int) -> object:
    from firmware_bus import pool

    op = mutate(pool(), flags=QUANT)
    for slot in ("src0", "dst"):
        op[slot]["dtype"], op[slot]["size"] = I8, int(op[slot]["size"]) // 4
    return mutate(op, **changes)


def test_int8_max_pool_runs(bus):
    assert run(bus, [quant_pool()]) == (OK, hw.OP_NONE, 0)


@pytest.mark.parametrize(("changes", "status", "info"), [
    ({"act": prog.FUNC.RELU}, STATUS.OP_FUNC, prog.FUNC.RELU),
    ({"params__0": prog.POOL.AVG}, STATUS.OP_PARAM, P(0)),
    ({"dst__dtype": F32}, STATUS.OP_DTYPE, F32),
])
def test_int8_pool_is_max_without_act(bus, changes, status, info):
    assert run(bus, [unary(), quant_pool(**changes), unary()]) == (status, 1, info)
