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

__all__ = ["read_saif", "module_toggles", "per_module", "SaifError"]

_TOKEN = re.compile(r"\(|\)|\"[^\"]*\"|(?:\\.|[^\s()\\])+")


class SaifError(ValueError):
    pass


_NET = re.compile(r"^\s*\((\S+) \(T0 .*\(TC (\d+)\)\)\s*$")


def _unescape(name: str) -> str:
    return re.sub(r"\\(.)", r"\1", name)


def _scan(path: Path, on_net) -> None:
    """Stream a SAIF file: ``on_net(instance_path, net, toggles)`` for every net bit.

    Verilator writes one net per line; those lines are matched directly (a full-size layer
    has millions), the few structural lines are tokenised."""
    stack: list[str | None] = []        # open groups: an instance name, or None
    names: list[str] = []               # the instance path ($rootio skipped: None)
    seen_header = False
    skip = 0                            # depth inside a skipped instance
    with open(path) as f:
        for line in f:
            if line.lstrip().startswith("//"):
                continue
            m = _NET.match(line)
            if m and seen_header:
                if not skip and names:
                    on_net(".".join(names), _unescape(m.group(1)), int(m.group(2)))
                continue
            toks = _TOKEN.findall(line)
            i = 0
            while i < len(toks):
                tok = toks[i]
                if tok == "(":
                    head = toks[i + 1] if i + 1 < len(toks) else ""
                    if not seen_header:
                        if head != "SAIFILE":
                            raise SaifError(f"{path}: not a SAIF file")
                        seen_header = True
                    if head == "INSTANCE" and i + 2 < len(toks):
                        name = _unescape(toks[i + 2])
                        stack.append(name)
                        if skip or name == "$rootio":
                            skip += 1
                        else:
                            names.append(name)
                        i += 3
                        continue
                    stack.append(None)
                elif tok == ")":
                    if not stack:
                        raise SaifError(f"{path}: unbalanced parentheses")
                    if stack.pop() is not None:
                        if skip:
                            skip -= 1
                        else:
                            names.pop()
                elif not seen_header:
                    raise SaifError(f"{path}: not a SAIF file")
                i += 1
    if not seen_header:
        raise SaifError(f"{path}: not a SAIF file")
    if stack:
        raise SaifError(f"{path}: unbalanced parentheses")


def read_saif(path: Path) -> dict[str, int]:
    """``{instance.path/net: toggle count}`` for every net bit of the design."""
    out = {}

    def keep(prefix, net, tc):
        out[f"{prefix}/{net}"] = tc
    _scan(Path(path), keep)
    return out


_STRUCT = re.compile(r"^[ \t]*(?:\(INSTANCE (\S+)|(\(NET)|(\)))[ \t]*$", re.M)
_TC = re.compile(r"\(TC (\d+)\)")


def module_toggles(path: Path) -> tuple[dict[str, int], int]:
    """Toggles summed per instance path, and the number of net bits, without holding every
    net: the structural lines are found by one regular expression and each run of net lines
    between them is summed at once (a full-size layer's SAIF has millions of nets)."""
    text = Path(path).read_text()
    if "(SAIFILE" not in text[:4096]:
        raise SaifError(f"{path}: not a SAIF file")
    modules: dict[str, int] = defaultdict(int)
    nets = 0
    stack: list[str | None] = []
    names: list[str] = []
    skip = 0
    pos = 0

    def flush(end: int):
        nonlocal nets
        if names and not skip:
            counts = _TC.findall(text, pos, end)
            if counts:
                modules[".".join(names)] += sum(map(int, counts))
                nets += len(counts)
    for m in _STRUCT.finditer(text):
        flush(m.start())
        pos = m.end()
        if m.group(1) is not None:
            name = _unescape(m.group(1))
            stack.append(name)
            if skip or name == "$rootio":
                skip += 1
            else:
                names.append(name)
        elif m.group(2) is not None:
            stack.append(None)
        else:
            if not stack:
                break                   # the SAIFILE group's own closing parenthesis
            if stack.pop() is not None:
                if skip:
                    skip -= 1
                else:
                    names.pop()
    if stack:
        raise SaifError(f"{path}: unbalanced parentheses")
    return dict(modules), nets


def per_module(counts: dict[str, int]) -> dict[str, int]:
    """Toggles summed per instance path."""
    modules = defaultdict(int)
    for name, n in counts.items():
        modules[name.split("/", 1)[0]] += n
    return dict(modules)
