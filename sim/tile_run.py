"""Tile experiments: a seeded scenario of MVMs through one shared peripheral set.

The same scenario runs under Verilator, Icarus (cocotb on the exported Verilog) or Amaranth's
simulator; every output is compared with the golden integer model, every counter with the
model's event counts, and every MVM's latency with ``mvm_latency``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from moepim.hw import TileGeometry, TileGroup
from moepim.models.tile import TileShape, tile_mvm, tile_mvm_events
from moepim.testbenches.bits import unpack_fields

from .build import build_simulator, default_build_root
from .config import TileExperiment
from .ports import flat_fields

__all__ = ["Scenario", "make_scenario", "run_scenario", "check_outputs", "TileRun"]

TB_MODULE = "moepim.testbenches.tile"


@dataclass
class Scenario:
    """Everything a testbench needs to play one tile experiment, simulator-independent."""

    weights: np.ndarray        # (group_size, n_rows, n_outputs) signed weights
    xs: np.ndarray             # (n_mvms, n_rows) signed inputs
    xbar: np.ndarray           # (n_mvms,) crossbar of each MVM
    gaps: np.ndarray           # (n_mvms,) idle cycles before each request
    ready_pattern: np.ndarray  # (P,) o_results.ready at cycle c is ready_pattern[c % P]

    def arrays(self) -> dict:
        return {"weights": self.weights, "xs": self.xs, "xbar": self.xbar, "gaps": self.gaps,
                "ready_pattern": self.ready_pattern}


def make_scenario(exp: TileExperiment) -> Scenario:
    t, wl = exp.tile, exp.workload
    shape = TileShape(**t.shape_kwargs())
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
    return Scenario(weights, xs, xbar, gaps.astype(np.int64), ready)


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
    g = TileGeometry(**exp.tile.shape_kwargs())
    idle = int(sc.gaps.sum()) + 1
    stalls = int((sc.ready_pattern == 0).sum() * (len(sc.xs) * g.mvm_latency // len(sc.ready_pattern) + 2))
    return (len(sc.xs) + 1) * (g.mvm_latency + 2) + idle + stalls + 100


@contextmanager
def _no_pytest_env():
    """cocotb's runner calls sys.exit on failures under pytest; we check results ourselves."""
    saved = os.environ.pop("PYTEST_CURRENT_TEST", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["PYTEST_CURRENT_TEST"] = saved


def run_cocotb(exp: TileExperiment, sc: Scenario, sim: str, *, build_root=None, waves=False,
               progress=None) -> TileRun:
    from cocotb_tools.check_results import get_results

    group = TileGroup(**exp.tile.hw_kwargs())
    build = build_simulator(group, sim=sim, top="tile_group", build_root=build_root,
                            trace="vcd" if waves else None, progress=progress)
    build_root = Path(build_root or default_build_root())
    (build_root / "runs-tmp").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=build_root / "runs-tmp") as tmp:
        folder = Path(tmp)
        spec = {"group_size": exp.tile.group_size, "fields": _field_maps(group),
                "timeout_cycles": _timeout(exp, sc)}
        (folder / "spec.json").write_text(json.dumps(spec))
        np.savez(folder / "data.npz", **sc.arrays())
        runner = build.runner()
        t0 = time.monotonic()
        if progress:
            progress(f"simulating {len(sc.xs)} MVMs under {sim}")
        with _no_pytest_env():
            results_xml = runner.test(
                test_module=TB_MODULE, hdl_toplevel="tile_group", hdl_toplevel_lang="verilog",
                build_dir=build.directory,
                test_dir=folder, extra_env={"MOEPIM_SCENARIO": str(folder)},
                timescale=("1ns", "1ps"), waves=waves, log_file=folder / "sim.log")
        sim_s = time.monotonic() - t0
        n_tests, n_failed = get_results(Path(results_xml))
        if n_tests != 1 or n_failed or not (folder / "result.json").exists():
            log = (folder / "sim.log").read_text()[-4000:] if (folder / "sim.log").exists() else ""
            raise RuntimeError(f"{sim} testbench failed ({n_failed} of {n_tests} tests); "
                               f"end of its log:\n{log}")
        meta = json.loads((folder / "result.json").read_text())
        with np.load(folder / "result.npz") as r:
            res = {k: r[k] for k in r.files}
    counters = _counter_dict(group.counters.shape(), int(meta["counters"]))
    return TileRun(sim, res["y"], res["accept"], res["done"], res["xbar"], meta["cycles"],
                   meta["load_cycles"], counters,
                   {"cached": build.cached, "build_s": build.build_s,
                    "directory": str(build.directory)}, sim_s, meta["mvm_wall_s"])


