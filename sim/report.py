"""Energy, area and the run report of a tile experiment; atomic writing of a run directory."""

from __future__ import annotations

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

from moepim.models.tile import TileShape

from .config import ConfigError, TechConfig, TileConfig, resolved_dict

__all__ = ["tile_energy_pj", "tile_area_mm2", "atomic_run_dir", "write_report", "tile_headline"]


def _adc_entry(table: dict, bits: int, tech: TechConfig, key: str):
    if bits not in table:
        raise ConfigError(f"tech '{tech.name}'", key, bits,
                          f"an ADC resolution listed in the tech file: {sorted(table)}")
    return table[bits]


def tile_energy_pj(tile: TileConfig, tech: TechConfig, counters: dict,
                   switching: dict | None = None) -> dict:
    """Energy = events x per-event energy + RTL net toggles x per-toggle energy (each constant
    from the tech file, with its source). ``switching``: ``moepim.sim.digital.switching_energy``
    of the run (``None``: not measured, e.g. outside Verilator)."""
    per = counters["peripherals"]
    activations = sum(x["activations"] for x in counters["crossbars"])
    cells = TileShape(**tile.shape_kwargs()).cells_per_crossbar
    adc = _adc_entry(tech.adc_energy_pj, tile.adc_bits, tech, "adc_energy_pj")
    breakdown = {
        "crossbar": activations * cells * tech.cell_read_energy_fj.value * 1e-3,
        "dac": per["dac_drives"] * tech.dac_drive_energy_pj.value,
        "adc": per["adc_conversions"] * adc.value,
        "shift_add": per["shift_adds"] * tech.shift_add_energy_pj.value,
    }
    not_included = ["leakage"]
    if switching is None:
        not_included.append("digital switching (toggle counts need a Verilator run: SAIF)")
    else:
        breakdown["digital_switching"] = switching["energy_pj"]
    return {"total": sum(breakdown.values()), "breakdown": breakdown, "switching": switching,
            "not_included": not_included}


def tile_area_mm2(tile: TileConfig, tech: TechConfig, digital: dict | None = None) -> dict:
    """Analog and mixed-signal area of one crossbar group from the technology table, and
    ``digital`` (``moepim.sim.synth`` of the group's RTL, crossbars black-boxed): its logic
    and memories."""
    adc = _adc_entry(tech.adc_area_um2, tile.adc_bits, tech, "adc_area_um2")
    um2 = {
        "arrays": tile.group_size * TileShape(**tile.shape_kwargs()).cells_per_crossbar
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


@contextmanager
def atomic_run_dir(out: Path):
    """Build a run directory in a sibling temporary folder; publish it only on success.

    An interrupted or failed run leaves no partial output directory (an existing directory is
    replaced only when the new one is complete).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def tile_headline(report: dict) -> dict:
    return {
        "sim": report["sim"], "cycles": report["cycles"], "time_ns": report["time_ns"],
        "energy_pj": report["energy_pj"]["total"], "area_mm2": report["area_mm2"]["total"],
        "golden_match": report["golden_match"], "n_mismatches": report["n_mismatches"],
        "mvms": report["counters"]["peripherals"]["mvms"], "wall_s": report["wall_s"],
    }


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
