"""Speed of the main job: the default full-size MoE-layer experiment, in one process.

Prints, side by side:
* the golden integer model alone (workload, crossbar-exact outputs of every window, GO-cache
  and no-cache windows): the floor any simulator of this workload pays;
* the whole ``moepim run`` path (golden + RTL under Verilator + checks + report), with the
  build state (cold or cached), its simulation time and cycles/s;
* peak memory of this process and of the simulator child.

Targets (issue 5): cached <= 60 s, cold build <= 5 min, peak memory <= 4 GB.

    python benchmarks/layer_speed.py [CONFIG] [--sim verilator|icarus]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

from moepim.models.grouping import make_groups
from moepim.models.pim import CrossbarMatmul
from moepim.models.workload import make_workload
from moepim.sim.build import default_build_root
from moepim.sim.config import REPO_ROOT, load_experiment
from moepim.sim.layer_run import run_layer_experiment
from moepim.sim.moe_run import layer_groups, prepare_windows


def golden_only(exp) -> float:
    t0 = time.monotonic()
    wl_cfg = exp.workload
    mm = CrossbarMatmul(exp.tile.spec())
    # the fitted ADC windows from the run's cache, as a cached run reads them
    wl = make_workload(exp.model, n_prompt=wl_cfg.n_prompt, n_generate=wl_cfg.n_generate,
                       seed=wl_cfg.seed, matmul=mm,
                       calibration_cache=default_build_root() / "cache" / "calibration")
    groups = layer_groups(make_groups(wl_cfg.grouping, exp.model.n_experts,
                                      wl.routing.mask[:wl_cfg.n_prompt].sum(0)), exp.model)
    prepare_windows(wl, groups, wl_cfg.policy, go_cache=wl_cfg.go_cache, matmul=mm)
    if wl_cfg.go_cache and wl_cfg.no_cache != "off" and \
            exp.model.router.kind == "expert_choice":
        prepare_windows(wl, groups, wl_cfg.policy, go_cache=False, matmul=mm,
                        golden="all" if wl_cfg.no_cache == "simulate" else "last")
    return time.monotonic() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?",
                    default=REPO_ROOT / "configs" / "experiments" / "default.yaml")
    ap.add_argument("--sim", default="verilator")
    args = ap.parse_args(argv)
    exp = load_experiment(args.config)

    g = golden_only(exp)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        report = run_layer_experiment(exp, sim=args.sim, out_folder=Path(tmp),
                                      progress=lambda m: print(f"  {m}", file=sys.stderr))
        wall = time.monotonic() - t0
    b = report["build"]
    sim_cycles = sum(w["cycles"] for w in report["windows"])
    self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"config: {args.config}")
    print(f"golden integer model alone (floor): {g:8.1f} s")
    print(f"moepim run ({args.sim}, build {'cached' if b['cached'] else 'cold'}): "
          f"{wall:8.1f} s wall  (build {b.get('build_s', 0):.1f} s, simulation "
          f"{b.get('sim_s', 0):.1f} s, Yosys area {b.get('synth_s', 0):.1f} s: "
          f"{'cached' if b.get('synth_s', 0) < 1 else 'cold'})")
    print(f"simulated cycles: {sim_cycles}  ->  {sim_cycles / max(b.get('sim_s', 1e-9), 1e-9):,.0f}"
          " cycles/s of simulation")
    print(f"bit-exact: {report['golden_match']}; cycle formula: "
          f"{report['cycles_match_formula']}; GO cache exact: {report['go_cache_exact']}")
    print(f"peak memory: this process {self_mb:.0f} MB, simulator {child_mb:.0f} MB "
          f"(target <= 4096 MB)")
    cached = b["cached"] and b.get("synth_s", 0) < 1
    target = 60 if cached else 300
    print(f"target ({'cached' if cached else 'cold'}): <= {target} s -> "
          f"{'met' if wall <= target else 'NOT met'}")
    return 0 if report["golden_match"] else 1


if __name__ == "__main__":
    sys.exit(main())
