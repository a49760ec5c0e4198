"""HostMemory: overflow-aware ranges and zero-copy views."""

import pytest
from flaxnpu_sim.memory import AnonymousMemory, HostMemory, HostMemoryError
from hypothesis import given
from hypothesis import strategies as st

BASE, SIZE = 0x1000_0000, 1 << 16


@pytest.fixture
def mem():
    return AnonymousMemory(SIZE, base=BASE)


@pytest.mark.parametrize(("addr", "n", "inside"), [
    (BASE, 0, True), (BASE, SIZE, True), (BASE + SIZE, 0, True), (BASE + SIZE - 1, 1, True),
    (BASE + SIZE, 1, False), (BASE - 1, 1, False), (BASE, SIZE + 1, False), (BASE + 1, SIZE, False),
    (BASE, -1, False), (2**64 - 1, 2, False), (BASE + SIZE - 4, 2**64 - 1, False), (0, 4, False),
])
def test_contains_edges(mem, addr, n, inside):
    assert mem.contains(addr, n) is inside


@given(addr=st.integers(0, 2**64), n=st.integers(-2, 2**64))
def test_contains_matches_interval_definition(addr, n):
    m = HostMemory(bytearray(4096), base=0x8000)
    assert m.contains(addr, n) == (n >= 0 and 0x8000 <= addr and addr + n <= 0x8000 + 4096)


def test_view_is_zero_copy_and_writable(mem):
    v = mem.view(BASE + 8, 4)
    v[:] = b"abcd"
    assert mem.read(BASE + 6, 8) == b"\0\0abcd\0\0"
    mem.write(BASE + 9, b"Z")
    assert bytes(v) == b"aZcd"


def test_out_of_range_access_is_refused_and_names_the_range(mem):
    with pytest.raises(HostMemoryError, match="0x10010000"):
        mem.read(BASE + SIZE, 1)
    with pytest.raises(HostMemoryError):
        mem.write(BASE - 2, b"xy")


def test_anonymous_memory_is_zeroed_and_rejects_bad_sizes():
    assert AnonymousMemory(4096).read(0x1000_0000, 4096) == bytes(4096)
    with pytest.raises(ValueError, match="positive"):
        AnonymousMemory(0)


def test_read_only_buffer_is_refused():
    with pytest.raises(ValueError, match="writable"):
        HostMemory(memoryview(bytes(16)))
