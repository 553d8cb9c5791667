"""The timing level against the RTL on one experiment (default: the full-size main job), side by
side in one process: wall time of ``--sim model``, of a cached Verilator run of the same
config (a first Verilator run builds it if needed, not timed), of the golden model alone, and
whether cycles and every counter agree.

    python benchmarks/timing_speed.py [CONFIG]
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import tempfile
import time
from pathlib import Path

from moepim.models.pim import CrossbarMatmul
from moepim.models.tile import TileShape
from moepim.models.workload import make_workload
from moepim.sim.config import REPO_ROOT, load_experiment
from moepim.sim.layer_run import run_layer_experiment

DEFAULT = REPO_ROOT / "configs" / "experiments" / "default.yaml"


def timed_run(exp, sim, tmp: Path, name: str):
    out = tmp / name
    out.mkdir()
    t = time.monotonic()
    report = run_layer_experiment(exp, sim=sim, out_folder=out)
    return report, time.monotonic() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", nargs="?", type=Path, default=DEFAULT)
    args = ap.parse_args()
    exp = load_experiment(args.config)
    exp = dataclasses.replace(exp, workload=dataclasses.replace(
        exp.workload, input_gaps=0.0, backpressure=0.0))
    print(f"{args.config.name}: {exp.model.name}, {exp.workload.n_prompt} + "
          f"{exp.workload.n_generate} tokens, {exp.workload.grouping}, {exp.workload.policy}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _, cold = timed_run(exp, "verilator", tmp, "warm")         # builds when needed
        rtl, rtl_s = timed_run(exp, "verilator", tmp, "rtl")
        model, model_s = timed_run(exp, "model", tmp, "model")
    wl = exp.workload
    t = time.monotonic()
    make_workload(exp.model, n_prompt=wl.n_prompt, n_generate=wl.n_generate, seed=wl.seed,
                  matmul=CrossbarMatmul(TileShape(**exp.tile.shape_kwargs())))
    golden_s = time.monotonic() - t
    same = (model["cycles"] == rtl["cycles"] and all(
        a["counters"] == b["counters"] and a["cycles"] == b["cycles"]
        for a, b in zip(model["windows"], rtl["windows"])))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{'what':34} {'wall s':>8}")
    print(f"{'verilator, first run (build if cold)':34} {cold:8.1f}")
    print(f"{'verilator, cached build':34} {rtl_s:8.1f}")
    print(f"{'timing level (--sim model)':34} {model_s:8.1f}")
    print(f"{'golden model alone (the floor)':34} {golden_s:8.1f}")
    print(f"speed-up over cached Verilator: {rtl_s / model_s:.1f}x; over a cold run: "
          f"{cold / model_s:.1f}x; cycles {model['cycles']} vs {rtl['cycles']}; every window's "
          f"cycles and counters equal: {same}; peak memory {peak:.2f} GB")
    if not same:
        raise SystemExit("the timing level differs from the RTL")


if __name__ == "__main__":
    main()
