"""The driver binds to ivshmem devices only when BAR2 carries the NPU signature: another ivshmem user
(here an ivshmem-plain device with ordinary shared memory) is left alone."""

import vmrun
from vmrun import explain

GUEST = r"""
ls /dev/flaxnpu*
for d in /sys/bus/pci/devices/*; do
  if [ "$(cat $d/vendor):$(cat $d/device)" = "0x1af4:0x1110" ]; then
    echo "ivshmem $(basename $d) driver=$(basename $(readlink $d/driver 2>/dev/null) 2>/dev/null)"
  fi
done
dmesg | grep -i 'not an NPU'
"""


def test_driver_leaves_a_non_npu_ivshmem_device_alone():
    res = vmrun.vm("--npus", "1", "--plain-ivshmem", "--", "sh", "-c", GUEST, timeout=300)
    assert res.returncode == 0, explain(res)
    out = res.stdout
    assert "/dev/flaxnpu0" in out and "/dev/flaxnpu1" not in out, explain(res)
    assert "ivshmem 0000:00:10.0 driver=flaxnpu" in out, explain(res)
    lines = out.splitlines()
    assert "ivshmem 0000:00:18.0 driver=" in lines, explain(res)  # the plain device: present, no driver
    assert "0000:00:18.0: BAR2 signature 0x00000000 is not flaxnpu's" in out, explain(res)
