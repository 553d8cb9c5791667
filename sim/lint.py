"""Lint gates for exported Verilog: ``verilator --lint-only -Wall`` and an Icarus compile.

Amaranth writes Verilog through Yosys's ``write_verilog``. Some ``-Wall`` warning classes
describe the style of that generated code rather than design problems; they are waived for
the generated file only (never for the hand-written macro models), each for the reason below.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from .build import macro_sources, simulation_text
from .toolchain import setup_icarus, setup_verilator

__all__ = ["GENERATED_WAIVERS", "lint_verilator", "compile_icarus"]

GENERATED_WAIVERS = {
    "UNUSEDSIGNAL": "Yosys keeps whole intermediate wires of which the logic reads only some "
                    "bits (e.g. one field of a packed stream payload)",
    "WIDTHEXPAND": "Yosys writes equality tests against unsized-looking constants ('x == 1'h1') "
                   "after Amaranth has already applied its own, explicit width rules",
    "WIDTHTRUNC": "Yosys writes 'x == 0' as '! x' on multi-bit signals",
    "CASEINCOMPLETE": "Yosys's 'casez' blocks have no default branch: every always block assigns "
                      "its default value before the case",
    "PROCASSINIT": "Amaranth's register initial values are written as declaration initialisers "
                   "of registers that are also assigned in always blocks",
    "DECLFILENAME": "one exported file holds the top and all of its submodules",
}


def _waiver_file(folder: Path, generated: Path) -> Path:
    lines = ["`verilator_config"]
    for rule, why in GENERATED_WAIVERS.items():
        lines.append(f"// {rule}: {why}")
        lines.append(f'lint_off -rule {rule} -file "*{generated.name}"')
    path = folder / f"{generated.stem}.waivers.vlt"
    path.write_text("\n".join(lines) + "\n")
    return path


def lint_verilator(verilog: Path, top: str) -> subprocess.CompletedProcess:
    """Run ``verilator --lint-only -Wall`` on an export plus the macro models."""
    exe = setup_verilator()
    waivers = _waiver_file(verilog.parent, verilog)
    # --unroll-count 1: as in the builds (sim/build.py), the macro models' loops stay loops
    cmd = [str(exe), "--lint-only", "-Wall", "--unroll-count", "1", "--top-module", top,
           str(waivers), str(verilog),
           *map(str, macro_sources())]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def compile_icarus(verilog: Path, top: str) -> subprocess.CompletedProcess:
    """Compile an export plus the macro models with Icarus (``iverilog -g2005``)."""
    exe = setup_icarus()
    adapted = verilog.with_name(verilog.stem + ".icarus.v")
    adapted.write_text(simulation_text(verilog.read_text(), "icarus"))
    out = verilog.with_suffix(".vvp")
    cmd = [str(exe), "-g2005", "-s", top, "-o", str(out), str(adapted),
           *map(str, macro_sources())]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)
