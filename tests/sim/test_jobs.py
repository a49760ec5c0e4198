"""Jobs through the user-space driver on the in-process device with the real firmware: malformed ring
entries and op descriptors fail with a named status, touch nothing outside the job's writable segments,
and never stop the device; hangs and faults are recovered."""

import numpy as np
import pytest
from flaxnpu_abi import hw, prog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyflaxnpu
from pyflaxnpu.errors import DeviceTimeout, JobError

STATUSES = {int(s) for s in hw.STATUS}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def small():
    """A device with little memory, so that a byte-for-byte snapshot of all of it is cheap."""
    with pyflaxnpu.open("sim", memory_size=4 << 20) as dev:
        yield dev


class Job:
    """Four segments like a program's (program R, arena RW, input R, output W) and a segment table."""

    SIZES = (8192, 4096, 1024, 1024)

    def __init__(self, dev):
        alloc = dev.driver.alloc
        self.dev = dev
        self.bufs = [alloc.alloc(n) for n in self.SIZES]
        self.table = alloc.alloc(prog.SEG_COUNT * hw.SEG_ENTRY.itemsize)
        flags = (hw.SEG_FLAG.READ, hw.SEG_FLAG.READ | hw.SEG_FLAG.WRITE, hw.SEG_FLAG.READ, hw.SEG_FLAG.WRITE)
        t = np.zeros(prog.SEG_COUNT, hw.SEG_ENTRY)
        for i, (b, f) in enumerate(zip(self.bufs, flags, strict=True)):
            t[i] = (b.addr, b.size, f, 0)
        self.table.view[:] = t.tobytes()

    def writable(self):
        return [(self.bufs[i].addr, self.bufs[i].size) for i in (prog.SEG_ARENA, prog.SEG_OUTPUT)]

    def free(self):
        for b in [*self.bufs, self.table]:
            self.dev.driver.alloc.free(b)


def snapshot(dev):
    return np.frombuffer(dev.memory.read(dev.memory.base, dev.memory.size), np.uint8).copy()


def assert_only_changed(dev, before, allowed):
    """Every byte that changed lies in an allowed range (job outputs, the completion ring)."""
    after = snapshot(dev)
    changed = np.flatnonzero(before != after) + dev.memory.base
    ok = np.zeros(changed.shape, bool)
    for addr, size in allowed:
        ok |= (changed >= addr) & (changed < addr + size)
    assert ok.all(), f"device wrote outside the job's writable segments at 0x{int(changed[~ok][0]):x}"


def rings(dev):
    """The rings: the host writes the submission entry, the device the completion record."""
    return [(dev.driver._sq.addr, dev.driver._sq.size), (dev.driver._cq.addr, dev.driver._cq.size)]


def assert_device_serves(dev):
    done = dev.driver.run(opcode=hw.JOB_OP.NOP)
    assert done.status == hw.STATUS.OK
    assert dev.driver.state_name() == "READY"


def test_nop_round_trip(small):
    beat = small.info()["heartbeat"]
    done = small.driver.run(opcode=hw.JOB_OP.NOP, job_id=0xDEADBEEF12345678)
    assert (done.status, done.op_index, done.job_id) == (hw.STATUS.OK, None, 0xDEADBEEF12345678)
    assert small.info()["heartbeat"] > beat


@FUZZ
@given(raw=st.binary(min_size=64, max_size=64), stamp=st.booleans())
def test_random_ring_entries_fail_with_a_named_status(small, raw, stamp):
    before = snapshot(small)
    entry = np.frombuffer(raw, hw.SQ_ENTRY)[0]
    done = small.driver.wait(small.driver.submit_entry(entry, stamp_seq=stamp))
    assert done.status in STATUSES
    if not stamp and int(entry["seq"]) != done.sq_seq:
        assert done.status == hw.STATUS.JOB_SEQ
    # Random segment tables almost never hit memory; whatever they hit was never writable here.
    assert_only_changed(small, before, rings(small) + ([] if done.status != hw.STATUS.OK else
                                                            [(small.memory.base, small.memory.size)]))
    assert_device_serves(small)


# Per opcode: a strategy for a well-formed op's dims, params, flags, and each used operand as
# (elements, scaled with the batch?); small enough that every operand fits its segment at batch 3.
Operands = dict[str, tuple[int, bool]]


def _pair(lo: int, hi: int) -> int:
    return lo | hi << 16


