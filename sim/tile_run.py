"""Tile experiments: a seeded scenario of MVMs through one shared peripheral set.

The same scenario runs under Verilator, Icarus (cocotb on the exported Verilog) or Amaranth's
simulator; every output is compared with the golden integer model, every counter with the
model's event counts, and every MVM's latency with ``mvm_latency``.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from moepim.hw import TileGroup
from moepim.models.tile import tile_mvm, tile_mvm_events
from moepim.spec.tile import TileSpec
from moepim.testbenches.bits import pack_array

from .config import TileExperiment, resolved_dict
from .ports import flat_fields

__all__ = ["Scenario", "make_scenario", "run_scenario", "check_outputs", "TileRun",
           "run_tile_experiment", "summarize_tile"]



@dataclass
class Scenario:
    """Everything a testbench needs to play one tile experiment, simulator-independent."""

    weights: np.ndarray        # (group_size, n_rows, n_outputs) signed weights
    xs: np.ndarray             # (n_mvms, n_rows) signed inputs
    xbar: np.ndarray           # (n_mvms,) crossbar of each MVM
    gaps: np.ndarray           # (n_mvms,) idle cycles before each request
    ready_pattern: np.ndarray  # (P,) o_results.ready at cycle c is ready_pattern[c % P]
    # (group_size, slices) calibrated ADC window per crossbar (adc_range: calibrated)
    adc_shifts: np.ndarray | None = None

    def bench_args(self, exp: TileExperiment, group: TileGroup) -> dict:
        """Arguments of ``testbenches.benches.tile_scenario`` for this scenario."""
        return {"weights": self.weights.tolist(), "xs": self.xs.tolist(),
                "xbar": self.xbar.tolist(), "gaps": self.gaps.tolist(),
                "ready_pattern": self.ready_pattern.tolist(), "fields": _field_maps(group),
                "timeout": _timeout(exp, self),
                "adc_shifts": (None if self.adc_shifts is None else
                               pack_array(self.adc_shifts.reshape(-1),
                                          group.geometry.shift_bits))}


def make_scenario(exp: TileExperiment) -> Scenario:
    t, wl = exp.tile, exp.workload
    shape = TileSpec(**t.shape_kwargs())
    rng = np.random.default_rng(wl.seed)
    wh, xh = 1 << (t.weight_bits - 1), 1 << (t.input_bits - 1)
    weights = rng.integers(-wh, wh, size=(t.group_size, t.n_rows, shape.n_outputs))
    xs = rng.integers(-xh, xh, size=(wl.n_mvms, t.n_rows))
    xbar = np.arange(wl.n_mvms) % t.group_size
    if wl.arrival == "simultaneous":
        gaps = np.zeros(wl.n_mvms, dtype=np.int64)
    else:
        gaps = rng.integers(0, wl.max_gap + 1, size=wl.n_mvms)
    if wl.backpressure > 0:
        ready = (rng.random(997) >= wl.backpressure).astype(np.uint8)
        ready[0] = 1
    else:
        ready = np.ones(1, dtype=np.uint8)
    shifts = None
    if t.adc_range == "calibrated":
        # the calibration batch: inputs drawn like the scenario's, another seed
        from moepim.models.pim import CALIBRATION_SEED_OFFSET, calibrate_shift

        cal = np.random.default_rng(wl.seed + CALIBRATION_SEED_OFFSET).integers(
            -xh, xh, size=(max(wl.n_mvms, 16), t.n_rows))
        shifts = np.array([calibrate_shift(cal, weights[i], shape)
                           for i in range(t.group_size)], dtype=np.int64)
    return Scenario(weights, xs, xbar, gaps.astype(np.int64), ready, shifts)


@dataclass
class TileRun:
    sim: str
    y: np.ndarray
    accept: np.ndarray
    done: np.ndarray
    xbar: np.ndarray
    cycles: int
    load_cycles: int
    counters: dict
    build: dict = field(default_factory=dict)
    sim_s: float = 0.0        # the whole simulation, start-up and weight programming included
    mvm_wall_s: float = 0.0   # the MVM phase only (cycle 0 to the last result)
    saif: Path | None = None  # the run's toggle counts (Verilator), if asked for


def _counter_dict(layout, word: int) -> dict:
    out = {}
    for name, (offset, width, count, _) in flat_fields(layout).items():
        if count:
            vals = [(word >> (offset + i * width)) & ((1 << width) - 1) for i in range(count)]
        else:
            vals = (word >> offset) & ((1 << width) - 1)
        node = out
        *parents, leaf = name.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = vals
    # arrays of structs come out as {"0": {...}, "1": {...}}: make them lists
    def listify(d):
        if isinstance(d, dict):
            d = {k: listify(v) for k, v in d.items()}
            if d and all(k.isdigit() for k in d):
                return [d[str(i)] for i in range(len(d))]
        return d
    return listify(out)


def _field_maps(group: TileGroup) -> dict:
    return {
        "i_weights": flat_fields(group.i_weights.payload.shape()),
        "i_requests": flat_fields(group.i_requests[0].payload.shape()),
        "o_results": flat_fields(group.o_results.payload.shape()),
    }


def _timeout(exp: TileExperiment, sc: Scenario) -> int:
    g = exp.tile.spec()
    idle = int(sc.gaps.sum()) + 1
    stalls = int((sc.ready_pattern == 0).sum() * (len(sc.xs) * g.mvm_latency // len(sc.ready_pattern) + 2))
    return (len(sc.xs) + 1) * (g.mvm_latency + 2) + idle + stalls + 100


def run_scenario(exp: TileExperiment, sc: Scenario, sim: str, *, build_root=None,
                 progress=None, saif: Path | None = None) -> TileRun:
    """Play a scenario on the experiment's ``TileGroup`` under ``sim``: cocotb on the exported
    Verilog (Verilator, Icarus) or Amaranth's simulator, where macro cores become the Python
    behavioural model. One bench (``testbenches.benches.tile_scenario``) serves all three.
    ``saif`` (Verilator): keep the run's toggle counts there."""
    from .amaranth_macro import add_macro_model
    from .block_run import run_bench

    group = TileGroup(**exp.tile.build_kwargs())

    def setup(simulator):          # Amaranth's simulator: the macro cores' Python model
        for xb in group.crossbars:
            if xb.core == "macro":
                add_macro_model(simulator, xb)

    args = sc.bench_args(exp, group)
    info = {}
    if progress:
        progress(f"simulating {len(sc.xs)} MVMs under {sim}")
    r = run_bench(group, top="tile_group", bench="tile_scenario", args=args, sim=sim,
                  build_root=build_root, setup=setup, info=info, progress=progress,
                  trace="saif" if saif else None, trace_to=saif)
    counters = _counter_dict(group.counters.shape(), int(r["counters"]))
    build = {k: info[k] for k in ("cached", "build_s", "directory") if k in info}
    return TileRun(sim, np.array(r["y"], dtype=np.int64), np.array(r["accept"]),
                   np.array(r["done"]), np.array(r["xbar"]), r["cycles"], r["load_cycles"],
                   counters, build, info["sim_s"], r["mvm_wall_s"], saif)