def run_amaranth(exp: TileExperiment, sc: Scenario, *, progress=None) -> TileRun:
    """Amaranth's simulator; macro cores become the Python behavioural model."""
    from amaranth.sim import Simulator

    from .amaranth_macro import add_macro_model

    kwargs = exp.tile.hw_kwargs()
    if kwargs["core"] == "macro":
        kwargs["core"] = "python"
    group = TileGroup(**kwargs)
    fields = _field_maps(group)
    sim = Simulator(group)
    sim.add_clock(1e-8)
    for xb in group.crossbars:
        if xb.core == "python":
            add_macro_model(sim, xb)
    n = len(sc.xs)
    out = {"accept": np.full(n, -1, dtype=np.int64), "done": np.full(n, -1, dtype=np.int64),
           "y": None, "xbar": np.zeros(n, dtype=np.int64)}
    meta = {}
    timeout = _timeout(exp, sc)
    from moepim.testbenches.bits import pack_fields

    async def bench(ctx):
        # weights, one row per cycle
        ctx.set(group.i_weights.valid, 1)
        for xb in range(sc.weights.shape[0]):
            for row in range(sc.weights.shape[1]):
                ctx.set(group.i_weights.payload.as_value(),
                        pack_fields(fields["i_weights"], xbar=xb, row=row, w=sc.weights[xb, row]))
                while not ctx.get(group.i_weights.ready):
                    await ctx.tick()
                await ctx.tick()
        ctx.set(group.i_weights.valid, 0)
        meta["load_cycles"] = sc.weights.shape[0] * sc.weights.shape[1]
        queues = {i: list(np.flatnonzero(sc.xbar == i)) for i in range(exp.tile.group_size)}
        order = {i: list(q) for i, q in queues.items()}
        start = {i: int(sc.gaps[q[0]]) if q else None for i, q in queues.items()}
        results = []
        cycle = 0
        wall0 = time.perf_counter()
        while len(results) < n:
            for i, q in queues.items():
                active = bool(q) and cycle >= start[i]
                ctx.set(group.i_requests[i].valid, active)
                if active:
                    ctx.set(group.i_requests[i].payload.as_value(),
                            pack_fields(fields["i_requests"], x=sc.xs[q[0]]))
            ctx.set(group.o_results.ready, int(sc.ready_pattern[cycle % len(sc.ready_pattern)]))
            accepted = [i for i, q in queues.items()
                        if q and cycle >= start[i] and ctx.get(group.i_requests[i].ready)]
            if ctx.get(group.o_results.valid) and ctx.get(group.o_results.ready):
                r = unpack_fields(fields["o_results"], ctx.get(group.o_results.payload.as_value()))
                results.append((r["xbar"], r["y"], cycle))
            for i in accepted:
                k = queues[i].pop(0)
                out["accept"][k] = cycle
                if queues[i]:
                    start[i] = cycle + 1 + int(sc.gaps[queues[i][0]])
            await ctx.tick()
            cycle += 1
            if cycle > timeout:
                raise TimeoutError(f"only {len(results)} of {n} results after {cycle} cycles")
        for i in queues:
            ctx.set(group.i_requests[i].valid, 0)
        meta["cycles"] = cycle
        meta["mvm_wall_s"] = time.perf_counter() - wall0
        meta["counters"] = ctx.get(group.counters.as_value())
        y = np.zeros((n, group.geometry.n_outputs), dtype=np.int64)
        for xbar, values, when in results:
            k = order[xbar].pop(0)
            y[k], out["done"][k], out["xbar"][k] = values, when, xbar
        out["y"] = y

    sim.add_testbench(bench)
    if progress:
        progress(f"simulating {n} MVMs under amaranth")
    t0 = time.monotonic()
    sim.run()
    sim_s = time.monotonic() - t0
    counters = _counter_dict(group.counters.shape(), meta["counters"])
    return TileRun("amaranth", out["y"], out["accept"], out["done"], out["xbar"], meta["cycles"],
                   meta["load_cycles"], counters, {"cached": False, "build_s": 0.0}, sim_s,
                   meta["mvm_wall_s"])


def run_scenario(exp: TileExperiment, sc: Scenario, sim: str, **kw) -> TileRun:
    if sim == "amaranth":
        return run_amaranth(exp, sc, progress=kw.get("progress"))
    return run_cocotb(exp, sc, sim, **kw)


def expected_counters(exp: TileExperiment, sc: Scenario) -> dict:
    shape = TileShape(**exp.tile.shape_kwargs())
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
        want = tile_mvm(sc.xs[k], sc.weights[sc.xbar[k]], **exp.tile.shape_kwargs())
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
    latency = TileGeometry(**exp.tile.shape_kwargs()).mvm_latency
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
