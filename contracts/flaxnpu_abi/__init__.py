"""The generated contracts (hw: hardware ABI, prog: program format) and the register accessor.

hw.py and prog.py are generated from contracts/*.toml by contracts/generate.py; regio.py is hand-written.
This package depends on numpy only, so the device model, the runtime and tools can all import it.
"""
