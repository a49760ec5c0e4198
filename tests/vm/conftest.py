"""Guest-only fixtures for the driver's tests (test_uapi_*.py): they need /dev/flaxnpu0, i.e. a QEMU guest
started by `flaxnpu vm`; on a host they fail with that instruction instead of skipping."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import uapi_lib as u


@pytest.fixture
def guest() -> Iterator[None]:
    """The device exists, and the test leaves no WARN/BUG/Oops in the kernel log."""
    if not os.path.exists(u.DEV):
        pytest.fail(f"{u.DEV} is missing: run the driver's tests through `flaxnpu vm -- .venv/bin/python -m "
                    "pytest tests/vm/test_uapi_*.py` (they need the QEMU guest with the driver loaded)",
                    pytrace=False)
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
