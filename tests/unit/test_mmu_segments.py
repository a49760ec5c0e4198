"""Device MMU: segment table checks (MMU_KICK semantics) and checked access through segments."""

import numpy as np
import pytest
from flaxnpu_abi import hw
from flaxnpu_abi.hw import SEG_FLAG, STATUS
from flaxnpu_sim.errors import SegmentError
from flaxnpu_sim.memory import AnonymousMemory
from flaxnpu_sim.mmu import Segments, parse_table
from hypothesis import given, settings
from hypothesis import strategies as st
from segtable import write_pages, write_table

BASE, SIZE, PAGE = 0x1000_0000, 1 << 20, hw.PAGE_SIZE
TABLE = BASE  # tables at the start, page lists at +0x1000, data from +0x10000
LISTS = BASE + 0x1000
DATA = BASE + 0x10000
RW = SEG_FLAG.READ | SEG_FLAG.WRITE


@pytest.fixture
def mem():
    return AnonymousMemory(SIZE, base=BASE)


def refused(mem, table, count, status, info):
    with pytest.raises(SegmentError) as e:
        parse_table(mem, table, count)
    assert (e.value.status, e.value.info) == (status, info)


def test_good_table_is_copied_and_installed(mem):
    write_table(mem, TABLE, [(DATA, 100, SEG_FLAG.READ), (DATA + 4096, 8192, RW)])
    segs, raw = parse_table(mem, TABLE, 2)
    assert raw == mem.read(TABLE, 32)
    assert [(s.size, s.flags) for s in segs] == [(100, SEG_FLAG.READ), (8192, RW)]
    write_table(mem, TABLE, [(DATA, 1, SEG_FLAG.WRITE)])  # the host rewrites the table afterwards
    assert segs[0].size == 100 and segs[0].extents[0].addr == DATA


@pytest.mark.parametrize("count", [0, hw.MAX_SEGMENTS + 1, 2**32 - 1])
def test_seg_count(mem, count):
    refused(mem, TABLE, count, STATUS.SEG_COUNT, count)


@pytest.mark.parametrize("table", [BASE - 16, BASE + SIZE - 16, 0, 2**64 - 16])
def test_seg_table_outside_memory(mem, table):
    refused(mem, table, 2, STATUS.SEG_TABLE, table & 0xFFFFFFFF)


GOOD = (DATA, 64, SEG_FLAG.READ)


@pytest.mark.parametrize(("bad", "status"), [
    ((DATA, 64, 0x8 | SEG_FLAG.READ), STATUS.SEG_FLAGS),
    ((DATA, 64, 0), STATUS.SEG_FLAGS),
    ((DATA, 64, SEG_FLAG.PAGES), STATUS.SEG_FLAGS),
    ((DATA, 64, SEG_FLAG.READ, 1), STATUS.SEG_FLAGS),
    ((DATA, 0, SEG_FLAG.READ), STATUS.SEG_SIZE),
    ((BASE + SIZE - 32, 64, SEG_FLAG.READ), STATUS.SEG_SIZE),
    ((2**64 - 32, 64, SEG_FLAG.READ), STATUS.SEG_SIZE),
    ((BASE - 4096, 4096, SEG_FLAG.READ), STATUS.SEG_SIZE),
    ((BASE + SIZE - 8, 3 * PAGE, SEG_FLAG.READ | SEG_FLAG.PAGES), STATUS.SEG_PAGES),
])
def test_bad_entry_names_its_index(mem, bad, status):
    write_table(mem, TABLE, [GOOD, GOOD, bad, GOOD])
    refused(mem, TABLE, 4, status, 2)


@pytest.mark.parametrize("page", [DATA + 8, BASE + SIZE, BASE - PAGE, 0, 2**64 - PAGE, BASE + SIZE - PAGE + 1])
def test_bad_page_in_list(mem, page):
    write_pages(mem, LISTS, [DATA, page])
    write_table(mem, TABLE, [GOOD, (LISTS, PAGE + 1, RW | SEG_FLAG.PAGES)])
    refused(mem, TABLE, 2, STATUS.SEG_PAGES, 1)


