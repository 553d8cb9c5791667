"""The timing level against the RTL on one experiment (default: the full-size main job), side by
side in one process: wall time of ``--sim model`` and of a cached Verilator run of the same
config (a first Verilator run builds it if needed, not timed), both with the workload's golden
model kept from that first run (``moepim.sim.golden``: in the process), both without plots;
then the timing level with its golden model read from the disk cache (a new process's run), and
the golden model computed from scratch (a workload never run before: the timing level's
floor). Checks that cycles and every counter agree.

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
from moepim.models.workload import make_workload
from moepim.sim import golden
from moepim.sim.build import default_build_root
from moepim.sim.config import REPO_ROOT, load_experiment
from moepim.sim.layer_run import run_layer_experiment

DEFAULT = REPO_ROOT / "configs" / "experiments" / "default.yaml"


def timed_run(exp, sim, tmp: Path, name: str, plots: bool = False):
    out = tmp / name
    out.mkdir()
    t = time.monotonic()
    report = run_layer_experiment(exp, sim=sim, out_folder=out, plots=plots)
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
        _, cold = timed_run(exp, "verilator", tmp, "warm", plots=True)   # builds when needed
        rtl, rtl_s = timed_run(exp, "verilator", tmp, "rtl")
        model, model_s = timed_run(exp, "model", tmp, "model")
        _, plots_s = timed_run(exp, "model", tmp, "model-plots", plots=True)
        golden._KEPT.clear()                 # as a new process: the golden model from disk
        disk, disk_s = timed_run(exp, "model", tmp, "model-disk")
    wl = exp.workload
    t = time.monotonic()
    make_workload(exp.model, n_prompt=wl.n_prompt, n_generate=wl.n_generate, seed=wl.seed,
                  matmul=CrossbarMatmul(exp.tile.spec()),
                  calibration_cache=default_build_root() / "cache" / "calibration")
    golden_s = time.monotonic() - t
    same = all((m["cycles"] == rtl["cycles"] and all(
        a["counters"] == b["counters"] and a["cycles"] == b["cycles"]
        for a, b in zip(m["windows"], rtl["windows"]))) for m in (model, disk))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{'what':58} {'wall s':>8}")
    print(f"{'verilator, first run (build and golden as cached)':58} {cold:8.2f}")
    print(f"{'verilator, cached build (golden kept, no plots)':58} {rtl_s:8.2f}")
    print(f"{'timing level (--sim model; golden kept, no plots)':58} {model_s:8.2f}")
    print(f"{'timing level, with its plots':58} {plots_s:8.2f}")
    print(f"{'timing level, golden read from the disk cache':58} {disk_s:8.2f}")
    print(f"{'golden model computed (a new workload: the floor)':58} {golden_s:8.2f}")
    print(f"speed-up over cached Verilator: {rtl_s / model_s:.0f}x (golden kept), "
          f"{rtl_s / disk_s:.0f}x (golden from disk), {rtl_s / (model_s + golden_s):.1f}x (a "
          f"new workload); cycles {model['cycles']} vs {rtl['cycles']}; every window's cycles "
          f"and counters equal: {same}; peak memory {peak:.2f} GB")
    if not same:
        raise SystemExit("the timing level differs from the RTL")


if __name__ == "__main__":
    main()
