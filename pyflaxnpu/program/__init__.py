"""The .fnpu program format: Program (load/save/from_bytes/to_bytes) and the file layout.

This package never imports jax: a runtime loads and runs a program without the compiler.
"""

from pyflaxnpu.program.program import Program

__all__ = ["Program"]
