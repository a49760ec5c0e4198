"""The generated contracts (hw: hardware ABI, prog: program format) and the register accessor.

hw.py, prog.py and uapi.py are generated from contracts/*.toml by contracts/generate.py; regio.py (register
access) and cycles.py (the device's cycle model, which the compiler's estimates share) are hand-written.
This package depends on numpy only, so the device model, the runtime and tools can all import it.
"""
