"""The guest tier: tests/guest runs inside one `flaxnpu vm` guest with two NPUs and the real driver; the
kernel log stays free of warnings, bugs and oopses; and every model run the guest made through
/dev/flaxnpuN gives byte-identical outputs on this host's in-process simulator."""

import shutil
import sys

import numpy as np
import vmrun
from vmrun import REPO, explain

import pyflaxnpu

sys.path.insert(0, str(REPO / "tests" / "guest"))
import guest_models  # the guest's models, built here on the host

IN = REPO / "build" / "guest-in"
OUT = REPO / "build" / "guest-out"
GUEST = ("set -u; env FLAXNPU_IN_GUEST=1 FLAXNPU_GUEST_IN={inp} FLAXNPU_GUEST_OUT={out} {py} -m pytest -q "
         "-p no:cacheprovider "
         "--color=no tests/guest; rc=$?; if dmesg | grep -E 'WARNING:|BUG:|Oops|Call Trace'; then "
         "echo 'kernel log has warnings'; exit 99; fi; exit $rc")


def test_guest_suite_passes_and_matches_the_simulator_exactly():
    for d in (IN, OUT):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    guest_models.prepare(IN)
    res = vmrun.vm("--npus", "2", "--", "sh", "-c", GUEST.format(inp=IN, out=OUT, py=sys.executable), timeout=900)
    assert res.returncode == 0, explain(res)
    assert " passed" in res.stdout, explain(res)

    runs = sorted(OUT.glob("*.npz"))
    assert len(runs) >= 5, f"the guest saved {len(runs)} runs in {OUT}"
    with pyflaxnpu.open("sim") as sim:
        for path in runs:
            data = np.load(path)
            model = sim.load(pyflaxnpu.Program.from_bytes(data["program"].tobytes()))
            i = 0
            while f"x{i}" in data:
                np.testing.assert_array_equal(model(data[f"x{i}"]), data[f"y{i}"], err_msg=f"{path.name} run {i}")
                i += 1
            model.unload()
