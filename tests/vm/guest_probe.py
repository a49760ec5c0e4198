"""Runs inside a `flaxnpu vm` guest (stdlib only, no driver bound): finds the ivshmem devices, reads the NPU
register window through BAR2, rings the control doorbell in BAR0 and waits for the device model's
acknowledgement in BAR2. Prints one line `PROBE <json>` for tests/vm/test_vm_boot.py.

argv[1]: JSON with the hardware contract's numbers (the host test takes them from flaxnpu_abi.hw).
"""

import glob
import json
import mmap
import os
import sys
import time

IVSHMEM_DOORBELL = 0x0C  # BAR0 register of ivshmem: (peer << 16) | vector


def probe(dev: str, hw: dict) -> dict:
    bar2 = mmap.mmap(os.open(f"{dev}/resource2", os.O_RDWR | os.O_SYNC), hw["window"])
    bar0 = mmap.mmap(os.open(f"{dev}/resource0", os.O_RDWR | os.O_SYNC), 256)
    regs, bell = memoryview(bar2).cast("I"), memoryview(bar0).cast("I")  # 32-bit accesses only
    out = {"dev": os.path.basename(dev), "magic": regs[hw["MAGIC"] // 4], "peer": regs[hw["DEVICE_PEER"] // 4]}
    seq = regs[hw["CTRL_ACK"] // 4] + 1
    regs[hw["CTRL"] // 4] = hw["NOP"]
    regs[hw["CTRL_SEQ"] // 4] = seq
    bell[IVSHMEM_DOORBELL // 4] = out["peer"] << 16 | hw["DOORBELL_CONTROL"]
    deadline = time.monotonic() + 10
    while regs[hw["CTRL_ACK"] // 4] != seq and time.monotonic() < deadline:
        time.sleep(0.001)
    out["acked"] = regs[hw["CTRL_ACK"] // 4] == seq
    return out


def main() -> None:
    hw = json.loads(sys.argv[1])
    found = []
    for dev in sorted(glob.glob("/sys/bus/pci/devices/*")):
        with open(f"{dev}/vendor") as v, open(f"{dev}/device") as d:
            if (int(v.read(), 16), int(d.read(), 16)) == (hw["vendor"], hw["device"]):
                found.append(probe(dev, hw))
    print("PROBE " + json.dumps(found), flush=True)


if __name__ == "__main__":
    main()
