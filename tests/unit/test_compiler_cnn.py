"""CNNs (linen and nnx): CONV2D, POOL, BatchNorm and bias folded, one program for every batch size."""

from __future__ import annotations

import inspect

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compiler_nets import LinenCNN, NnxCNN, check, nnx_perturb, opcodes, perturb
from flaxnpu_abi.prog import FUNC, OP_FLAG
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pyflaxnpu.compiler import compile
from pyflaxnpu.errors import UnsupportedPrimitiveError


@pytest.mark.parametrize("api", ["linen", "nnx"])
@pytest.mark.parametrize(("hw", "c_in", "c1", "c2"), [(8, 1, 8, 16), (12, 3, 4, 8), (16, 2, 16, 8),
                                                   (7, 1, 4, 8), (11, 2, 8, 4)])   # odd: pools drop a row
def test_cnn_is_conv_pool_conv_pool_dense_and_matches_jax(api, hw, c_in, c1, c2):
    if api == "linen":
        model = LinenCNN(c1, c2)
        variables = perturb(model.init(jax.random.key(0), jnp.ones((1, hw, hw, c_in))))
        program = compile(model, variables, np.ones((2, hw, hw, c_in), np.float32))
        ref = jax.jit(lambda x: model.apply(variables, x))
    else:
        model = nnx_perturb(NnxCNN(c_in, hw, c1, c2))
        program = compile(model, None, np.ones((2, hw, hw, c_in), np.float32))
        ref = model
    # BatchNorm and the conv bias are folded into the convs' weights: no BINARY op is left.
    assert opcodes(program) == ["CONV2D", "POOL", "CONV2D", "POOL", "MATMUL"]
    convs = [op for op in program.ops if op["opcode"] == 6]
    assert all(op["flags"] == OP_FLAG.BIAS and op["act"] == FUNC.RELU for op in convs)
    assert [int(op["params"][0]) for op in program.ops if op["opcode"] == 7] == [0, 1]   # MAX, AVG
    # The arena is the liveness peak per item, never less than the largest activation.
    assert program.arena_size >= 4 * hw * hw * c1
    check(program, ref, (hw, hw, c_in))


class Conv(nn.Module):
    features: int
    kernel: tuple[int, int]
    strides: tuple[int, int]
    padding: object
    dilation: tuple[int, int]
    groups: int

    @nn.compact
    def __call__(self, x):
        return nn.relu(nn.Conv(self.features, self.kernel, self.strides, self.padding,
                               kernel_dilation=self.dilation, feature_group_count=self.groups)(x))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(groups=st.sampled_from([1, 2]), c_mult=st.integers(1, 3), oc_mult=st.integers(1, 3),
       kh=st.integers(1, 4), kw=st.integers(1, 3), sh=st.integers(1, 3), sw=st.integers(1, 2),
       dil=st.sampled_from([(1, 1), (2, 1), (1, 2)]), pad=st.sampled_from(["SAME", "VALID", ((1, 0), (2, 1))]),
       h=st.integers(7, 11), w=st.integers(5, 9))
# strided VALID whose windows stop short of the end: 2 rows and 1 column unread, the kernel as it is
@example(groups=1, c_mult=2, oc_mult=3, kh=2, kw=3, sh=3, sw=2, dil=(1, 1), pad="VALID", h=10, w=8)
def test_any_conv_is_one_conv2d_op(groups, c_mult, oc_mult, kh, kw, sh, sw, dil, pad, h, w):
    c, oc = groups * c_mult, groups * oc_mult
    model = Conv(oc, (kh, kw), (sh, sw), pad, dil, groups)
    variables = perturb(model.init(jax.random.key(0), jnp.ones((1, h, w, c))))
    program = compile(model, variables, np.ones((1, h, w, c), np.float32))
    assert opcodes(program) == ["CONV2D"]
    op = program.ops[0]
    assert op["act"] == FUNC.RELU and op["flags"] == OP_FLAG.BIAS and op["params"][5] == groups
    assert op["params"][0] == kh | kw << 16   # the model's kernel, not one grown to reach the input's end
    check(program, jax.jit(lambda x: model.apply(variables, x)), (h, w, c), batches=(1, 3))


class Pools(nn.Module):
    kind: str
    window: tuple[int, ...]
    strides: tuple[int, ...]
    padding: str

    @nn.compact
    def __call__(self, x):
        pool = nn.max_pool if self.kind == "max" else nn.avg_pool
        return pool(nn.Conv(4, (3,) * len(self.window))(x), self.window, self.strides, self.padding)