def expected_counters(exp: TileExperiment, sc: Scenario) -> dict:
    shape = exp.tile.spec()
    ev = tile_mvm_events(sc.xs, **exp.tile.shape_kwargs())
    g = exp.tile.group_size
    per_xbar = [int((sc.xbar == i).sum()) for i in range(g)]
    return {
        "peripherals": {k: ev[k] for k in ("mvms", "dac_drives", "adc_conversions",
                                            "shift_adds")},
        "crossbars": [{"activations": per_xbar[i] * shape.input_bits,
                       "row_writes": shape.n_rows} for i in range(g)],
    }


def check_outputs(exp: TileExperiment, sc: Scenario, run: TileRun) -> dict:
    """Compare a run with the golden model; return the report's verification section."""
    mismatches = []
    for k in range(len(sc.xs)):
        window = None if sc.adc_shifts is None else sc.adc_shifts[sc.xbar[k]]
        want = tile_mvm(sc.xs[k], sc.weights[sc.xbar[k]], window, **exp.tile.shape_kwargs())
        got = run.y[k]
        if run.done[k] < 0:
            mismatches.append({"mvm": int(k), "what": "no result"})
            continue
        if run.xbar[k] != sc.xbar[k]:
            mismatches.append({"mvm": int(k), "what": "crossbar tag",
                               "expected": int(sc.xbar[k]), "actual": int(run.xbar[k])})
        bad = np.flatnonzero(want != got)
        if bad.size:
            j = int(bad[0])
            mismatches.append({"mvm": int(k), "what": "output", "n_wrong": int(bad.size),
                               "first_index": j, "expected": int(want[j]), "actual": int(got[j])})
    exp_c = expected_counters(exp, sc)
    for key, want in exp_c["peripherals"].items():
        got = run.counters["peripherals"][key]
        if got != want:
            mismatches.append({"what": f"counter peripherals.{key}", "expected": want,
                               "actual": got})
    for i, xb in enumerate(exp_c["crossbars"]):
        for key, want in xb.items():
            got = run.counters["crossbars"][i][key]
            if got != want:
                mismatches.append({"what": f"counter crossbars.{i}.{key}", "expected": want,
                                   "actual": got})
    latency = exp.tile.spec().mvm_latency
    lat = run.done - run.accept
    # a result can only be late through output back-pressure; never early
    for k in np.flatnonzero(lat < latency):
        mismatches.append({"mvm": int(k), "what": "latency below mvm_latency",
                           "expected": latency, "actual": int(lat[k])})
    if (sc.ready_pattern == 1).all():
        for k in np.flatnonzero(lat != latency):
            mismatches.append({"mvm": int(k), "what": "latency", "expected": latency,
                               "actual": int(lat[k])})
    return {"golden_match": not mismatches, "mismatches": mismatches[:50],
            "n_mismatches": len(mismatches), "mvm_latency": latency,
            "latency_min": int(lat.min()), "latency_max": int(lat.max())}


