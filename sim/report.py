"""Energy, area and the run report of a tile experiment; atomic writing of a run directory."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import yaml

from .config import ConfigError, TechConfig, TileConfig, resolved_dict

__all__ = ["tile_energy_pj", "tile_area_mm2", "atomic_run_dir", "write_report", "tile_headline",
           "check_out_dir", "check_out_file", "OutputError", "MARKER", "atomic_write_text",
           "atomic_write_bytes",
           "clean_stale_staging"]


def _adc_entry(table: dict, bits: int, tech: TechConfig, key: str):
    if bits not in table:
        raise ConfigError(f"tech '{tech.name}'", key, bits,
                          f"an ADC resolution listed in the tech file: {sorted(table)}")
    return table[bits]


def tile_energy_pj(tile: TileConfig, tech: TechConfig, counters: dict,
                   switching: dict | None = None, *, cycles: int | None = None,
                   power_gating: str = "idle") -> dict:
    """Energy = events x per-event energy + RTL net toggles x per-toggle energy + ADC leakage
    x powered time (each constant from the tech file, with its source). ``switching``:
    ``moepim.sim.digital.switching_energy`` of the run (``None``: not measured, e.g. outside
    Verilator). Leakage: ``power_gating`` ``idle`` powers the peripheral set over its busy
    cycles (the RTL's ``busy_cycles`` counter), one wake-up per MVM; ``none`` over the run's
    ``cycles``. The ADC's per-conversion energy is its dynamic part
    (``moepim.sim.layer_report.adc_split``)."""
    from .layer_report import adc_split

    per = counters["peripherals"]
    activations = sum(x["activations"] for x in counters["crossbars"])
    cells = tile.spec().cells_per_crossbar
    _adc_entry(tech.adc_energy_pj, tile.adc_bits, tech, "adc_energy_pj")
    adc, leak_mw = adc_split(tech, tile.adc_bits)
    if power_gating == "idle":
        powered, wakeups = per["busy_cycles"], per["mvms"]
    elif power_gating == "none":
        powered, wakeups = (per["busy_cycles"] if cycles is None else cycles), 0
    else:
        raise ValueError(f"power_gating={power_gating!r}: 'none' or 'idle'")
    clock = tech.clock_ns.value
    breakdown = {
        "crossbar": activations * cells * tech.cell_read_energy_fj.value * 1e-3,
        "dac": per["dac_drives"] * tech.dac_drive_energy_pj.value,
        "adc": per["adc_conversions"] * adc,
        "shift_add": per["shift_adds"] * tech.shift_add_energy_pj.value,
        "leakage": powered * clock * tile.n_adcs * leak_mw,      # mW x ns = pJ
        "wakeup": wakeups * tech.peripheral_wakeup_energy_pj.value,
    }
    not_included = []
    if switching is None:
        not_included.append("digital switching (toggle counts need a Verilator run: SAIF)")
    else:
        breakdown["digital_switching"] = switching["energy_pj"]
    groups = {"dynamic": sum(v for k, v in breakdown.items() if k != "leakage"),
              "leakage": breakdown["leakage"]}
    return {"total": sum(breakdown.values()), "breakdown": breakdown, "groups": groups,
            "power_gating": {"mode": power_gating, "powered_cycles": powered,
                             "wakeups": wakeups, "adc_dynamic_pj_per_conversion": adc,
                             "adc_leakage_mw": leak_mw},
            "switching": switching, "not_included": not_included}


def tile_area_mm2(tile: TileConfig, tech: TechConfig, digital: dict | None = None) -> dict:
    """Analog and mixed-signal area of one crossbar group from the technology table, and
    ``digital`` (``moepim.sim.synth`` of the group's RTL, crossbars black-boxed): its logic
    and memories."""
    adc = _adc_entry(tech.adc_area_um2, tile.adc_bits, tech, "adc_area_um2")
    um2 = {
        "arrays": tile.group_size * tile.spec().cells_per_crossbar
        * tech.cell_area_um2.value,
        "adcs": tile.n_adcs * adc.value,
        "dacs": tile.n_rows * tech.dac_area_um2.value,
        "shift_adds": tile.n_adcs * tech.shift_add_area_um2.value,
    }
    not_included = []
    summary = None
    if digital is None:
        not_included.append("digital logic (Yosys synthesis skipped)")
    else:
        um2["digital_logic"] = digital["logic_area_mm2"] * 1e6
        um2["sram"] = digital["memory_area_mm2"] * 1e6
        summary = {k: digital[k] for k in ("flow", "cells", "flip_flops", "transistors",
                                           "memory_bits", "method", "transistor_area_um2",
                                           "source", "excluded")}
    breakdown = {k: v * 1e-6 for k, v in um2.items()}
    return {"total": sum(breakdown.values()), "breakdown": breakdown, "digital_logic": summary,
            "not_included": not_included}


MARKER = ".moepim-output"          # written into every output folder moepim publishes
_STAGING = ".moepim-staging"      # .NAME.moepim-staging.PID.XXXX beside --out while running
_FORBIDDEN_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))
NAME_MAX = 255


class OutputError(ValueError):
    """An output path moepim will not write; ``str()`` is the one line to print."""

    def __init__(self, path, problem: str, hint: str = ""):
        self.path = path
        super().__init__(f"{path}: {problem}" + (f"; {hint}" if hint else ""))


def _check_place(path: Path, key: str) -> Path:
    """Reasons any output path is unusable: ``.``, too long a name, a system folder, below a
    regular file, an unwritable parent."""
    path = Path(path)
    if str(path) in ("", ".", "..") or path.name in ("", ".", ".."):
        raise OutputError(path, f"{key} must name a new file or folder, not {str(path)!r}")
    if len(path.name.encode()) > NAME_MAX:
        raise OutputError(f"{str(path)[:60]}...", f"{key}: the name has "
                          f"{len(path.name.encode())} bytes; at most {NAME_MAX} are allowed")
    full = Path(os.path.abspath(path))
    for root in _FORBIDDEN_ROOTS:
        if full == root or root in full.parents:
            raise OutputError(path, f"{key} is under {root}, a system folder; "
                                    "choose a folder of your own")
    for parent in reversed(full.parents):
        if parent.exists() and not parent.is_dir():
            raise OutputError(path, f"{key}: {parent} is a file, not a folder")
    return path


def check_out_file(path, key: str, *, make_parent: bool = False) -> Path:
    """A file output (``--json``, ``--plot``, a converted trace): its folder must exist (or is
    made with ``make_parent``) and the path must not be a folder. Returns the path."""
    path = _check_place(Path(path), key)
    if path.is_dir():
        raise OutputError(path, f"{key} is a folder; expected a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        if not make_parent:
            raise OutputError(path, f"{key}: the folder {parent} does not exist")
        parent.mkdir(parents=True, exist_ok=True)
    if not os.access(parent, os.W_OK):
        raise OutputError(path, f"{key}: the folder {parent} is not writable")
    return path


def is_moepim_output(folder: Path) -> bool:
    return (Path(folder) / MARKER).is_file()


def check_out_dir(out, *, force: bool = False) -> Path:
    """An ``--out`` folder moepim may (re)place: absent, empty, or a previous moepim output
    (it holds the :data:`MARKER` file). Anything else, or a regular file, needs ``force``."""
    out = _check_place(Path(out), "--out")
    if out.is_symlink() and not force:
        raise OutputError(out, "--out is a symbolic link; moepim will not replace it",
                          "remove it or pass --force")
    if out.is_file() and not force:
        raise OutputError(out, "--out is an existing file, not a moepim output folder",
                          "choose another --out, or pass --force to replace it")
    if out.is_dir() and not force and not is_moepim_output(out) and any(out.iterdir()):
        earlier = any((out / n).is_file() for n in ("report.json", "schedule.json",
                                                     "synth.json"))
        raise OutputError(out, "--out holds files moepim did not write (no "
                          f"{MARKER} marker" + ("; an output of an earlier moepim version?"
                                                if earlier else "") + ")",
                          "choose another --out, or pass --force to replace the folder and "
                          "everything in it")
    parent = Path(os.path.abspath(out)).parent
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(out, f"--out: the folder {parent} is not writable")
    return out


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_staging(parent: Path) -> list[Path]:
    """Remove staging folders left by runs that died (SIGKILL, power loss) in ``parent``:
    those whose owner process no longer exists."""
    removed = []
    with contextlib.suppress(OSError):
        for p in Path(parent).iterdir():
            parts = p.name.split(".")
            # .NAME.moepim-staging.PID.XXXX  or  .NAME.moepim-old.PID
            for tag in (_STAGING[1:], "moepim-old"):
                if tag in parts:
                    i = parts.index(tag)
                    pid = parts[i + 1] if i + 1 < len(parts) else ""
                    if pid.isdigit() and not pid_alive(int(pid)) and p.is_dir() \
                            and not p.is_symlink():
                        shutil.rmtree(p, ignore_errors=True)
                        removed.append(p)
    return removed


@contextmanager
def atomic_run_dir(out: Path, *, force: bool = False):
    """Build an output folder in a sibling staging folder; publish it only on success.

    An interrupted or failed run leaves no partial output (its staging folder is removed; a
    killed run's is removed by the next run in the same place). An existing ``out`` is
    replaced only if it is a previous moepim output, empty, or ``force`` is given
    (:func:`check_out_dir`), and only once the new folder is complete.
    """
    out = check_out_dir(Path(out), force=force)
    parent = Path(os.path.abspath(out)).parent
    parent.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name[:200]}{_STAGING}.{os.getpid()}.",
                                dir=parent))
    try:
        yield tmp
        (tmp / MARKER).write_text(json.dumps({"written_by": "moepim", "pid": os.getpid()})
                                  + "\n")
        check_out_dir(out, force=force)     # nothing of the user's appeared meanwhile
        if out.is_symlink() or out.is_file():
            out.unlink()
        if out.exists():
            old = parent / f".{out.name[:200]}.moepim-old.{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``path`` through a temporary sibling: readers see the old file or the new one."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` through a temporary sibling: readers see the old file or the new one, and
    a failed write (full disk, interrupt) leaves no temporary file behind."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:200]}.", suffix=".tmp",
                               dir=path.parent if str(path.parent) else ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def tile_headline(report: dict) -> dict:
    return {
        "sim": report["sim"], "cycles": report["cycles"], "time_ns": report["time_ns"],
        "energy_pj": report["energy_pj"]["total"], "area_mm2": report["area_mm2"]["total"],
        "golden_match": report["golden_match"], "n_mismatches": report["n_mismatches"],
        "mvms": report["counters"]["peripherals"]["mvms"], "wall_s": report["wall_s"],
    }


# The report's schema version (``report_version``, the first key of every report.json). A
# renamed or removed key bumps it; the README's changelog maps the keys. 1: reports without the
# key; 2: ``schedule.prefill.loads_per_slot`` -> ``loads_per_timestamp``,
# ``schedule.prefill.slots`` -> ``by_timestamp``.
REPORT_VERSION = 2


def write_report(folder: Path, report: dict, config, headline: dict) -> None:
    """``report.json``, ``config.resolved.yaml`` and ``report.csv`` (the ``headline`` row)."""
    (folder / "report.json").write_text(json.dumps(report, indent=2, default=_plain))
    (folder / "config.resolved.yaml").write_text(yaml.safe_dump(resolved_dict(config),
                                                                sort_keys=False))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(headline))
    w.writeheader()
    w.writerow(headline)
    (folder / "report.csv").write_text(buf.getvalue())


def _plain(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, (np.ndarray, tuple)):
        return list(o.tolist() if isinstance(o, np.ndarray) else o)
    raise TypeError(f"not JSON-serialisable: {type(o)}")
