"""`python -m flaxnpu_sim.server`: one NPU as the ivshmem server of one QEMU ivshmem-doorbell device.

    python -m flaxnpu_sim.server --socket /run/npu0.sock --ram /dev/shm/vm-ram --ram-size 512M

Prints `ready <socket>` on stdout once it listens (start QEMU only then: QEMU does not retry a refused
connection). Returns when QEMU disconnects, on SIGTERM or SIGINT; removes the socket and, if it created
it, the guest-RAM file. `--firmware-log FILE` writes what the firmware logged at exit.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from .ivshmem import IvshmemServer

_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    """512M, 1G, 4096 -> bytes."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = _UNITS.get(text[-1:], 1)
    digits = text[:-1] if text[-1:] in _UNITS else text
    if not digits.isdigit():
        raise argparse.ArgumentTypeError(f"size {text!r} is not a number with an optional K/M/G suffix")
    return int(digits) * mult


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flaxnpu_sim.server", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--socket", required=True, help="unix socket QEMU's ivshmem chardev connects to")
    ap.add_argument("--ram", required=True, help="guest-RAM file (QEMU memory-backend-file mem-path)")
    ap.add_argument("--ram-size", required=True, type=parse_size, help="guest RAM size (QEMU -m)")
    ap.add_argument("--persist", action="store_true", help="keep serving after QEMU disconnects")
    ap.add_argument("--firmware-log", help="write the firmware's log to this file at exit")
    args = ap.parse_args(argv)
    try:
        server = IvshmemServer(args.socket, args.ram, args.ram_size, exit_on_disconnect=not args.persist)
    except (OSError, ValueError) as e:
        print(f"flaxnpu_sim.server: error: {e}", file=sys.stderr)
        return 1
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.stop())
    print(f"ready {args.socket}", flush=True)
    try:
        server.serve()
    finally:
        if args.firmware_log:
            Path(args.firmware_log).write_text(server.device.firmware_log())
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