def run_tile_experiment(exp: TileExperiment, *, sim: str, out_folder: Path,
                        progress=None) -> dict:
    """Run, check and report a tile experiment into ``out_folder``; return the report. The
    layer run's stages: the plan (:func:`make_scenario`), the simulation
    (:func:`run_scenario`), the check (:func:`check_outputs`: values, counters, latencies),
    the summary (:func:`summarize_tile`: energy, area) and the report's files."""
    import tempfile

    from .digital import SWITCHING_SIMULATORS
    from .report import tile_area_mm2, tile_headline, write_report

    t0 = time.monotonic()
    # resolve tech-dependent figures before simulating: a bad tech table fails fast
    tile_area_mm2(exp.tile, exp.tech)
    scenario = make_scenario(exp)
    switching = sim in SWITCHING_SIMULATORS
    with tempfile.TemporaryDirectory() as tmp:
        run = run_scenario(exp, scenario, sim, progress=progress,
                           saif=Path(tmp) / "run.saif" if switching else None)
        check = check_outputs(exp, scenario, run)
        report = summarize_tile(exp, sim, run, check, switching=switching, progress=progress,
                                t0=t0)
    write_report(out_folder, report, exp, tile_headline(report))
    return report


def summarize_tile(exp: TileExperiment, sim: str, run, check: dict, *, switching: bool,
                   progress=None, t0: float = 0.0) -> dict:
    """The tile run's report: energy from its counters (and switching activity), area (the
    technology table's arrays and peripherals, Yosys for the digital logic), the checks."""
    from .digital import component_area, switching_energy
    from .report import REPORT_VERSION, tile_area_mm2, tile_energy_pj

    toggles = switching_energy(run.saif, exp.tech) if switching else None
    energy = tile_energy_pj(exp.tile, exp.tech, run.counters, toggles,
                            cycles=run.cycles, power_gating=exp.power_gating)
    if progress:
        progress("digital logic area: yosys on the tile group's RTL (cached after the first run)")
    # the crossbars' area is the technology table's (arrays), whatever their core
    digital = component_area(TileGroup(**exp.tile.build_kwargs()), "tile_group", exp.tech,
                             sim=sim, build_dir=run.build.get("directory"),
                             blackbox=("tile_group.xbar*",))
    area = tile_area_mm2(exp.tile, exp.tech, digital)
    return {
        "report_version": REPORT_VERSION,
        "sim": sim,
        "cycles": run.cycles,
        "time_ns": run.cycles * exp.tech.clock_ns.value,
        "load_cycles": run.load_cycles,
        "mvm_latency": check["mvm_latency"],
        "latency_min": check["latency_min"],
        "latency_max": check["latency_max"],
        "energy_pj": energy,
        "area_mm2": area,
        "counters": run.counters,
        "golden_match": check["golden_match"],
        "mismatches": check["mismatches"],
        "n_mismatches": check["n_mismatches"],
        "wall_s": time.monotonic() - t0,
        "sim_s": run.sim_s,
        "build": run.build,
        "host": {"python": platform.python_version(), "machine": platform.machine()},
        "config": resolved_dict(exp),
    }
