"""The `flaxnpu` command: inspect programs and devices, run a program on an input file.

    flaxnpu info [--device sim]                       boot the device and print what it reports
    flaxnpu compile FILE.py:NAME --input-shape 8,8,1  compile a Flax model from its factory [-o OUT.fnpu]
    flaxnpu report MODEL.fnpu                         the program's ops, module paths and sizes
    flaxnpu run MODEL.fnpu INPUT.npy [-o OUT.npy]     run one input array (leading batch axis)
    flaxnpu vm [--npus N] -- CMD ARGS...              run CMD in a QEMU guest with N NPUs and the driver
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from . import FlaxNpuError, Program, open
from .compile_cli import add_parser as add_compile_parser
from .vm.cli import add_parser as add_vm_parser


def cmd_info(args: argparse.Namespace) -> int:
    with open(args.device) as dev:
        for key, value in dev.info().items():
            print(f"{key:12} {value}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    print(Program.load(args.program).report())
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    program = Program.load(args.program)
    try:
        x = np.load(args.input, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise FlaxNpuError(f"cannot read {args.input} as a .npy array: {e}") from None
    with open(args.device) as dev:
        y = dev.load(program)(x)
    outputs = y if isinstance(y, tuple) else (y,)
    if args.output:
        np.save(args.output, outputs[0])
        print(f"wrote {args.output}: shape {outputs[0].shape}")
    else:
        for out in outputs:
            print(np.array2string(out, precision=5, threshold=200))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="flaxnpu", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="boot a device and print its state, firmware and counters")
    p.add_argument("--device", default="auto")
    p.set_defaults(fn=cmd_info)
    add_compile_parser(sub)
    p = sub.add_parser("report", help="print a program's ops, Flax module paths and sizes")
    p.add_argument("program")
    p.set_defaults(fn=cmd_report)
    p = sub.add_parser("run", help="run a program on an input .npy file")
    p.add_argument("program")
    p.add_argument("input")
    p.add_argument("-o", "--output", help="write the (first) output to this .npy file")
    p.add_argument("--device", default="auto")
    p.set_defaults(fn=cmd_run)
    add_vm_parser(sub)
    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except (FlaxNpuError, ValueError, TypeError) as e:
        print(f"flaxnpu: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
