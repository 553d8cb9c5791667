"""Speed of the full-size tile under Verilator, Icarus and Amaranth's simulator, side by side.

    python benchmarks/tile_speed.py [--config configs/experiments/tile.yaml] [--n-mvms 16]

One seeded scenario (the config's tile: 256x256 crossbars, 8-bit weights and inputs, two
crossbars sharing 32 ADCs) runs in this one process under each simulator; every run is checked
bit-exact against the golden model. Printed per simulator: build time (cold or cached),
simulation wall time, MVMs/s, simulated cycles/s and peak memory. The golden model's own
throughput on the same MVMs is the floor everything is compared with.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import time
from pathlib import Path

from moepim.models.tile import tile_mvm
from moepim.sim.config import REPO_ROOT, load_experiment
from moepim.sim.tile_run import check_outputs, make_scenario, run_scenario


def _peak_mb() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path,
                   default=REPO_ROOT / "configs" / "experiments" / "tile.yaml")
    p.add_argument("--n-mvms", type=int, default=16)
    p.add_argument("--sims", default="verilator,icarus,amaranth")
    args = p.parse_args(argv)

    exp = load_experiment(args.config)
    exp = dataclasses.replace(exp, workload=dataclasses.replace(exp.workload,
                                                                n_mvms=args.n_mvms))
    sc = make_scenario(exp)
    t = exp.tile
    print(f"tile: {t.n_rows}x{t.n_columns}, {t.bits_per_cell}-bit cells, {t.weight_bits}-bit "
          f"weights, {t.input_bits}-bit inputs, {t.n_adcs} ADCs of {t.adc_bits} bits, "
          f"group_size {t.group_size}, core {t.core}; {len(sc.xs)} MVMs")

    t0 = time.perf_counter()
    reps = 0
    while time.perf_counter() - t0 < 1.0:
        for k in range(len(sc.xs)):
            tile_mvm(sc.xs[k], sc.weights[sc.xbar[k]], **t.shape_kwargs())
        reps += 1
    golden_s = (time.perf_counter() - t0) / reps
    print(f"golden model (floor): {len(sc.xs) / golden_s:12.0f} MVMs/s")

    header = (f"{'simulator':10} {'build_s':>8} {'cached':>6} {'sim_s':>8} {'mvm_s':>8} "
              f"{'MVMs/s':>10} {'cycles':>8} {'cycles/s':>10} {'vs golden':>10} {'peak MB':>8} "
              "exact")
    print(header)
    ok = True
    for sim in args.sims.split(","):
        run = run_scenario(exp, sc, sim)
        check = check_outputs(exp, sc, run)
        ok &= check["golden_match"]
        own, children = _peak_mb()
        peak = own if sim == "amaranth" else max(own, children)
        mvms_s = len(sc.xs) / run.mvm_wall_s
        print(f"{sim:10} {run.build.get('build_s', 0.0):8.1f} {str(run.build.get('cached')):>6} "
              f"{run.sim_s:8.2f} {run.mvm_wall_s:8.2f} {mvms_s:10.1f} {run.cycles:8d} "
              f"{run.cycles / run.mvm_wall_s:10.0f} {mvms_s * golden_s / len(sc.xs):9.4f}x "
              f"{peak:8.0f} {check['golden_match']}", flush=True)
    print("sim_s: the whole simulation incl. start-up and weight programming "
          f"({sc.weights.shape[0] * sc.weights.shape[1]} row writes); mvm_s, MVMs/s, cycles/s: "
          "the MVM phase only; vs golden: MVMs/s relative to the golden model's; peak MB: the "
          "Python process for amaranth, the largest process so far otherwise.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
