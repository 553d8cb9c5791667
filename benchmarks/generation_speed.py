"""Speed of the generation experiment (``configs/experiments/generation.yaml``), in one process.

Prints, side by side:
* the golden generation of each mode alone (the floor: the decoder layer's integer model,
  the MoE layer on the tile's crossbar arithmetic, the LM head, every step of the mode);
* the whole ``moepim run`` path with only the ``kv_go`` mode (golden + the MoE layer's RTL
  under Verilator + checks + pricing + report), then with all four modes;
* peak memory of this process and of the simulator children.

Targets (issue 18): the cached KV+GO mode at full size under 60 s; the four-mode experiment
under 3 minutes. A cold build (the first run on a machine) adds the Verilator build and the
Yosys runs of the MoE layer and the decoder units, reported as ``cached: False``.

    python benchmarks/generation_speed.py [CONFIG] [--sim verilator|icarus|model]
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import tempfile
import time
from pathlib import Path

from moepim.models.generation import build_generator, generate
from moepim.models.pim import CrossbarMatmul
from moepim.sim.config import REPO_ROOT, load_experiment
from moepim.sim.generation_run import _prompt, run_decoder_experiment


def golden_per_mode(exp) -> dict:
    """Wall seconds of the generator's set-up and of each mode's golden generation, each
    mode on a fresh crossbar model (no rows memoised by another mode)."""
    out = {}
    wl = exp.workload
    prompt = _prompt(exp)
    t0 = time.monotonic()
    build_generator(exp.model, prompt, wl.seed, matmul=CrossbarMatmul(exp.tile.spec()))
    out["set-up (weights, calibration, LM head)"] = time.monotonic() - t0
    for mode in wl.modes:
        gen = build_generator(exp.model, prompt, wl.seed,
                              matmul=CrossbarMatmul(exp.tile.spec()))
        t0 = time.monotonic()
        generate(gen, prompt, wl.n_generate, mode)
        out[f"golden {mode}"] = time.monotonic() - t0
    return out


def timed_run(exp, sim: str, modes: list[str]) -> tuple[float, dict]:
    exp = dataclasses.replace(exp, workload=dataclasses.replace(exp.workload, modes=modes))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        out.mkdir()
        t0 = time.monotonic()
        report = run_decoder_experiment(exp, sim=sim, out_folder=out, plots=False)
        return time.monotonic() - t0, report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?",
                    default=REPO_ROOT / "configs" / "experiments" / "generation.yaml")
    ap.add_argument("--sim", default="verilator")
    args = ap.parse_args(argv)
    exp = load_experiment(args.config)
    print(f"{args.config}: {exp.model.name}, {exp.workload.n_prompt}-token prompt + "
          f"{exp.workload.n_generate} tokens, sim {args.sim}")
    for name, s in golden_per_mode(exp).items():
        print(f"  {name:42s} {s:8.1f} s")
    wall_kv, r_kv = timed_run(exp, args.sim, ["kv_go"])
    wall_all, r_all = timed_run(exp, args.sim, list(exp.workload.modes))
    for label, wall, r, target in (("moepim run, kv_go only", wall_kv, r_kv, 60),
                                   ("moepim run, all four modes", wall_all, r_all, 180)):
        ok = "within" if wall <= target else "OVER"
        print(f"  {label:42s} {wall:8.1f} s   ({ok} the {target} s target; golden "
              f"{r['wall_s']['golden']:.1f} s, bit-exact: {r['golden_match']})")
    rat = r_all["cache_comparison"]["ratios"].get("none_vs_kv_go")
    if rat:
        print(f"  none / kv_go: {rat['time']:.3f}x time, {rat['energy']:.3f}x energy "
              "(paper 4.2x / 10.1x; the authors' code 4.161x / 10.102x)")
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"  peak memory: this process {me:.0f} MB, largest child {kids:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
