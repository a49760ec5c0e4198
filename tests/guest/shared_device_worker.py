"""Runs in a child process (spawned, so it imports no jax): one context on /dev/flaxnpu0 running its own
program on the inputs it is given."""

import numpy as np

import pyflaxnpu


def run(image: bytes, inputs: list[np.ndarray], queue) -> None:
    """Puts the outputs, or the error's text: the parent must never wait for a result that cannot come."""
    try:
        program = pyflaxnpu.Program.from_bytes(image)
        with pyflaxnpu.open("/dev/flaxnpu0") as dev:
            model = dev.load(program)
            queue.put([model(x) for x in inputs])
    except Exception as e:
        queue.put(f"{type(e).__name__}: {e}")
