"""The DMA allocator never hands out overlapping or misaligned ranges and gets every byte back."""

import mmap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyflaxnpu.errors import DeviceError
from pyflaxnpu.runtime.dma import DmaAllocator


class Window:
    def __init__(self, size: int, base: int = 0x10000000) -> None:
        self.base, self.size = base, size
        self._m = mmap.mmap(-1, size)

    def view(self, addr: int, n: int) -> memoryview:
        off = addr - self.base
        return memoryview(self._m)[off:off + n]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 20000), st.sampled_from([64, 4096]), st.booleans()), max_size=40))
def test_allocations_never_overlap_and_frees_coalesce(ops):
    win = Window(1 << 20)
    alloc = DmaAllocator(win)
    live = []
    for size, align, free_one in ops:
        if free_one and live:
            alloc.free(live.pop(len(live) // 2))
            continue
        try:
            buf = alloc.alloc(size, align)
        except DeviceError:
            continue
        assert buf.addr % align == 0
        assert win.base <= buf.addr and buf.addr + size <= win.base + win.size
        for other in live:
            assert buf.addr + buf.size <= other.addr or other.addr + other.size <= buf.addr
        live.append(buf)
    for buf in live:
        alloc.free(buf)
    assert alloc.used_bytes == 0
    assert alloc.alloc(1 << 20).addr == win.base  # everything coalesced back into one range


def test_exhaustion_and_double_free_are_named():
    alloc = DmaAllocator(Window(1 << 16))
    buf = alloc.alloc(1 << 16)
    with pytest.raises(DeviceError, match="out of device-visible memory"):
        alloc.alloc(1)
    alloc.free(buf)
    with pytest.raises(ValueError, match="double free"):
        alloc.free(buf)


def test_buffer_array_is_zero_copy_and_bounded():
    win = Window(1 << 16)
    buf = DmaAllocator(win).alloc(64)
    a = buf.array(np.float32, 16)
    a[:] = 1.5
    assert np.frombuffer(win.view(buf.addr, 64), np.float32).sum() == 24.0
    with pytest.raises(ValueError):
        buf.array(np.float32, 17)