@pytest.mark.parametrize(("kind", "window", "strides", "padding", "shape"), [
    ("max", (2, 2), (2, 2), "VALID", (8, 8, 2)),
    ("max", (3, 3), (2, 2), "SAME", (9, 9, 1)),
    ("avg", (2, 2), (2, 2), "VALID", (6, 10, 3)),
    ("avg", (3, 2), (1, 1), "VALID", (7, 5, 2)),
    ("max", (3,), (2,), "SAME", (11, 3)),        # 1-D (NLC): H = 1
    ("avg", (2,), (2,), "VALID", (12, 2)),
    # strided VALID on sizes the stride does not divide: the last rows/columns are never read
    ("max", (2, 2), (2, 2), "VALID", (7, 7, 2)),
    ("avg", (2, 2), (2, 2), "VALID", (9, 7, 1)),
    ("max", (3, 2), (3, 2), "VALID", (11, 9, 2)),
    ("avg", (2, 3), (3, 3), "VALID", (10, 11, 3)),
    ("max", (2,), (3,), "VALID", (13, 2)),
    ("avg", (3,), (2,), "VALID", (10, 1)),
])
def test_pools_are_one_pool_op(kind, window, strides, padding, shape):
    model = Pools(kind, window, strides, padding)
    variables = perturb(model.init(jax.random.key(0), jnp.ones((1, *shape))))
    program = compile(model, variables, np.ones((1, *shape), np.float32))
    assert opcodes(program) == ["CONV2D", "POOL"]
    assert program.ops[1]["params"][0] == (0 if kind == "max" else 1)
    check(program, jax.jit(lambda x: model.apply(variables, x)), shape)


class Fn(nn.Module):
    fn: object

    @nn.compact
    def __call__(self, x):
        return self.fn(nn.Conv(6, (3, 3))(x))


@pytest.mark.parametrize(("fn", "want"), [
    (lambda x: x.mean(axis=(1, 2)), ["CONV2D", "POOL"]),                       # global average pool
    (lambda x: x.max(axis=(1, 2)), ["CONV2D", "POOL"]),
    (lambda x: x.sum(axis=(1, 2)), ["CONV2D", "POOL", "BINARY"]),              # mean * window
    (lambda x: x.mean(axis=-1), ["CONV2D", "REDUCE"]),                         # REDUCE MEAN
    (lambda x: x.min(axis=(1, 2)), ["CONV2D", "TRANSPOSE", "REDUCE"]),
    (lambda x: nn.relu(x.transpose(0, 3, 1, 2)), ["CONV2D", "TRANSPOSE"]),     # relu fused into the conv
    (lambda x: x.reshape(x.shape[0], -1, 6).sum(axis=1), ["CONV2D", "POOL", "BINARY"]),
])
def test_reductions_and_transposes(fn, want):
    model = Fn(fn)
    variables = perturb(model.init(jax.random.key(0), jnp.ones((1, 5, 7, 2))))
    program = compile(model, variables, np.ones((1, 5, 7, 2), np.float32))
    assert opcodes(program) == want
    check(program, jax.jit(lambda x: model.apply(variables, x)), (5, 7, 2))


class Unsupported(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.ConvTranspose(4, (3, 3), strides=(2, 2))(x)  # <-


def test_transposed_conv_is_refused_with_line_and_fix():
    model = Unsupported()
    variables = model.init(jax.random.key(0), jnp.ones((1, 4, 4, 2)))
    # fallback="error" (compiler/partition.py) where compile() offers CPU fallback: refuse, do not split.
    kwargs = {"fallback": "error"} if "fallback" in inspect.signature(compile).parameters else {}
    with pytest.raises(UnsupportedPrimitiveError) as e:
        compile(model, variables, np.ones((1, 4, 4, 2), np.float32), **kwargs)
    msg = str(e.value)
    assert "'conv_general_dilated'" in msg and "test_compiler_cnn.py:" in msg and "use" in msg


def test_every_conv_net_op_has_a_cycle_estimate():
    module = LinenCNN()
    x = np.ones((1, 8, 8, 1), np.float32)
    program = compile(module, module.init(jax.random.PRNGKey(0), x), x)
    for meta in program.manifest["ops"]:
        one, many = meta["cycles"]
        assert 0 < one < many, meta