def test_last_partial_page_needs_its_list_entry_only(mem):
    write_pages(mem, LISTS, [DATA + PAGE, DATA])
    write_table(mem, TABLE, [(LISTS, PAGE + 10, RW | SEG_FLAG.PAGES)])
    (seg,) = parse_table(mem, TABLE, 1)[0]
    assert [(e.seg_offset, e.addr, e.length) for e in seg.extents] == [(0, DATA + PAGE, PAGE), (PAGE, DATA, 10)]


def segments(mem, entries):
    write_table(mem, TABLE, entries)
    return Segments.load(mem, TABLE, len(entries))


@pytest.mark.parametrize(("seg", "off", "n", "need", "status", "info"), [
    (2, 0, 4, SEG_FLAG.READ, STATUS.OP_SEGMENT, 2),
    (255, 0, 4, SEG_FLAG.READ, STATUS.OP_SEGMENT, 255),
    (0, 0, 4, SEG_FLAG.WRITE, STATUS.OP_RIGHTS, 0),
    (1, 0, 4, SEG_FLAG.READ, STATUS.OP_RIGHTS, 1),
    (0, 96, 8, SEG_FLAG.READ, STATUS.OP_BOUNDS, 96),
    (0, 0xFFFF_FFF0, 0x20, SEG_FLAG.READ, STATUS.OP_BOUNDS, 0xFFFF_FFF0),  # wraps in 32 bits
    (0, 4, 0xFFFF_FFFF, SEG_FLAG.READ, STATUS.OP_BOUNDS, 4),
    (0, 2**32, 0, SEG_FLAG.READ, STATUS.OP_BOUNDS, 0),
])
def test_access_violations_are_named_and_touch_nothing(mem, seg, off, n, need, status, info):
    s = segments(mem, [(DATA, 100, SEG_FLAG.READ), (DATA + 128, 100, SEG_FLAG.WRITE)])
    mem.write(DATA, bytes(range(256)))
    before = mem.read(BASE, SIZE)
    with pytest.raises(SegmentError) as e:
        if need == SEG_FLAG.WRITE:
            s.write(seg, off, bytes(n))
        else:
            s.read(seg, off, n)
    assert (e.value.status, e.value.info) == (status, info)
    assert mem.read(BASE, SIZE) == before


def test_contiguous_ndarray_is_a_zero_copy_read_only_view(mem):
    s = segments(mem, [(DATA, 64, RW)])
    a = s.ndarray(0, 16, 4, "<f4")
    mem.write(DATA + 16, np.float32(2.5).tobytes())
    assert a[0] == 2.5 and not a.flags.writeable


def test_ndarray_gathers_across_non_adjacent_pages(mem):
    write_pages(mem, LISTS, [DATA + 2 * PAGE, DATA])
    s = segments(mem, [(LISTS, 2 * PAGE, RW | SEG_FLAG.PAGES)])
    vals = np.arange(8, dtype="<f4")
    s.write_array(0, PAGE - 16, vals)
    assert mem.read(DATA + 3 * PAGE - 16, 16) == vals[:4].tobytes()
    assert mem.read(DATA, 16) == vals[4:].tobytes()
    np.testing.assert_array_equal(s.ndarray(0, PAGE - 16, 8, "<f4"), vals)


@settings(max_examples=60, deadline=None)
@given(perm=st.permutations(range(6)), ops=st.lists(
    st.tuples(st.booleans(), st.integers(0, 6 * PAGE), st.integers(0, 3 * PAGE), st.integers(0, 255)),
    min_size=1, max_size=12))
def test_page_list_segment_behaves_like_contiguous(perm, ops):
    """The same reads and writes through a shuffled page list and through a contiguous segment agree,
    and a refused access is refused the same way by both."""
    mem = AnonymousMemory(SIZE, base=BASE)
    size = 6 * PAGE - 100
    write_pages(mem, LISTS, [DATA + p * PAGE for p in perm])
    write_table(mem, TABLE, [(LISTS, size, RW | SEG_FLAG.PAGES), (DATA + 8 * PAGE, size, RW)])
    s = Segments.load(mem, TABLE, 2)
    for is_write, off, n, fill in ops:
        results = []
        for seg in (0, 1):
            try:
                if is_write:
                    s.write(seg, off, bytes([fill]) * n)
                    results.append(None)
                else:
                    results.append(s.read(seg, off, n))
            except SegmentError as e:
                results.append((e.status, e.info))
        assert results[0] == results[1]
    assert s.read(0, 0, size) == s.read(1, 0, size)
