"""The grouping study in two regimes, from the schedule and the layer's cycle formula
(``moepim.models.schedule``, ``moepim.spec.timing.compute_cycles``; the tests check the formula
against the RTL for every window): the default workload's expert-choice routing (every expert
takes exactly C tokens: no imbalance) and the primary paper's token-choice loads
(``configs/traces/paper-regime.npy``), each at ``layer.lanes`` 32 and 256.

    python benchmarks/paper_regime.py [--markdown] [--tokens 32]

Cycles are those of the window's timestamps: a timestamp with ``n`` distinct tokens takes
``n * 2 * d_model/lanes + job_latency + 5`` cycles, ``job_latency = 2 * mvm_latency +
ceil(d_ff/lanes) + 2`` (LLaMA-MoE 4/16 on 256x256 tiles, 32 8-bit ADCs: mvm_latency 68).
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from moepim.models.grouping import make_groups
from moepim.models.schedule import schedule
from moepim.models.traces import largest_group_loads, read_trace
from moepim.sim.config import REPO_ROOT, load_experiment
from moepim.spec.timing import compute_cycles

GROUPINGS = ("U1", "U2", "S2", "U4", "S4")
POLICIES = ("single_token", "compact", "reschedule")
LANES = (32, 128, 256)
TRACE = REPO_ROOT / "configs" / "traces" / "paper-regime.npy"
DEFAULT = REPO_ROOT / "configs" / "experiments" / "default.yaml"


def expert_choice_mask(n_tokens: int) -> np.ndarray:
    """The default run's prompt routing (expert choice on the crossbar-computed gate)."""
    from moepim.models.pim import CrossbarMatmul
    from moepim.models.workload import make_workload

    exp = load_experiment(DEFAULT)
    wl = make_workload(exp.model, n_prompt=n_tokens, seed=exp.workload.seed,
                       matmul=CrossbarMatmul(exp.tile.spec()))
    return wl.routing.mask[:n_tokens].astype(bool)


def study(mask: np.ndarray, *, d_model: int, d_ff: int, mvm_latency: int) -> list[dict]:
    rows = []
    loads = mask.sum(axis=0)
    for grouping in GROUPINGS:
        groups = make_groups(grouping, mask.shape[1], loads)
        for policy in POLICIES:
            s = schedule(mask, groups, policy)
            row = {"grouping": grouping, "policy": policy, "timestamps": s.timestamps,
                   "tokens_loaded": s.tokens_loaded}
            for lanes in LANES:
                job = 2 * mvm_latency + math.ceil(d_ff / lanes) + 2
                row[f"cycles_lanes{lanes}"] = compute_cycles(s.loads_per_timestamp,
                                                             d_model // lanes, job)
            rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=32, help="prompt window (tokens)")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    exp = load_experiment(DEFAULT)
    m, t = exp.model, exp.tile
    mvm_latency = t.input_bits * (t.n_columns // t.n_adcs) + 4
    tc = read_trace(TRACE, n_experts=m.n_experts)[0, :args.tokens].astype(bool)
    ec = expert_choice_mask(args.tokens)
    print(f"largest group load / tokens, paper-regime trace (first {args.tokens} tokens): "
          + ", ".join(f"{g} {v / args.tokens:.4f}"
                      for g, v in largest_group_loads(tc.sum(0), GROUPINGS).items()))
    header = ["regime", "grouping", "policy", "timestamps", "tokens loaded",
              *[f"cycles, lanes {n}" for n in LANES]]
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("| " + " | ".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + " |")
    else:
        print("  ".join(header))
    for name, mask in (("expert choice", ec), ("paper's token-choice loads", tc)):
        for r in study(mask, d_model=m.d_model, d_ff=m.d_ff, mvm_latency=mvm_latency):
            cells = [name, r["grouping"], r["policy"], str(r["timestamps"]),
                     str(r["tokens_loaded"]), *[f"{r[f'cycles_lanes{n}']:,}" for n in LANES]]
            print(("| " + " | ".join(cells) + " |") if args.markdown else "  ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
