"""Fixtures of the firmware tests: the real image (built by `make firmware`) booted on the test bus."""

import pytest
from firmware_bus import FirmwareBus, firmware_image


@pytest.fixture(scope="module")
def image() -> bytes:
    try:
        return firmware_image()
    except FileNotFoundError as exc:
        # A missing image is a broken build, not an optional feature: fail and say how to build it.
        pytest.fail(f"{exc} (build it with `make firmware`)")


@pytest.fixture
def bus(image) -> FirmwareBus:
    b = FirmwareBus()
    assert b.boot(image).reason == "idle"
    return b
