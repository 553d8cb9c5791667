"""Switching activity: per-signal toggle counts from Verilator's SAIF, aggregated per module.

Verilator (5.042+) built with ``--trace-saif`` writes ``dump.saif``: for every net bit its
toggle count ``TC`` over the run (``run_bench(..., trace="saif", trace_to=path)`` keeps it). Nets are the
exported netlist's wires, Yosys's intermediate wires included, so the counts reflect the
switching of the synthesised logic. The ``$rootio`` instance (a mirror of the top-level ports)
is skipped. Toggles times the technology's energy per toggle give the digital switching
energy.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

__all__ = ["read_saif", "per_module", "SaifError"]

_TOKEN = re.compile(r"\(|\)|\"[^\"]*\"|(?:\\.|[^\s()\\])+")


class SaifError(ValueError):
    pass


def _parse(text: str):
    stack, cur = [], []
    for tok in _TOKEN.findall(text):
        if tok == "(":
            stack.append(cur)
            cur = []
        elif tok == ")":
            if not stack:
                raise SaifError("unbalanced parentheses")
            done, cur = cur, stack.pop()
            cur.append(done)
        else:
            cur.append(tok)
    if stack:
        raise SaifError("unbalanced parentheses")
    return cur


def _unescape(name: str) -> str:
    return re.sub(r"\\(.)", r"\1", name)


def read_saif(path: Path) -> dict[str, int]:
    """``{instance.path/net: toggle count}`` for every net bit of the design."""
    text = Path(path).read_text()
    body = _parse(re.sub(r"//[^\n]*", "", text))
    if not body or not isinstance(body[0], list) or body[0][:1] != ["SAIFILE"]:
        raise SaifError(f"{path}: not a SAIF file")
    out = {}

    def walk(node, prefix):
        for item in node:
            if not isinstance(item, list) or not item:
                continue
            if item[0] == "INSTANCE":
                name = _unescape(item[1])
                if name == "$rootio":
                    continue
                walk(item[2:], f"{prefix}.{name}" if prefix else name)
            elif item[0] == "NET":
                for net in item[1:]:
                    counts = {f[0]: int(f[1]) for f in net[1:] if isinstance(f, list)}
                    out[f"{prefix}/{_unescape(net[0])}"] = counts.get("TC", 0)
    walk(body[0][1:], "")
    return out


def per_module(counts: dict[str, int]) -> dict[str, int]:
    """Toggles summed per instance path."""
    modules = defaultdict(int)
    for name, n in counts.items():
        modules[name.split("/", 1)[0]] += n
    return dict(modules)
