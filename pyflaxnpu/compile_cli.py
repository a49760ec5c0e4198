"""`flaxnpu compile MODEL --input-shape 8,8,1 [-o OUT.fnpu] [--report]`: compile a Flax model named by a
factory, from the command line.

MODEL is FILE.py:NAME or package.module:NAME; NAME (a function or a class) is called with the --arg
NAME=VALUE keywords and returns one of:
- an nnx.Module, compiled as it is (it carries its parameters);
- (linen module, variables), e.g. a trained model with its parameters;
- a linen Module alone: its parameters come from module.init(PRNGKey(--seed), example), so the program's
  ops, sizes and cycle estimates are the model's but its outputs are not a trained model's.

jax and flax are imported only when the command runs: `flaxnpu info` and `run` stay fast.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FlaxNpuError

EXAMPLE = "examples/nets.py:LinenCNN --input-shape 8,8,1"


def shape_arg(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.replace(" ", "").split(","))
    except ValueError:
        dims = ()
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the sizes of one example without the batch axis, "
                                         "separated by commas, e.g. 8,8,1 (an image) or 16 (16 token ids)")
    return dims


def kwarg_arg(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE, e.g. --arg hw=8")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value   # not a Python literal: the text itself, so --arg act=relu needs no quotes


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("compile", help="compile a Flax model named by MODULE:FACTORY into a .fnpu program",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="FILE.py:NAME or package.module:NAME, e.g. examples/nets.py:NnxCNN")
    p.add_argument("--input-shape", type=shape_arg, required=True, metavar="D1,D2,...",
                   help="one example's shape, without the batch axis (the program runs every batch size)")
    p.add_argument("--dtype", choices=("float32", "int32"), default="float32",
                   help="the input's dtype: int32 for token ids read by an embedding (default float32)")
    p.add_argument("-a", "--arg", type=kwarg_arg, action="append", default=[], metavar="NAME=VALUE",
                   help="a keyword argument for the factory; VALUE is a Python literal (repeatable)")
    p.add_argument("-o", "--output", type=Path, help="the program file (default: NAME.fnpu)")
    p.add_argument("--name", help="the program's name (default: the module's class name)")
    p.add_argument("--fallback", choices=("auto", "error"), default="auto",
                   help="auto: run what the NPU cannot on the CPU (default); error: refuse it")
    p.add_argument("--quantize", choices=("int8",), help="run the dense and conv layers in int8")
    p.add_argument("--calibration", type=Path, metavar="FILE.npy",
                   help="representative inputs [batch, *input shape] for --quantize int8")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed of a linen module's init (default 0)")
    p.add_argument("--report", action="store_true", help="print the program's report (every op, where and why)")
    p.set_defaults(fn=cmd_compile)


def cmd_compile(args: argparse.Namespace) -> int:
    factory = load_factory(args.model)
    example = np.zeros((1, *args.input_shape), np.dtype(args.dtype))
    calibration = _calibration(args, example)
    module, variables, random_params = build(args.model, factory, dict(args.arg), example, args.seed)
    from .compiler import compile as compile_model

    program = compile_model(module, variables, example, name=args.name, fallback=args.fallback,
                            quantize=args.quantize, calibration=calibration)
    out = args.output or Path(f"{args.model.rpartition(':')[2].rpartition('.')[2]}.fnpu")
    program.save(out)
    report = program.report()
    print(report if args.report else report.splitlines()[0])
    print(f"wrote {out}")
    if random_params:
        print(f"note: {args.model} returned a linen Module without variables, so its parameters are random "
              f"(module.init, seed {args.seed}); return (module, variables) to compile trained ones")
    return 0


def _calibration(args: argparse.Namespace, example: np.ndarray) -> np.ndarray | None:
    if args.quantize is None:
        if args.calibration is not None:
            raise FlaxNpuError("--calibration is only read with --quantize int8")
        return None
    shape = ", ".join(str(d) for d in example.shape[1:])
    if args.calibration is None:
        raise FlaxNpuError(f"--quantize int8 needs --calibration FILE.npy: a few hundred representative inputs, "
                           f"an array [batch, {shape}] saved with numpy.save")
    try:
        return np.load(args.calibration, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise FlaxNpuError(f"cannot read {args.calibration} as a .npy array: {e}") from None


# ---------------------------------------------------------------------------------------- the factory
def load_factory(spec: str) -> Callable[..., Any]:
    """The callable MODULE:NAME names: MODULE a .py file (its folder goes first on sys.path, so that its
    own imports work) or a module importable from the current directory."""
    source, sep, name = spec.rpartition(":")
    if not sep or not source or not name:
        raise FlaxNpuError(f"model {spec!r}: write FILE.py:NAME or package.module:NAME, e.g. flaxnpu compile "
                           f"{EXAMPLE}")
    module = _import_file(source) if source.endswith(".py") or os.sep in source else _import_module(source)
    obj: Any = module
    for part in name.split("."):
        if not hasattr(obj, part):
            names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                           and getattr(v, "__module__", None) == module.__name__)
            raise FlaxNpuError(f"{source} has no {name!r}; it defines {', '.join(names) or 'no functions or classes'}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise FlaxNpuError(f"{spec} is {_describe(obj)}, not a function or class: name a factory that returns "
                           "the model")
    return obj


def _import_file(source: str) -> Any:
    path = Path(source).resolve()
    if not path.is_file():
        raise FlaxNpuError(f"no file {source} (from {Path.cwd()}): give the path of the .py file that defines the "
                           "model, or a module name importable from here")
    name = f"_flaxnpu_model_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module   # dataclasses (linen modules) look their module up while the file runs
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise FlaxNpuError(f"importing {source} failed: {type(e).__name__}: {e}") from e
    return module


def _import_module(source: str) -> Any:
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())   # like `python -m`: modules of the current directory import
    try:
        return importlib.import_module(source)
    except ModuleNotFoundError as e:
        if e.name and source.startswith(e.name):
            raise FlaxNpuError(f"cannot import {source!r} ({e}): give a module importable from {Path.cwd()} "
                               f"(python -c 'import {source}' must work) or the path of a .py file: flaxnpu compile "
                               f"{EXAMPLE}") from None
        raise FlaxNpuError(f"importing {source} failed: {e}; install what it needs") from e
    except Exception as e:
        raise FlaxNpuError(f"importing {source} failed: {type(e).__name__}: {e}") from e


def build(spec: str, factory: Callable[..., Any], kwargs: dict[str, Any], example: np.ndarray,
          seed: int) -> tuple[Any, Any, bool]:
    """(module, variables, parameters are random) from what the factory returns."""
    import jax
    from flax import linen, nnx

    call = f"{spec}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    try:
        made = factory(**kwargs)
    except TypeError as e:
        raise FlaxNpuError(f"{call} failed: {e}; give the factory's arguments with --arg NAME=VALUE "
                           "(VALUE a Python literal, e.g. --arg hw=8 --arg widths='(8, 16)')") from e
    except Exception as e:
        raise FlaxNpuError(f"{call} failed: {type(e).__name__}: {e}") from e
    if isinstance(made, nnx.Module):
        return made, None, False
    if isinstance(made, linen.Module):
        try:
            return made, made.init(jax.random.key(seed), example), True
        except Exception as e:
            raise FlaxNpuError(f"{call}.init(key, x) with x of shape {example.shape} ({example.dtype}) failed: "
                               f"{type(e).__name__}: {e}; check --input-shape and --dtype") from e
    if isinstance(made, (tuple, list)) and len(made) == 2 and isinstance(made[0], (linen.Module, nnx.Module)):
        return made[0], made[1], False
    raise FlaxNpuError(f"{call} returned {_describe(made)}; a factory returns an nnx.Module, a linen Module, or "
                       "(linen module, variables)")


def _describe(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} ({', '.join(type(v).__name__ for v in value)})"
    return f"an object of type {type(value).__name__}"
