"""`flaxnpu vm [options] -- CMD ARGS...`: the argument parser of the subcommand."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import VmError
from .run import REPO, SETUP_FAILED, VmOptions, run

HELP = """Boot Debian's 6.1 kernel under QEMU with N emulated NPUs (device models on this host), load
driver/flaxnpu.ko, and run CMD in the guest in the current directory, with the host's files at the same
paths (host / read-only, the current directory read-write). Exits with CMD's exit status; 125 when the
VM itself failed. Kernel, initramfs and downloads are cached in $FLAXNPU_CACHE (default ~/.cache/flaxnpu).
See docs/vm.md."""


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = units.get(t[-1:], 1)
    digits = t[:-1] if t[-1:] in units else t
    if not digits.isdigit():
        raise argparse.ArgumentTypeError(f"size {text!r}: a number with an optional K/M/G suffix")
    return int(digits) * mult


def _env(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"--env {text!r}: expected NAME=VALUE")
    return key, value


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("vm", help="run a command in a QEMU guest with emulated NPUs and the kernel driver",
                       description=HELP)
    p.add_argument("--npus", type=int, default=1, help="emulated NPUs (default 1; 0..8)")
    p.add_argument("--memory", type=_size, default=512 << 20, help="guest RAM, at most 2G (default 512M)")
    p.add_argument("--kernel-version", help="Debian kernel ABI, e.g. 6.1.0-56-amd64 (default: apt's current)")
    p.add_argument("--accel", choices=("tcg", "kvm"), default="tcg",
                   help="tcg (default; works everywhere) or kvm (needs a /dev/kvm that boots a stock kernel)")
    p.add_argument("--smp", type=int, default=1, help="guest CPUs (default 1: the device models need the host's)")
    p.add_argument("--driver-dir", type=Path, default=REPO / "driver",
                   help="kernel driver source, built with its Makefile when present (default: driver/)")
    p.add_argument("--no-driver", action="store_true", help="do not build or load the kernel driver")
    p.add_argument("--firmware", type=Path, help="NPU firmware image for the guest (default: as the runtime finds it)")
    p.add_argument("--env", type=_env, action="append", default=[], metavar="NAME=VALUE",
                   help="set a variable for CMD in the guest (repeatable)")
    p.add_argument("--boot-timeout", type=float, default=120.0, help="seconds until the guest runs CMD (120)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds for the whole run (3600)")
    p.add_argument("--logs", type=Path, metavar="DIR",
                   help="copy each NPU's device-model log and firmware log (npuN.log, npuN.firmware.log) here")
    p.add_argument("--allow-device-loss", action="store_true",
                   help="when a device model dies, say so and keep the guest running (tests of device loss)")
    p.add_argument("--plain-ivshmem", action="store_true",
                   help="also attach an ivshmem device with no NPU behind it (the driver must leave it alone)")
    p.add_argument("-v", "--verbose", action="store_true", help="show the boot console, QEMU's command, timings")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    p.set_defaults(fn=cmd_vm)


def cmd_vm(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    opts = VmOptions(command=command, npus=args.npus, memory=args.memory, kernel_version=args.kernel_version,
                     accel=args.accel, smp=args.smp, driver_dir=None if args.no_driver else args.driver_dir,
                     firmware=args.firmware, env=dict(args.env), boot_timeout=args.boot_timeout,
                     timeout=args.timeout, verbose=args.verbose, logs_dir=args.logs,
                     allow_device_loss=args.allow_device_loss, plain_ivshmem=args.plain_ivshmem)
    try:
        return run(opts)
    except VmError as e:
        print(f"flaxnpu vm: error: {e}", file=sys.stderr, flush=True)
        return SETUP_FAILED
    except KeyboardInterrupt:
        print("flaxnpu vm: interrupted; QEMU and the device models were stopped", flush=True)
        return 130