def _out(size: int, k: int, s: int, d: int, pad: int) -> int:
    """Fewest windows the engines take: implied end padding > -stride (they refuse less)."""
    return max(1, (size + pad - (k - 1) * d - 1) // s + 1)


def _matmul(draw):
    m, k, n = (draw(st.integers(1, 8)) for _ in range(3))
    flags = draw(st.sampled_from([0, 1, 2, 3]))
    ops = {"src0": (m * k, True), "src1": (k * n, False), "dst": (m * n, True)}
    if flags & prog.OP_FLAG.BIAS:
        ops["src2"] = (n, False)
    if flags & prog.OP_FLAG.RESIDUAL:
        ops["src3"] = (m * n, True)
    return [m, k, n], [], flags, ops


def _binary(draw):
    r, c = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    params = [draw(st.integers(0, len(prog.BINOP) - 1)), prog.BCAST.FULL, prog.BCAST.ROW]
    return [r, c], params, 0, {"src0": (r * c, True), "src1": (c, False), "dst": (r * c, True)}


def _unary(draw):
    n = draw(st.integers(1, 8))
    return [n], [draw(st.integers(0, len(prog.FUNC) - 1))], 0, {"src0": (n, True), "dst": (n, True)}


def _softmax(draw):
    r, c = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    return [r, c], [], 0, {"src0": (r * c, True), "dst": (r * c, True)}


def _reduce(draw):
    r, c = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    return [r, c], [draw(st.integers(0, len(prog.REDUCE) - 1))], 0, {"src0": (r * c, True), "dst": (r, True)}


def _conv2d(draw):
    g = draw(st.sampled_from([1, 2]))
    c, oc = g * draw(st.integers(1, 2)), g * draw(st.integers(1, 2))
    h, w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw, sh, sw, dh, dw = (draw(st.integers(1, 2)) for _ in range(6))
    pt, pl = draw(st.integers(0, 1)), draw(st.integers(0, 1))
    oh, ow = _out(h, kh, sh, dh, pt), _out(w, kw, sw, dw, pl)
    flags = draw(st.sampled_from([0, 1, 2, 3]))
    ops = {"src0": (h * w * c, True), "src1": (kh * kw * c // g * oc, False), "dst": (oh * ow * oc, True)}
    if flags & prog.OP_FLAG.BIAS:
        ops["src2"] = (oc, False)
    if flags & prog.OP_FLAG.RESIDUAL:
        ops["src3"] = (oh * ow * oc, True)
    params = [_pair(kh, kw), oc, _pair(sh, sw), _pair(pt, pl), _pair(dh, dw), g]
    return [1, h, w, c, oh, ow], params, flags, ops


def _pool(draw):
    h, w, c = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 3))
    kh, kw, sh, sw = (draw(st.integers(1, 3)) for _ in range(4))
    pt, pl = draw(st.integers(0, 1)), draw(st.integers(0, 1))
    oh, ow = _out(h, kh, sh, 1, pt), _out(w, kw, sw, 1, pl)
    params = [draw(st.sampled_from(list(prog.POOL))), _pair(kh, kw), _pair(sh, sw), _pair(pt, pl)]
    return [1, h, w, c, oh, ow], params, 0, {"src0": (h * w * c, True), "dst": (oh * ow * c, True)}


def _layernorm(draw):
    r, c = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    ops = {"src0": (r * c, True), "src1": (c, False), "src2": (c, False), "dst": (r * c, True)}
    return [r, c], [0x3727C5AC], 0, ops  # eps 1e-5


def _bmm(draw):
    b, m, k, n = (draw(st.integers(1, 4)) for _ in range(4))
    ops = {"src0": (b * m * k, True), "src1": (b * k * n, True), "dst": (b * m * n, True)}
    return [b, m, k, n], [draw(st.integers(0, 3)), 0x3E000000], 0, ops  # alpha 0.125


def _gather(draw):
    r, v, d = (draw(st.integers(1, 8)) for _ in range(3))  # indices: whatever the segment holds
    return [r, v, d], [], 0, {"src0": (r, True), "src1": (v * d, False), "dst": (r * d, True)}


def _transpose(draw):
    rank = draw(st.integers(1, 6))
    dims = [draw(st.integers(1, 2)) for _ in range(rank)]
    perm = [0, *draw(st.permutations(range(1, rank)))]  # the batch axis stays first
    n = int(np.prod(dims))
    return dims, [sum(a << 4 * i for i, a in enumerate(perm)), rank], 0, {"src0": (n, True), "dst": (n, True)}


SHAPES = {
    prog.OPCODE.MATMUL: _matmul, prog.OPCODE.BINARY: _binary, prog.OPCODE.UNARY: _unary,
    prog.OPCODE.SOFTMAX: _softmax, prog.OPCODE.REDUCE: _reduce, prog.OPCODE.CONV2D: _conv2d,
    prog.OPCODE.POOL: _pool, prog.OPCODE.LAYERNORM: _layernorm, prog.OPCODE.BMM: _bmm,
    prog.OPCODE.GATHER: _gather, prog.OPCODE.TRANSPOSE: _transpose,
}
MUTATIONS = ["opcode", "act", "flags", "scale_mask", "dim", "seg", "offset", "size", "dtype", "ref_flags",
             "param", "reserved"]


@st.composite
def op_records(draw, max_batch=3, mutate=True):
    """A well-formed op that fits its segments at max_batch, then zero to two fields pushed out of range:
    the well-formed ones reach the engines (and write), the mutated ones reach each check."""
    opcode = draw(st.sampled_from(sorted(SHAPES)))
    dims, params, flags, operands = SHAPES[opcode](draw)
    op = np.zeros((), prog.OP)
    op["opcode"], op["flags"] = opcode, flags
    op["act"] = draw(st.integers(0, len(prog.FUNC) - 1))
    op["dims"][:len(dims)] = dims
    op["params"][:len(params)] = params
    op["scale_mask"] = 1
    for name, (elements, scaled) in operands.items():
        ref = op[name]
        seg = (draw(st.sampled_from([prog.SEG_ARENA, prog.SEG_OUTPUT])) if name == "dst" else
               draw(st.sampled_from([prog.SEG_ARENA, prog.SEG_INPUT])) if scaled else prog.SEG_PROGRAM)
        size = elements * 4
        room = Job.SIZES[seg] // (max_batch if scaled else 1) - size
        assert room >= 0, (prog.OPCODE(opcode).name, name, size)
        ref["seg"], ref["size"], ref["offset"] = seg, size, draw(st.integers(0, room // 4)) * 4
        ref["dtype"] = prog.DTYPE.I32 if (opcode, name) == (prog.OPCODE.GATHER, "src0") else prog.DTYPE.F32
        ref["flags"] = prog.REF_FLAG.SCALED if scaled else 0
    for what in draw(st.lists(st.sampled_from(MUTATIONS), max_size=2 if mutate else 0)):
        big = st.sampled_from([0, 1, 7, 0x1000001, 0x7FFFFFFF, 0xFFFFFFFF])
        ref = op[draw(st.sampled_from(["src0", "src1", "src2", "dst", "src3"]))]
        if what == "opcode":
            op["opcode"] = draw(st.sampled_from([0, max(prog.OPCODE) + 1, 0xFFFF, *SHAPES]))  # or others' rules
        elif what == "act":
            op["act"] = draw(st.integers(len(prog.FUNC), 255))
        elif what == "flags":
            op["flags"] = draw(st.sampled_from([0x4, 0x80, prog.OP_FLAG.BIAS, prog.OP_FLAG.RESIDUAL]))
        elif what == "scale_mask":
            op["scale_mask"] = draw(st.sampled_from([0, 2, 4, 0x20, 0x40, 0xFFFF]))
        elif what == "dim":
            op["dims"][draw(st.integers(0, 5))] = draw(big)
        elif what == "seg":
            ref["seg"] = draw(st.sampled_from([prog.SEG_PROGRAM, prog.SEG_OUTPUT, prog.SEG_COUNT, 255]))
        elif what == "offset":
            ref["offset"] = draw(big)
        elif what == "size":
            ref["size"] = draw(big)
        elif what == "dtype":
            ref["dtype"] = draw(st.sampled_from([0, prog.DTYPE.F32, prog.DTYPE.I8, prog.DTYPE.I32, 99]))
        elif what == "ref_flags":
            ref["flags"] = draw(st.sampled_from([0, 2, 0x8000]))
        elif what == "param":
            op["params"][draw(st.integers(0, 7))] = draw(st.one_of(big, st.integers(0, 0x30003)))
        else:
            op[draw(st.sampled_from(["reserved0", "reserved1"]))].flat[0] = draw(st.integers(1, 0xFFFF))
    return op


@FUZZ
@given(ops=st.lists(op_records(), min_size=1, max_size=4), batch=st.sampled_from([1, 2, 3, 3, 0x10000000]))
def test_random_op_descriptors_fail_with_a_named_status_and_stay_in_bounds(small, ops, batch):
    job = Job(small)
    try:
        image = np.array(ops, prog.OP).tobytes()
        job.bufs[prog.SEG_PROGRAM].view[:len(image)] = image
        before = snapshot(small)
        seq = small.driver.submit(opcode=hw.JOB_OP.RUN, seg_table=job.table.addr, seg_count=prog.SEG_COUNT,
                                  prog_seg=prog.SEG_PROGRAM, op_count=len(ops), batch=batch)
        done = small.driver.wait(seq)
        assert done.status in STATUSES
        if hw.STATUS(done.status).name.startswith("OP_"):
            assert done.op_index is not None and 0 <= done.op_index < len(ops)
        else:
            assert done.op_index is None
        assert_only_changed(small, before, [*job.writable(), *rings(small)])
        assert_device_serves(small)
    finally:
        job.free()


@FUZZ
@given(ops=st.lists(op_records(mutate=False), min_size=1, max_size=4), batch=st.integers(1, 3))
def test_well_formed_ops_of_every_opcode_run(small, ops, batch):
    """The generator's ops before mutation are valid: the whole job runs and writes only its segments."""
    job = Job(small)
    try:
        image = np.array(ops, prog.OP).tobytes()
        job.bufs[prog.SEG_PROGRAM].view[:len(image)] = image
        before = snapshot(small)
        done = small.driver.run(opcode=hw.JOB_OP.RUN, seg_table=job.table.addr, seg_count=prog.SEG_COUNT,
                                prog_seg=prog.SEG_PROGRAM, op_count=len(ops), batch=batch)
        assert done.status == hw.STATUS.OK and done.cycles > 0
        assert_only_changed(small, before, [*job.writable(), *rings(small)])
    finally:
        job.free()


def test_job_with_op_stream_past_its_segment_is_refused(small):
    job = Job(small)
    try:
        with pytest.raises(JobError, match="JOB_PROGRAM") as e:
            small.driver.run(opcode=hw.JOB_OP.RUN, seg_table=job.table.addr, seg_count=prog.SEG_COUNT,
                             prog_seg=prog.SEG_PROGRAM, prog_offset=8192 - 64, op_count=1, batch=1)
        assert e.value.status == hw.STATUS.JOB_PROGRAM
        assert_device_serves(small)
    finally:
        job.free()


@pytest.fixture
def mlp():
    import flax.linen as nn
    import jax

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(nn.relu(nn.Dense(8)(x)))

    module = MLP()
    x = np.linspace(-1, 1, 20, dtype=np.float32).reshape(4, 5)
    variables = module.init(jax.random.PRNGKey(0), x[:1])
    return pyflaxnpu.compile(module, variables, x[:1]), x, np.asarray(module.apply(variables, x))


def test_failing_op_names_its_flax_module_and_the_next_job_runs(device, mlp):
    program, x, want = mlp
    model = device.load(program)
    good = model._image.view.tobytes()
    ops = np.frombuffer(bytearray(good[:program.op_count * prog.OP_SIZE]), prog.OP).copy()
    last = program.op_count - 1
    ops[last]["dst"]["offset"] = 0x7FFFFFC0  # the device image in memory is damaged after loading
    model._image.view[:ops.nbytes] = ops.tobytes()
    with pytest.raises(JobError) as e:
        model(x)
    assert e.value.status == hw.STATUS.OP_BOUNDS and e.value.op_index == last
    module = program.manifest["ops"][last]["module"]
    assert module and module in str(e.value)
    model._image.view[:] = good
    np.testing.assert_allclose(model(x), want, rtol=1e-5, atol=1e-5)


def test_hung_job_times_out_then_the_device_recovers(device, mlp):
    program, x, want = mlp
    model = device.load(program)
    driver = device.driver
    recoveries = driver.recoveries
    device.model.inject_fault("hang")
    old = driver.timeouts
    driver.timeouts = type(old)(control=old.control, boot=old.boot, job=0.3)
    try:
        with pytest.raises(DeviceTimeout, match="reset and its firmware rebooted"):
            model(x)
    finally:
        driver.timeouts = old
    assert driver.recoveries == recoveries + 1
    assert driver.state_name() == "READY"
    np.testing.assert_allclose(model(x), want, rtol=1e-5, atol=1e-5)
