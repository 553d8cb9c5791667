"""The primary paper's two studies as shipped sweeps on the timing level, their tables beside the
paper's figures, and the time they take.

    python benchmarks/paper_sweeps.py [--workers N] [--out build/sweeps] [--markdown]

Runs ``configs/sweeps/paper-grouping.yaml`` (U1/U2/S2/U4/S4 x compact/reschedule x GO cache
on/off: 20 points) and ``configs/sweeps/paper-generation.yaml`` (8/16/32/64 generated tokens x
GO cache on/off: 8 points) with ``--sim model`` into ``OUT/<name>`` (points cached under
``<build_root>/sweep-cache`` like any sweep: a second run is instant) and prints, per study:

* grouping: per grouping (the GO cache on; compact equals reschedule under the expert-choice
  router, whose every expert takes the same C tokens), cycles, time, energy, area, TOPS/mm2
  relative to U1, GOPS/W/mm2, the GO cache's decode speed-up and energy ratio; beside it the
  authors' area efficiency relative to U1 from their code's factors (area ``0.2 + 0.8/G``,
  time ``mvm_factor``; github.com/superstarghy/MoEwithPIM, main.py and scripts.sh);
* generation: per generated-token count, the layer with and without the GO cache (time,
  energy), their ratios over the whole run (prompt and decode steps) and over the decode steps
  only (``go_cache_comparison``); beside it the paper's 4.2x time / 10.1x energy for 8
  generated tokens (none vs KV+GO cache on a whole decoder layer, decode steps only), the
  authors' code's 4.161x / 10.102x (re-run: 7 decode steps at L = 33..39) and 3.114x / 4.838x
  with the prompt included.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pyarrow.parquet as pq

from moepim.sim.config import REPO_ROOT
from moepim.sim.sweep import run_sweep

SWEEPS = REPO_ROOT / "configs" / "sweeps"
GROUPINGS = ("U1", "U2", "S2", "U4", "S4")
# the authors' code: area factor 0.2 + 0.8/G (group_factor), time factor mvm_factor (largest
# group load / tokens), area efficiency = 1 / (area x time), relative to U1
PAPER_AREA = {"U1": 1.0, "U2": 0.6, "S2": 0.6, "U4": 0.4, "S4": 0.4}
PAPER_MVM = {"U1": 0.4989, "U2": 0.7518, "S2": 0.5753, "U4": 1.2288, "S4": 1.0627}
# generating 8 tokens, none vs KV+GO cache, decode steps only (the paper's abstract; the
# authors' code re-run: ../reference digest section 4.4 gives the runs)
PAPER_GENERATION = {"paper": (4.2, 10.1), "authors_code": (4.161, 10.102),
                    "authors_code_with_prompt": (3.114, 4.838)}


def rows(out: Path) -> list[dict]:
    return pq.read_table(out / "results.parquet").to_pylist()


def grouping_table(table: list[dict]) -> list[str]:
    on = {r["workload.grouping"]: r for r in table
          if r["workload.go_cache"] and r["workload.policy"] == "reschedule"}
    same = all(
        r["cycles"] == next(s["cycles"] for s in table if s["workload.grouping"] ==
                            r["workload.grouping"] and s["workload.go_cache"] ==
                            r["workload.go_cache"] and s["workload.policy"] == "reschedule")
        for r in table)
    u1 = on["U1"]["tops_per_mm2"]
    p_u1 = 1 / (PAPER_AREA["U1"] * PAPER_MVM["U1"])
    lines = ["| grouping | cycles | time us | energy uJ | area mm2 | TOPS/mm2 / U1 | GOPS/W/mm2 "
             "| GO cache: decode speed-up / energy ratio | paper (authors' code): area eff. / U1 |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for g in GROUPINGS:
        r = on[g]
        paper = 1 / (PAPER_AREA[g] * PAPER_MVM[g]) / p_u1
        lines.append(f"| {g} | {r['cycles']:,} | {r['time_us']:.1f} | {r['energy_uj']:.1f} | "
                     f"{r['area_mm2']:.1f} | {r['tops_per_mm2'] / u1:.2f}x | "
                     f"{r['gops_per_w_per_mm2']:.1f} | {r['go_cache_speedup']:.1f}x / "
                     f"{r['go_cache_energy_ratio']:.1f}x | {paper:.2f}x |")
    lines.append("")
    lines.append(f"compact = reschedule at every grouping (cycles): {same}")
    return lines


def generation_table(table: list[dict]) -> list[str]:
    by = {(r["workload.n_generate"], r["workload.go_cache"]): r for r in table}
    p, a = PAPER_GENERATION["paper"], PAPER_GENERATION["authors_code"]
    w = PAPER_GENERATION["authors_code_with_prompt"]
    lines = ["| generated tokens | GO cache: time us / energy uJ | no cache: time us / energy uJ "
             "| no cache / GO cache, whole run: time / energy | decode steps only: time / "
             "energy | paper, 8 tokens (decoder layer, none / KV+GO) |",
             "| ---: | ---: | ---: | ---: | ---: | --- |"]
    for n in sorted({k[0] for k in by}):
        on, off = by[(n, True)], by[(n, False)]
        paper = (f"decode only {p[0]}x / {p[1]}x (authors' code {a[0]}x / {a[1]}x); with the "
                 f"prompt (authors' code) {w[0]}x / {w[1]}x" if n == 8 else "")
        lines.append(f"| {n} | {on['time_us']:.1f} / {on['energy_uj']:.1f} | "
                     f"{off['time_us']:.1f} / {off['energy_uj']:.1f} | "
                     f"{off['time_us'] / on['time_us']:.2f}x / "
                     f"{off['energy_uj'] / on['energy_uj']:.2f}x | "
                     f"{on['go_cache_speedup']:.1f}x / {on['go_cache_energy_ratio']:.1f}x | "
                     f"{paper} |")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "build" / "sweeps")
    ap.add_argument("--markdown", action="store_true", help="print the tables only")
    args = ap.parse_args()
    results = {}
    for name in ("paper-grouping", "paper-generation"):
        t = time.monotonic()
        s = run_sweep(SWEEPS / f"{name}.yaml", args.out / name, workers=args.workers,
                      sim="model", progress=False, force=True)
        results[name] = (rows(args.out / name), time.monotonic() - t, s["counts"])
    for name, make in (("paper-grouping", grouping_table), ("paper-generation",
                                                           generation_table)):
        table, wall, counts = results[name]
        if not args.markdown:
            print(f"\n{name}: {len(table)} points, {counts}, {wall:.1f} s wall "
                  f"(plots: {args.out / name}/pareto.png, axes.png)")
        print("\n".join(make(table)))


if __name__ == "__main__":
    main()
