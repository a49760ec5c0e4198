"""Firmware image checks: each field refused with its own status and info."""

import zlib

import numpy as np
import pytest
from flaxnpu_abi import hw
from flaxnpu_abi.hw import STATUS
from flaxnpu_sim.errors import FirmwareImageError
from flaxnpu_sim.firmware_image import build_image, parse_image
from hypothesis import given
from hypothesis import strategies as st

CODE = bytes(range(256)) * 4


def patched(**fields):
    h = np.frombuffer(build_image(CODE, load_addr=0x100, entry=0x104), hw.FW_HEADER, 1).copy()
    for k, v in fields.items():
        h[k] = v
    return h.tobytes() + CODE


def test_good_image():
    img = parse_image(build_image(CODE, load_addr=0x100, entry=0x104, version=0x020304))
    assert (img.load_addr, img.entry, img.version, img.code) == (0x100, 0x104, 0x020304, CODE)


@pytest.mark.parametrize(("image", "status", "info"), [
    (b"", STATUS.FW_HEADER, 0),
    (build_image(CODE)[:63], STATUS.FW_HEADER, 63),
    (patched(magic=0x12345678), STATUS.FW_HEADER, 0x12345678),
    (patched(header_size=32), STATUS.FW_HEADER, 32),
    (patched(abi_major=hw.ABI_MAJOR + 1, abi_minor=7), STATUS.FW_ABI, (hw.ABI_MAJOR + 1) << 16 | 7),
    (patched(image_size=0), STATUS.FW_SIZE, 0),
    (patched(image_size=len(CODE) + 1), STATUS.FW_SIZE, len(CODE) + 1),
    (patched(image_size=hw.FW_MAX_IMAGE + 1), STATUS.FW_SIZE, hw.FW_MAX_IMAGE + 1),
    (patched(image_size=0xFFFF_FFFF), STATUS.FW_SIZE, 0xFFFF_FFFF),
    (patched(load_addr=hw.FW_MAX_IMAGE - len(CODE) + 4), STATUS.FW_ENTRY, hw.FW_MAX_IMAGE - len(CODE) + 4),
    (patched(load_addr=0xFFFF_FF00), STATUS.FW_ENTRY, 0xFFFF_FF00),
    (patched(entry=0xFC), STATUS.FW_ENTRY, 0xFC),
    (patched(entry=0x100 + len(CODE)), STATUS.FW_ENTRY, 0x100 + len(CODE)),
    (patched(entry=0x101), STATUS.FW_ENTRY, 0x101),
    (patched(crc32=1), STATUS.FW_CRC, zlib.crc32(CODE)),
    (patched(flags=1), STATUS.FW_HEADER, 32),
    (patched(reserved3=1), STATUS.FW_HEADER, 56),
])
def test_each_bad_field(image, status, info):
    with pytest.raises(FirmwareImageError) as e:
        parse_image(image)
    assert (e.value.status, e.value.info) == (status, info)


def test_abi_error_names_both_versions_and_the_fix():
    with pytest.raises(FirmwareImageError, match=r"2\.0.*device is 1\.0.*make -C firmware"):
        parse_image(build_image(CODE, abi=(2, 0)))


def test_trailing_bytes_after_the_code_are_ignored():
    assert parse_image(build_image(CODE) + b"junk").code == CODE


@given(st.binary(max_size=200))
def test_random_bytes_are_refused_with_a_firmware_status(blob):
    try:
        parse_image(blob)
    except FirmwareImageError as e:
        assert e.status in (STATUS.FW_HEADER, STATUS.FW_ABI, STATUS.FW_SIZE, STATUS.FW_ENTRY, STATUS.FW_CRC)
