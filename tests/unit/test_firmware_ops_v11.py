"""The firmware's checks and batch resolution of the format 1.1 ops (CONV2D, POOL, LAYERNORM, BMM, GATHER,
TRANSPOSE, REDUCE MEAN, RESIDUAL), on the real firmware image against the test bus."""

from __future__ import annotations

import numpy as np
import pytest
from firmware_bus import (
    FirmwareBus,
    bmm,
    conv2d,
    f32_bits,
    gather,
    job,
    layernorm,
    matmul,
    mutate,
    pack_perm,
    pair,
    pool,
    transpose,
    unary,
)
from flaxnpu_abi import hw, prog
from flaxnpu_abi.hw import STATUS

OK = STATUS.OK
OFF = {name: prog.OP.fields[name][1] for name in prog.OP.names}
REFS = ("src0", "src1", "src2", "dst", "src3")


def P(i: int) -> int:
    return OFF["params"] + 4 * i


def D(i: int) -> int:
    return OFF["dims"] + 4 * i


def run(bus: FirmwareBus, ops: list[np.void], batch: int = 1) -> tuple[int, int, int]:
    bus.submit(job(bus, ops, batch=batch))
    assert bus.doorbell().reason == "idle"
    (cpl,) = bus.take_completions()
    return int(cpl["status"]), int(cpl["op_index"]), int(cpl["info"])


GOOD = {
    "conv2d": conv2d(),
    "conv2d_residual": conv2d(residual=True),
    "conv2d_depthwise_strided": conv2d(c=4, oc=8, groups=4, stride=2, dil=2, pad=2, bias=False),
    "pool_max": pool(),
    "pool_avg": pool(kind=prog.POOL.AVG, k=3, stride=1, pad=1),
    "layernorm": layernorm(),
    "bmm": bmm(),
    "bmm_transposed": bmm(trans=3, alpha=0.125),
    "gather": gather(),
    "transpose": transpose(),
    "transpose_rank6": transpose((1, 2, 1, 3, 2, 1), (0, 5, 4, 3, 2, 1)),
    "matmul_residual": mutate(matmul(), flags=3, src3=(0x2000, 2 * 3 * 4, prog.SEG_ARENA, prog.DTYPE.F32, 1)),
}


@pytest.mark.parametrize("name", GOOD)
def test_new_op_is_resolved_with_the_batch(bus, name):
    op = GOOD[name]
    assert run(bus, [op], batch=3) == (OK, hw.OP_NONE, 0)
    (sent,) = bus.engine_ops
    assert sent["scale_mask"] == 0
    assert int(sent["dims"][0]) == 3 * int(op["dims"][0])
    assert list(sent["dims"][1:]) == list(op["dims"][1:])
    for name_ in ("opcode", "act", "flags", "reserved0", "reserved1"):
        assert sent[name_] == op[name_]
    assert list(sent["params"]) == list(op["params"])
    for r in REFS:
        scale = 3 if op[r]["flags"] & prog.REF_FLAG.SCALED else 1
        assert (int(sent[r]["offset"]), int(sent[r]["size"])) == (scale * int(op[r]["offset"]),
                                                                   scale * int(op[r]["size"])), r
        assert (sent[r]["seg"], sent[r]["dtype"], sent[r]["flags"]) == (op[r]["seg"], op[r]["dtype"], 0), r


