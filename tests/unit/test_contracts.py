"""The generated forms of the contracts are fresh, and the C and Python layouts agree byte for byte."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from flaxnpu_abi import hw, prog, uapi

ROOT = Path(__file__).resolve().parents[2]
STRUCTS = [(hw, name) for name in ("sq_entry", "cq_entry", "seg_entry", "fw_header", "sq_fetch_args",
                                   "mmu_args", "dma_args")] + \
          [(prog, name) for name in ("tensor_ref", "op", "file_header")] + \
          [(uapi, name) for name in ("cmd_hdr", "cmd_load_model", "cmd_execute", "cmd_retrieve", "resp_model",
                                     "resp_job", "resp_result", "info", "bo_create", "bo_free", "model_unload",
                                     "wait")]


def test_generated_files_are_fresh():
    res = subprocess.run([sys.executable, str(ROOT / "contracts" / "generate.py"), "--check"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_generator_detects_a_stale_file(tmp_path):
    # Copy the contracts tree, damage one generated file, and expect --check to name it.
    for sub in ("contracts", "firmware/include", "driver/include", "docs"):
        src = ROOT / sub
        if src.exists():
            shutil.copytree(src, tmp_path / sub, ignore=shutil.ignore_patterns("__pycache__", "build"))
    victim = tmp_path / "contracts" / "flaxnpu_abi" / "hw.py"
    victim.write_text(victim.read_text().replace("REG_WINDOW_SIZE = 0x1000", "REG_WINDOW_SIZE = 0x2000"))
    res = subprocess.run([sys.executable, str(tmp_path / "contracts" / "generate.py"), "--check"],
                         capture_output=True, text=True)
    assert res.returncode == 1
    assert res.stderr.count("stale:") == 1 and "contracts/flaxnpu_abi/hw.py" in res.stderr


@pytest.fixture(scope="module")
def c_layouts(tmp_path_factory):
    """sizeof and offsetof of every struct as the C compiler sees the generated headers."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("no host C compiler (cc/gcc) to check the generated headers: apt-get install gcc")
    lines = ['#include <stdio.h>', '#include "fnpu_hw.h"', '#include "fnpu_prog.h"', '#include "fnpu_uapi.h"',
             "int main(void) {"]
    for io in uapi.IOCTL:
        lines.append(f'printf("ioctl {io.name} %lu\\n", (unsigned long)FNPU_IOCTL_{io.name});')
    for mod, name in STRUCTS:
        dt = getattr(mod, name.upper())
        lines.append(f'printf("{name} :sizeof %zu\\n", sizeof(struct fnpu_{name}));')
        for field in dt.names:
            lines.append(f'printf("{name} {field} %zu\\n", offsetof(struct fnpu_{name}, {field}));')
    lines += ["return 0;", "}"]
    d = tmp_path_factory.mktemp("layout")
    (d / "layout.c").write_text("\n".join(lines))
    subprocess.run([cc, "-std=c11", "-Wall", "-Werror", "-I", str(ROOT / "driver" / "include"),
                    str(d / "layout.c"), "-o", str(d / "layout")], check=True)
    out = subprocess.run([str(d / "layout")], capture_output=True, text=True, check=True).stdout
    return {tuple(line.split()[:2]): int(line.split()[2]) for line in out.splitlines()}


@pytest.mark.parametrize(("mod", "name"), STRUCTS, ids=[n for _, n in STRUCTS])
def test_c_and_python_layouts_agree(c_layouts, mod, name):
    dt = getattr(mod, name.upper())
    assert c_layouts[(name, ":sizeof")] == dt.itemsize
    for field in dt.names:
        assert c_layouts[(name, field)] == dt.fields[field][1], field


def test_c_and_python_ioctl_numbers_agree(c_layouts):
    for io in uapi.IOCTL:
        assert c_layouts[("ioctl", io.name)] == io.value, io.name


def test_firmware_and_driver_get_identical_contract_headers():
    for name in ("fnpu_hw.h", "fnpu_prog.h"):
        assert (ROOT / "firmware" / "include" / name).read_bytes() == (ROOT / "driver" / "include" / name).read_bytes()


def test_register_offsets_are_unique_and_inside_the_window():
    offsets = [r.value for r in hw.Reg]
    assert len(set(offsets)) == len(offsets)
    assert max(offsets) + 4 <= hw.REG_WINDOW_SIZE
    # Host-written registers sit apart from device-written ones, so one page could be mapped read-only.
    assert all((hw.REG_ACCESS[r] == "RW") == (r.value >= 0x100) for r in hw.Reg)
