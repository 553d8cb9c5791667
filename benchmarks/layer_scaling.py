"""How MoE-layer run time grows with the number of experts and the prompt length.

For each point the default experiment is modified (``n_experts``; ``n_prompt`` with no
generated tokens) and run end to end in this process; printed per point: build state and time,
simulation time, Yosys time (the digital-area estimate; cached per design), wall time,
simulated cycles, golden-model time, and whether the run was bit-exact.
Every distinct expert count is a new hardware build (cold the first time). Switching activity
is off unless ``--switching-activity`` (this measures the simulator, not the energy model).

    python benchmarks/layer_scaling.py [--experts 4 8 16 64] [--prompts 32 128 512]
                                       [--d-model N] [--lanes N] [--switching-activity]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

from moepim.sim.config import REPO_ROOT, load_experiment
from moepim.sim.layer_run import run_layer_experiment

sys.path.insert(0, str(Path(__file__).parent))
from layer_speed import golden_only  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=REPO_ROOT / "configs" / "experiments" / "default.yaml")
    ap.add_argument("--experts", type=int, nargs="+", default=[4, 8, 16, 64])
    ap.add_argument("--prompts", type=int, nargs="+", default=[32, 128, 512])
    ap.add_argument("--d-model", type=int, default=None, help="override d_model (smaller runs)")
    ap.add_argument("--lanes", type=int, default=None)
    ap.add_argument("--switching-activity", action="store_true",
                    help="also record SAIF toggles (a traced build: slower build and run)")
    args = ap.parse_args(argv)
    base = load_experiment(args.config)
    print(f"{'experts':>7} {'prompt':>6} {'build':>6} {'build_s':>8} {'sim_s':>8} "
          f"{'synth_s':>8} {'wall_s':>8} {'golden_s':>8} {'cycles':>9} exact")
    for n_exp in args.experts:
        for n_prompt in args.prompts:
            m = dataclasses.replace(base.model, n_experts=n_exp,
                                    d_model=args.d_model or base.model.d_model)
            layer = dataclasses.replace(base.layer, lanes=args.lanes or base.layer.lanes,
                                        switching_activity=args.switching_activity)
            wl = dataclasses.replace(base.workload, n_prompt=n_prompt, n_generate=0)
            exp = dataclasses.replace(base, model=m, layer=layer, workload=wl,
                                      allow_large=True)
            g = golden_only(exp)
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.monotonic()
                r = run_layer_experiment(exp, sim="verilator", out_folder=Path(tmp))
                wall = time.monotonic() - t0
            b = r["build"]
            print(f"{n_exp:7d} {n_prompt:6d} {'cached' if b['cached'] else 'cold':>6} "
                  f"{b.get('build_s', 0):8.1f} {b.get('sim_s', 0):8.1f} "
                  f"{b.get('synth_s', 0):8.1f} {wall:8.1f} {g:8.1f} "
                  f"{r['cycles']:9d} {r['golden_match']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
