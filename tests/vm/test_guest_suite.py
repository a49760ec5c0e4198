"""The guest tier: tests/guest runs inside one `flaxnpu vm` guest with two NPUs and the real driver, and the
kernel log is free of warnings, bugs and oopses afterwards."""

import sys

import vmrun
from vmrun import explain

GUEST = ("set -u; env FLAXNPU_IN_GUEST=1 {py} -m pytest -q -p no:cacheprovider tests/guest; rc=$?; "
         "echo '--- dmesg'; dmesg; if dmesg | grep -E 'WARNING:|BUG:|Oops|Call Trace'; then "
         "echo 'kernel log has warnings'; exit 99; fi; exit $rc")


def test_guest_suite_passes_with_a_clean_kernel_log():
    res = vmrun.vm("--npus", "2", "--", "sh", "-c", GUEST.format(py=sys.executable), timeout=1200)
    assert res.returncode == 0, explain(res)
    assert " passed" in res.stdout, explain(res)
