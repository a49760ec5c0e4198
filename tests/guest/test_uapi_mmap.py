"""mmap of buffer objects on /dev/flaxnpu0 (guest only): offsets, bounds, lifetime, isolation."""

from __future__ import annotations

import errno
import mmap

import pytest
import uapi_lib as u
from flaxnpu_abi import uapi

PAGE = mmap.PAGESIZE


def mmap_errno(fd: int, length: int, offset: int, **kw: int) -> int:
    with pytest.raises(OSError) as e:
        mmap.mmap(fd, length, offset=offset, **kw)
    return e.value.errno


def test_map_write_read_back_and_partial_maps(ctx):
    _, off = u.bo_create(ctx.fd, 3 * PAGE)
    m = mmap.mmap(ctx.fd, 3 * PAGE, offset=off)
    m[:] = bytes(range(256)) * (3 * PAGE // 256)
    second = mmap.mmap(ctx.fd, PAGE, offset=off + PAGE)  # a later page of the same BO
    assert second[:256] == bytes(range(256))
    second[0] = 0xAB
    assert m[PAGE] == 0xAB
    m.close()
    second.close()


def test_beyond_the_bo_is_einval(ctx):
    _, off = u.bo_create(ctx.fd, 2 * PAGE)
    assert mmap_errno(ctx.fd, 3 * PAGE, off) == errno.EINVAL
    assert mmap_errno(ctx.fd, PAGE, off + 2 * PAGE) == errno.EINVAL


def test_wrong_offset_is_einval(ctx):
    _, off = u.bo_create(ctx.fd, PAGE)
    for bad in (0, off + (1 << 28), 0x7FFF_0000_0000):
        assert mmap_errno(ctx.fd, PAGE, bad) == errno.EINVAL


def test_private_mapping_is_einval(ctx):
    _, off = u.bo_create(ctx.fd, PAGE)
    assert mmap_errno(ctx.fd, PAGE, off, flags=mmap.MAP_PRIVATE) == errno.EINVAL


def test_after_free_new_maps_fail_and_old_ones_stay_valid(ctx):
    handle, off = u.bo_create(ctx.fd, PAGE)
    m = mmap.mmap(ctx.fd, PAGE, offset=off)
    m[:4] = b"keep"
    u.call(ctx.fd, uapi.IOCTL.BO_FREE, handle=handle)
    assert mmap_errno(ctx.fd, PAGE, off) == errno.EINVAL
    assert m[:4] == b"keep"  # pages live until munmap
    m[:4] = b"more"
    m.close()


def test_another_contexts_offset_is_einval(ctx, other):
    _, off = u.bo_create(other.fd, PAGE)
    # The same number may name one of ctx's own BOs only if ctx created one; it has none.
    assert mmap_errno(ctx.fd, PAGE, off) == errno.EINVAL


def test_mapping_survives_close_of_the_file(guest):
    c = u.Ctx()
    _, off = u.bo_create(c.fd, PAGE)
    m = mmap.mmap(c.fd, PAGE, offset=off)
    c.close()
    m[:5] = b"after"
    assert m[:5] == b"after"
    m.close()
