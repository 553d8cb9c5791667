"""Our figures beside the primary paper's (Gao & Yang, ISCAS 2026), from the area formula
(``moepim.sim.layer_report``, the layer's geometry per grouping) and the layer's cycle formula
(``moepim.spec.timing.compute_cycles``; the tests check it against the RTL window by window), with
the component that makes each difference.

    python benchmarks/paper_comparison.py [--report build/runs/default/report.json] [--markdown]

Area efficiency = operations / (time x area) of the 32-token prompt on the full-size
LLaMA-MoE 4/16 layer (paper variant), ``layer.lanes`` 32, reschedule; ratios to U1. Area:
the analog part (arrays, ADCs, DACs, shift-adds) from the technology table; the digital logic
and SRAM come from Yosys on each grouping's RTL in a run's report and are left out here (in the
default run they are a few per cent of the area). Time: the timestamps (cycle formula), the
token, job and output beats, the routing phase (from ``--report``: the layer's router takes the
same cycles for every grouping; without a report it is left out) and the DRAM streaming of the
prompt's token vectors and results at the DRAM preset's bandwidth. The authors' figures: their
area factor ``0.2 + 0.8/G`` (their code's ``group_factor``, 1.0 / 0.6 / 0.4) and time factor
``mvm_factor`` (largest group load / tokens: 0.4989 U1, 0.7518 U2, 0.5753 S2, 1.2288 U4,
1.0627 S4), from github.com/superstarghy/MoEwithPIM (main.py, scripts.sh).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from moepim.models.grouping import make_groups
from moepim.models.schedule import schedule
from moepim.models.traces import PAPER_LOAD_FACTORS, read_trace
from moepim.sim.config import REPO_ROOT, load_experiment
from moepim.sim.layer_report import layer_area_mm2, layer_geometry
from moepim.spec.timing import compute_cycles

GROUPINGS = ("U1", "U2", "S2", "U4", "S4")
DEFAULT = REPO_ROOT / "configs" / "experiments" / "default.yaml"
TRACE = REPO_ROOT / "configs" / "traces" / "paper-regime.npy"
NO_SYNTH = {"memory_bits": 0, "logic_area_mm2": 0.0, "flow": None, "cells": None,
            "flip_flops": None, "transistors": None, "memories": None, "method": None,
            "transistor_area_um2": None, "source": None, "excluded": None}


def analog_area(exp, g: int) -> dict:
    geo = layer_geometry(exp.model, exp.tile, exp.model.n_experts // g, g)
    a = layer_area_mm2(exp, geo, 0, NO_SYNTH)["breakdown"]
    total = sum(a[k] for k in ("arrays", "adcs", "dacs", "shift_adds"))
    return {"total": total, "adc_share": a["adcs"] / total, "array_share": a["arrays"] / total}


def prompt_time_ns(exp, mask, grouping: str, route_cycles: int) -> dict:
    m, t = exp.model, exp.tile
    lanes = exp.layer.lanes
    blocks = m.d_model // lanes
    mvm_latency = t.input_bits * (t.n_columns // t.n_adcs) + 4
    job = 2 * mvm_latency + -(-m.d_ff // lanes) + 2
    s = schedule(mask, make_groups(grouping, m.n_experts, mask.sum(axis=0)), "reschedule")
    n = mask.shape[0]
    compute = compute_cycles(s.loads_per_timestamp, blocks, job)
    beats = 2 * n * blocks + int(mask.sum()) + 1          # tokens in, jobs, outputs, hand-over
    clock = exp.tech.clock_ns.value
    vec = n * m.d_model * -(-m.quant.act_bits // 8)
    dram = 2 * vec / exp.dram.bandwidth_gbps.value       # B / (GB/s) = ns
    return {"compute_ns": compute * clock, "other_ns": (beats + route_cycles) * clock,
            "dram_ns": dram, "total_ns": (compute + beats + route_cycles) * clock + dram}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", type=Path, help="a default run's report.json (routing cycles, "
                    "GOPS/W/mm2, energy groups)")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    exp = load_experiment(DEFAULT)
    report = json.loads(args.report.read_text()) if args.report else None
    route = report["windows"][0]["route_cycles"] if report else 0
    n = exp.workload.n_prompt
    from paper_regime import expert_choice_mask

    regimes = {"expert choice": expert_choice_mask(n),
               "paper loads": read_trace(TRACE, n_experts=exp.model.n_experts)[0, :n]
               .astype(bool)}
    area = {g: analog_area(exp, int(g[1:])) for g in GROUPINGS}
    times = {r: {g: prompt_time_ns(exp, mask, g, route) for g in GROUPINGS}
             for r, mask in regimes.items()}
    header = ["grouping", "paper: area factor", "paper: time factor", "paper: area eff. / U1",
              "ours: area factor", "ours: ADC share of area", "ours EC: time factor",
              "ours EC: area eff. / U1", "ours paper loads: time factor",
              "ours paper loads: area eff. / U1"]
    rows = []
    for g in GROUPINGS:
        size = int(g[1:])
        pa = 0.2 + 0.8 / size
        pt = PAPER_LOAD_FACTORS[g] / PAPER_LOAD_FACTORS["U1"]
        oa = area[g]["total"] / area["U1"]["total"]
        row = [g, f"{pa:.2f}", f"{pt:.3f}", f"{1 / (pa * pt):.2f}x", f"{oa:.3f}",
               f"{area[g]['adc_share']:.1%}"]
        for r in regimes:
            ot = times[r][g]["total_ns"] / times[r]["U1"]["total_ns"]
            row += [f"{ot:.3f}", f"{1 / (oa * ot):.2f}x"]
        rows.append(row)
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("| --- |" + " ---: |" * (len(header) - 1))
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        for r in [header] + rows:
            print("  ".join(r))
    u1 = times["expert choice"]["U1"]
    print(f"\nU1 prompt time (expert choice): {u1['total_ns'] / 1e3:.1f} us = timestamps "
          f"{u1['compute_ns'] / 1e3:.1f} + beats/routing {u1['other_ns'] / 1e3:.1f} + DRAM "
          f"{u1['dram_ns'] / 1e3:.1f}; arrays are {area['U1']['array_share']:.1%} of U1's "
          f"analog area, ADCs {area['U1']['adc_share']:.1%} (the authors' factor assumes 20 % "
          "arrays)")
    if report:
        e, eff = report["energy_pj"], report["efficiency"]
        groups = e.get("groups")
        print(f"default run ({args.report}): {eff['gops_per_w_per_mm2']:.1f} GOPS/W/mm2 of the "
              f"MoE part (paper: 15.6 for the whole design), {eff['tops']:.3f} TOPS, "
              f"{eff['power_w'] * 1e3:.1f} mW, {report['area_mm2']['total']:.2f} mm2, energy "
              f"{e['total'] / 1e6:.1f} uJ"
              + (": " + ", ".join(f"{k} {v / e['total']:.1%}" for k, v in groups.items())
                 if groups else f", leakage {e['breakdown']['leakage'] / e['total']:.1%}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
