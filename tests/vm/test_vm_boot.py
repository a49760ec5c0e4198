"""`flaxnpu vm` smoke tests: a real QEMU guest (TCG, ~5 s per boot). They fail, never skip, when QEMU or the
kernel cannot run: the vm tier is part of `make test` (tools/bootstrap.sh installs QEMU and friends)."""

import json
import subprocess

import vmrun
from flaxnpu_abi import hw
from flaxnpu_abi.hw import CTRL, Reg
from vmrun import FLAXNPU, REPO, explain


def vm(*args: str, timeout: float = 300):
    # --no-driver: these test the VM and the device transport; the driver has its own guest tests.
    return vmrun.vm("--no-driver", *args, timeout=timeout)


def test_command_status_and_output_come_back():
    res = vm("--", "sh", "-c", "echo guest in $(pwd) on $(uname -r); test -w .; exit 7")
    assert res.returncode == 7, explain(res)
    assert f"guest in {REPO} on 6.1." in res.stdout, explain(res)


def test_two_npus_attached_and_answer_doorbells():
    numbers = {"vendor": hw.PCI_VENDOR_ID, "device": hw.PCI_DEVICE_ID, "window": hw.REG_WINDOW_SIZE,
               "NOP": int(CTRL.NOP), "DOORBELL_CONTROL": hw.DOORBELL_CONTROL,
               **{r: int(getattr(Reg, r)) for r in ("MAGIC", "DEVICE_PEER", "CTRL", "CTRL_SEQ", "CTRL_ACK")}}
    res = vm("--npus", "2", "--", str(REPO / ".venv" / "bin" / "python"), "tests/vm/guest_probe.py",
             json.dumps(numbers))
    assert res.returncode == 0, explain(res)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("PROBE ")), None)
    assert line is not None, explain(res)
    found = json.loads(line.removeprefix("PROBE "))
    # NPU i sits at slot 0x10 + i, so the guest enumerates them in option order.
    assert [d["dev"] for d in found] == ["0000:00:10.0", "0000:00:11.0"], found
    for d in found:
        assert d["magic"] == hw.SIGNATURE and d["peer"] == 0, d
        assert d["acked"], f"{d['dev']}: CTRL NOP through the BAR0 doorbell was never acknowledged"


def test_missing_qemu_is_named(tmp_path):
    # No QEMU on PATH: the tool says what to install instead of hanging or tracebacking.
    res = subprocess.run([*FLAXNPU, "--", "true"], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={"PATH": str(tmp_path), "HOME": str(tmp_path)}, check=False)
    assert res.returncode == 125, explain(res)
    assert "apt-get install -y qemu-system-x86" in res.stderr, explain(res)