CASES = {
    # name: (op, status, info)
    "conv_bias_missing": (mutate(conv2d(), flags=0), STATUS.OP_RESERVED, OFF["src2"]),
    "conv_flag_unknown": (mutate(conv2d(), flags=8), STATUS.OP_FLAGS, 8),
    "conv_kh_zero": (mutate(conv2d(), params__0=pair(0, 3)), STATUS.OP_PARAM, P(0)),
    "conv_kw_zero": (mutate(conv2d(), params__0=pair(3, 0)), STATUS.OP_PARAM, P(0)),
    "conv_oc_zero": (mutate(conv2d(), params__1=0), STATUS.OP_PARAM, P(1)),
    "conv_oc_too_big": (mutate(conv2d(), params__1=prog.MAX_DIM + 1), STATUS.OP_PARAM, P(1)),
    "conv_stride_zero": (mutate(conv2d(), params__2=pair(1, 0)), STATUS.OP_PARAM, P(2)),
    "conv_dil_zero": (mutate(conv2d(), params__4=pair(0, 1)), STATUS.OP_PARAM, P(4)),
    "conv_groups_zero": (mutate(conv2d(), params__5=0), STATUS.OP_PARAM, P(5)),
    "conv_groups_not_dividing_c": (mutate(conv2d(), params__5=3), STATUS.OP_PARAM, P(5)),
    "conv_groups_not_dividing_oc": (mutate(conv2d(c=8, oc=6, groups=2), params__5=4), STATUS.OP_PARAM, P(5)),
    "conv_param6": (mutate(conv2d(), params__6=1), STATUS.OP_PARAM, P(6)),
    "conv_dim_zero": (mutate(conv2d(), dims__5=0), STATUS.OP_DIMS, D(5)),
    "conv_weight_size": (mutate(conv2d(), params__1=12), STATUS.OP_SIZE, 3 * 3 * 2 * 6 * 4),
    "conv_residual_size": (mutate(conv2d(residual=True), src3__size=4), STATUS.OP_SIZE, 4),
    "conv_residual_dtype": (mutate(conv2d(residual=True), src3__dtype=prog.DTYPE.I32), STATUS.OP_DTYPE,
                            prog.DTYPE.I32),
    "conv_residual_rights": (mutate(conv2d(residual=True), src3__seg=prog.SEG_OUTPUT), STATUS.OP_RIGHTS,
                             prog.SEG_OUTPUT),
    # 65535^2 * 2 * 2^24 elements: a 64-bit product of all four would wrap; saturated, it is just too big
    "conv_weight_elems_wrap": (mutate(conv2d(), params__0=pair(0xFFFF, 0xFFFF), params__1=prog.MAX_DIM,
                                      params__5=2, dims__3=4), STATUS.OP_SIZE, 3 * 3 * 2 * 6 * 4),
    "pool_kind": (mutate(pool(), params__0=2), STATUS.OP_PARAM, P(0)),
    "pool_kernel_zero": (mutate(pool(), params__1=0), STATUS.OP_PARAM, P(1)),
    "pool_stride_zero": (mutate(pool(), params__2=pair(0, 2)), STATUS.OP_PARAM, P(2)),
    "pool_param4": (mutate(pool(), params__4=1), STATUS.OP_PARAM, P(4)),
    "pool_bias": (mutate(pool(), flags=1), STATUS.OP_FLAGS, 1),
    "pool_dst_size": (mutate(pool(), dims__4=2), STATUS.OP_SIZE, 3 * 3 * 3 * 4),
    "pool_scale_bit_6": (mutate(pool(), scale_mask=0x41), STATUS.OP_FLAGS, 0x41),
    "ln_eps_negative": (mutate(layernorm(), params__0=f32_bits(-1e-5)), STATUS.OP_PARAM, P(0)),
    "ln_eps_inf": (mutate(layernorm(), params__0=0x7F800000), STATUS.OP_PARAM, P(0)),
    "ln_eps_nan": (mutate(layernorm(), params__0=0x7FC00000), STATUS.OP_PARAM, P(0)),
    "ln_scale_missing": (mutate(layernorm(), src1=(0, 0, 0, 0, 0)), STATUS.OP_DTYPE, 0),
    "ln_offset_size": (mutate(layernorm(), src2__size=4), STATUS.OP_SIZE, 4),
    "ln_dim2": (mutate(layernorm(), dims__2=1), STATUS.OP_DIMS, D(2)),
    "ln_residual": (mutate(layernorm(), flags=2), STATUS.OP_FLAGS, 2),
    "bmm_trans_bit2": (mutate(bmm(), params__0=4), STATUS.OP_PARAM, P(0)),
    "bmm_alpha_zero": (mutate(bmm(), params__1=0), STATUS.OP_PARAM, P(1)),
    "bmm_alpha_minus_zero": (mutate(bmm(), params__1=0x8000_0000), STATUS.OP_PARAM, P(1)),
    "bmm_alpha_nan": (mutate(bmm(), params__1=0x7FC0_0000), STATUS.OP_PARAM, P(1)),
    "bmm_rhs_size": (mutate(bmm(), dims__3=4), STATUS.OP_SIZE, 2 * 4 * 5 * 4),
    "bmm_src2": (mutate(bmm(), src2__seg=1), STATUS.OP_RESERVED, OFF["src2"]),
    "gather_f32_indices": (mutate(gather(), src0__dtype=prog.DTYPE.F32), STATUS.OP_DTYPE, prog.DTYPE.F32),
    "gather_i32_table": (mutate(gather(), src1__dtype=prog.DTYPE.I32), STATUS.OP_DTYPE, prog.DTYPE.I32),
    "gather_table_size": (mutate(gather(), dims__1=8), STATUS.OP_SIZE, 7 * 3 * 4),
    "gather_param": (mutate(gather(), params__0=1), STATUS.OP_PARAM, P(0)),
    "transpose_rank0": (mutate(transpose(), params__1=0), STATUS.OP_PARAM, P(1)),
    "transpose_rank7": (mutate(transpose(), params__1=7), STATUS.OP_PARAM, P(1)),
    # a bad rank is named even when the perm is bad too
    "transpose_rank7_perm_bad": (mutate(transpose(), params__0=0xFFFF_FFFF, params__1=7), STATUS.OP_PARAM, P(1)),
    "transpose_perm_repeat": (mutate(transpose(), params__0=pack_perm((0, 1, 1))), STATUS.OP_PARAM, P(0)),
    "transpose_perm_axis_past_rank": (mutate(transpose(), params__0=pack_perm((0, 3, 1))), STATUS.OP_PARAM, P(0)),
    "transpose_perm_high_bits": (mutate(transpose(), params__0=pack_perm((0, 2, 1)) | 0x1000), STATUS.OP_PARAM,
                                 P(0)),
    "transpose_unused_dim": (mutate(transpose(), dims__3=1), STATUS.OP_DIMS, D(3)),
    "transpose_scale_past_rank": (mutate(transpose(), scale_mask=0b1001), STATUS.OP_FLAGS, 0b1001),
    "transpose_size": (mutate(transpose(), dst__size=4), STATUS.OP_SIZE, 4),
    "reduce_kind": (mutate(unary(), opcode=prog.OPCODE.REDUCE, dims__1=1, params__0=4), STATUS.OP_PARAM, P(0)),
    "residual_on_bmm": (mutate(bmm(), flags=2), STATUS.OP_FLAGS, 2),
}


@pytest.mark.parametrize("case", CASES)
def test_new_op_checks(bus, case):
    op, status, info = CASES[case]
    assert run(bus, [unary(), op, unary()]) == (status, 1, info)
    assert len(bus.engine_ops) == 1  # the op before ran; the bad op and the ones after did not


def test_residual_scaled_operand_size_is_scaled(bus):
    op = conv2d(residual=True)
    assert run(bus, [op], batch=2) == (OK, hw.OP_NONE, 0)
    (sent,) = bus.engine_ops
    assert (int(sent["src3"]["offset"]), int(sent["src3"]["size"])) == (0x4000, 2 * int(op["src3"]["size"]))
    bad = mutate(op, src3__offset=0x3_0000)
    assert run(bus, [bad], batch=2) == (STATUS.OP_BOUNDS, 0, 0x6_0000)


def test_transpose_scale_bits_follow_its_rank(bus):
    # the batch may scale any of the rank's dims, here the last one
    op = mutate(transpose((2, 3, 1), (2, 1, 0)), scale_mask=0b100)
    assert run(bus, [op], batch=4) == (OK, hw.OP_NONE, 0)
    assert list(bus.engine_ops[0]["dims"]) == [2, 3, 4, 0, 0, 0]
