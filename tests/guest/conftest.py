"""Guest tier: runs inside `flaxnpu vm` with driver/flaxnpu.ko loaded (see tests/vm/test_guest_suite.py)."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _needs_the_driver():
    if not os.path.exists("/dev/flaxnpu0"):
        pytest.fail("/dev/flaxnpu0 is missing: these tests run in a guest, through "
                    "`flaxnpu vm --npus 2 -- env FLAXNPU_IN_GUEST=1 python -m pytest tests/guest`")
