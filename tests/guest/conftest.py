"""Guest tier: runs inside `flaxnpu vm` with driver/flaxnpu.ko loaded (see tests/vm/test_guest_suite.py).
On a host these tests are not collected (tests/conftest.py); run them with
`flaxnpu vm --npus 2 -- env FLAXNPU_IN_GUEST=1 .venv/bin/python -m pytest tests/guest`."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import uapi_lib as u


@pytest.fixture(scope="session", autouse=True)
def _needs_the_driver():
    if not os.path.exists("/dev/flaxnpu0"):
        pytest.fail("/dev/flaxnpu0 is missing: these tests run in a guest, through "
                    "`flaxnpu vm --npus 2 -- env FLAXNPU_IN_GUEST=1 python -m pytest tests/guest`")


@pytest.fixture
def guest() -> Iterator[None]:
    """The device exists, and the test leaves no WARN/BUG/Oops in the kernel log."""
    before = len(u.kernel_problems())
    yield
    problems = u.kernel_problems()[before:]
    assert not problems, "kernel log has new problems:\n" + "\n".join(problems)


@pytest.fixture
def ctx(guest: None) -> Iterator[u.Ctx]:
    c = u.Ctx()
    yield c
    c.close()


@pytest.fixture
def other(guest: None) -> Iterator[u.Ctx]:
    """A second context on the same device."""
    c = u.Ctx()
    yield c
    c.close()


@pytest.fixture
def short_job_timeout(guest: None) -> Iterator[int]:
    """Hang tests wait job_timeout_ms; lower it for the test, restore it after."""
    path = u.PARAMS / "job_timeout_ms"
    old = path.read_text().strip()
    path.write_text("1500")
    yield 1500
    path.write_text(old)
