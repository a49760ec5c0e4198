"""The simulator tier: one booted in-process NPU per test module, real firmware."""

import pytest

import pyflaxnpu
from pyflaxnpu.runtime.firmware import search_paths


@pytest.fixture(scope="module")
def device():
    if not any(p.is_file() for p in search_paths()):
        pytest.fail("no firmware image: run `make firmware` (tests/sim needs the real firmware)")
    with pyflaxnpu.open("sim") as dev:
        yield dev
