"""The compile report: every op in order, where it runs and why, its sizes and estimated cycles.

Everything comes from the program file (descriptors and manifest), never from the compiler: cycle
estimates were written into the manifest at compile time ("cycles": for a job of batch 1 and of batch
PER_ITEM_BATCH), and programs written before that show "-".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from flaxnpu_abi import prog

if TYPE_CHECKING:
    from pyflaxnpu.program.program import Program

PER_ITEM_BATCH = 64  # the batch of the second "cycles" entry (compiler/cost.py)
_RESIDUAL = int(getattr(prog.OP_FLAG, "RESIDUAL", 0x2))  # format 1.1
_QUANT = int(getattr(prog.OP_FLAG, "QUANT", 0x4))  # format 1.2
_I8 = int(prog.DTYPE.I8)


def render(program: Program) -> str:
    m = program.manifest
    ops = m["ops"]
    descs = program.ops
    segments = m.get("segments") or [{"kind": "npu", "first": 0, "last": program.op_count}]
    cpu = [s for s in segments if s["kind"] == "cpu"]
    n_eqns = sum(len(s["eqns"]) for s in cpu)
    ins = ", ".join(f"{t['name']} {t['shape']}" for t in m["inputs"])
    outs = ", ".join(f"{t['name']} {t['shape']}" for t in m["outputs"])
    where = f"{program.op_count} ops on the NPU"
    if cpu:
        where += f", {n_eqns} on the CPU in {len(cpu)} host segment{'s' * (len(cpu) > 1)}"
    lines = [f"program {m.get('name', '?')}: format {program.version[0]}.{program.version[1]}, {where}, "
             f"weights {program.weights_size} B, arena {program.arena_size} B/item",
             f"  inputs: {ins}", f"  outputs: {outs}",
             f"  {'#':>3}  {'on':<6} {'op':<18} {'module':<22} {'output':<14} {'weights':>8} {'act B':>7} "
             f"{'cycles':>8}  primitives"]
    row = 0
    cycles1 = cycles_n = 0
    known = True
    cpu_weights = 0
    for seg in segments:
        if seg["kind"] == "npu":
            for i in range(seg["first"], seg["last"]):
                meta, desc = ops[i], descs[i]
                c = meta.get("cycles")
                if isinstance(c, list) and len(c) == 2 and all(isinstance(v, int) for v in c):
                    cycles1 += c[0]
                    cycles_n += c[1]
                    cyc = str(c[0])
                else:
                    known, cyc = False, "-"
                weight_bytes = sum(int(desc[r]["size"]) for r in _refs(desc)
                                   if int(desc[r]["seg"]) == prog.SEG_PROGRAM and int(desc[r]["size"]))
                shape = _shape(meta, desc)
                act = str(meta.get("activation_bytes", int(desc["dst"]["size"])))
                src = f"  @ {meta['source']}" if meta.get("source") else ""
                lines.append(f"  {row:>3}  {'npu ' + str(i):<6} {_kind(meta, desc):<18} {meta['module'] or '-':<22} "
                             f"{shape:<14} {weight_bytes:>8} {act:>7} {cyc:>8}  {' '.join(meta['primitives'])}{src}")
                row += 1
        else:
            for e in seg["eqns"]:
                cpu_weights += int(e.get("weight_bytes", 0))
                shape = ", ".join("B" + "".join(f"x{d}" for d in s) for s in e.get("shapes", []))
                src = f"  @ {e['source']}" if e.get("source") else ""
                lines.append(f"  {row:>3}  {'cpu':<6} {e['primitive']:<18} {e.get('module') or '-':<22} "
                             f"{shape:<14} {e.get('weight_bytes', 0):>8} {e.get('activation_bytes', 0):>7} "
                             f"{'-':>8}  {e['primitive']}{src}")
                lines.append(f"  {'':>3}  {'':<6} why: {e.get('reason', '?')}")
                row += 1
    lines.append(f"  totals: weights {program.weights_size} B on the NPU"
                 + (f" + {cpu_weights} B of constants in host segments" if cpu else ""))
    peak = program.arena_size
    lines.append(f"          peak activations {peak} B/item (the arena: what is live at once"
                 + (", host segment tensors included)" if cpu else ")"))
    if known:
        lines.append(f"          estimated NPU cycles: {cycles_n / PER_ITEM_BATCH:.1f}/item in jobs of "
                     f"{PER_ITEM_BATCH}, {cycles1} for a job of 1"
                     + (" (host segments not included)" if cpu else ""))
    else:
        lines.append("          estimated NPU cycles: not in this program (compiled before estimates existed)")
    if cpu:
        moved = sum(t["size"] for s in cpu for t in (*s["inputs"], *s["outputs"]))
        lines.append(f"          {len(cpu)} host segment{'s' * (len(cpu) > 1)}, {moved} B/item copied "
                     "between the device's memory and the CPU")
    return "\n".join(lines + _quantization(m))


def _quantization(m: dict[str, Any]) -> list[str]:
    """The int8 program against the float program on the calibration data (compile(quantize="int8"))."""
    q = m.get("quantization")
    if not q:
        return []
    lines = [f"  int8: {q.get('quantized_ops', '?')} ops quantized ({q.get('scheme', '?')}); against float32 on "
             f"the {q.get('calibration_items', '?')} calibration items:"]
    for o in q["outputs"]:
        rel = o["rms_error"] / o["float_rms"] if o["float_rms"] else float("nan")
        top1 = f", top-1 agrees on {100 * o['top1_agreement']:.2f} %" if "top1_agreement" in o else ""
        lines.append(f"    {o.get('name', '?')}: max |error| {o['max_abs_error']:.4g}, rms error {o['rms_error']:.4g} "
                     f"({100 * rel:.2f} % of the float rms){top1}")
    return lines


def _refs(desc: np.void) -> list[str]:
    return [r for r in ("src0", "src1", "src2", "src3") if r in (desc.dtype.names or ())]


def _kind(meta: dict[str, Any], desc: np.void) -> str:
    kind = meta["opcode"] + ("" if meta["act"] == "NONE" else f"+{meta['act']}")
    if meta["opcode"] == "CONVERT":  # format 1.2
        return kind + (" f32>i8" if int(desc["params"][1]) == prog.CONVERT.QUANTIZE else " i8>f32")
    if int(desc["flags"]) & _QUANT:
        kind += " i8" if int(desc["dst"]["dtype"]) == _I8 else " i8>f32"
    if int(desc["flags"]) & prog.OP_FLAG.BIAS:
        kind += "+BIAS"
    if int(desc["flags"]) & _RESIDUAL:
        kind += "+RES"
    return kind


def _shape(meta: dict[str, Any], desc: np.void) -> str:
    if isinstance(meta.get("shape"), list):
        return "B" + "".join(f"x{d}" for d in meta["shape"])
    dims = [int(d) for d in desc["dims"] if d]
    scaled = int(desc["scale_mask"])
    return "x".join((f"{d}B" if d > 1 else "B") if scaled >> k & 1 else str(d) for k, d in enumerate(dims))
