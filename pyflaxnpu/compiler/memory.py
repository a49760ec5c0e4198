"""Memory planning: give every buffer its segment and per-item offset.

Activations share the arena by liveness (a buffer lives from the op that writes it to the last op that
reads it; first fit, ALIGN-aligned), so the arena is the peak of what is live at once, per batch item.
An op's output never overlaps its inputs: the engines read and write whole tensors. Offsets are per
batch item; the firmware multiplies them by the batch (REF_FLAG.SCALED), which keeps them aligned.
"""

from __future__ import annotations

from dataclasses import dataclass

from flaxnpu_abi import prog

from pyflaxnpu.compiler.ir import Buffer, Graph


@dataclass
class Plan:
    seg: dict[int, int]        # id(buffer) -> segment
    offset: dict[int, int]     # id(buffer) -> offset (per item, or in the image for weights later)
    arena_size: int
    output_size: int
    input_size: int


def align(n: int) -> int:
    return -(-n // prog.ALIGN) * prog.ALIGN


def plan(graph: Graph) -> Plan:
    seg: dict[int, int] = {}
    offset: dict[int, int] = {}
    seg[id(graph.input.buf)], offset[id(graph.input.buf)] = prog.SEG_INPUT, 0
    out_end = 0
    for t in graph.outputs:
        seg[id(t.buf)], offset[id(t.buf)] = prog.SEG_OUTPUT, out_end
        out_end = align(out_end + t.buf.nbytes)
    last_use: dict[int, int] = {}
    for i, op in enumerate(graph.ops):
        for buf in op.reads():
            last_use[id(buf)] = i
    live: list[tuple[int, int, Buffer]] = []   # (offset, end, buffer)
    peak = 0
    for i, op in enumerate(graph.ops):
        for buf in op.writes():
            if buf.kind == "act" and id(buf) not in offset:
                start = _first_fit(live, align(buf.nbytes))
                seg[id(buf)], offset[id(buf)] = prog.SEG_ARENA, start
                live.append((start, start + align(buf.nbytes), buf))
                live.sort(key=lambda r: r[0])
                peak = max(peak, start + align(buf.nbytes))
        live = [r for r in live if last_use.get(id(r[2]), -1) > i]
    return Plan(seg, offset, peak, out_end, align(graph.input.buf.nbytes))


def _first_fit(live: list[tuple[int, int, Buffer]], size: int) -> int:
    at = 0
    for start, end, _ in live:
        if at + size <= start:
            return at
        at = max(at, end)
    return at
