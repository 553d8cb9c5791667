"""Sweep scaling: the same sweep on 1 and 2 local Dask workers, side by side in one process.

Points: the reduced layer (configs/experiments/layer-small.yaml) under 2 groupings x 2
policies x 2 seeds (8 points, 2 hardware builds). The simulator builds are warmed first (a
first sweep into a scratch folder), so both timed sweeps measure running points, not building
them; each timed sweep starts with an empty point cache. Prints wall time per sweep, points
per minute, the speedup of 2 workers over 1 (aim >= 1.7x on 2 cores) and the Dask layer's
overhead per point (worker time not spent inside the runs), and the time of a repeated sweep
(every point from the cache).

    python benchmarks/sweep_scaling.py [--workers 1 2] [--sweep SWEEP.yaml --sim model]

``--sweep``/``--sim``: time a shipped sweep instead (e.g. ``configs/sweeps/paper-grouping.yaml``
on the timing level; the warm-up then computes or reads each worker's golden models, as a first
sweep does).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import yaml

from moepim.sim.config import REPO_ROOT
from moepim.sim.sweep import run_sweep

BASE = REPO_ROOT / "configs" / "experiments" / "layer-small.yaml"
AXES = {"workload.grouping": ["U2", "S2"], "workload.policy": ["compact", "reschedule"],
        "workload.seed": [3, 4], "workload.n_generate": [1], "workload.no_cache": ["off"],
        "layer.switching_activity": [False]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--sweep", type=Path, default=None,
                    help="a sweep file (default: the reduced layer's 8 points)")
    ap.add_argument("--sim", default="verilator", help="simulator of every point")
    args = ap.parse_args()
    root = Path(os.environ.get("MOEPIM_BUILD_ROOT", REPO_ROOT / "build"))
    kw = {"sim": args.sim, "progress": False, "build_root": root}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sweep = args.sweep
        if sweep is None:
            sweep = tmp / "sweep.yaml"
            sweep.write_text(yaml.safe_dump({"version": 1, "kind": "sweep", "base": str(BASE),
                                             "axes": AXES}))
            print(f"sweep: {BASE.name} x {AXES}, --sim {args.sim}")
        else:
            print(f"sweep: {sweep}, --sim {args.sim}")
        t = time.monotonic()
        warm = run_sweep(sweep, tmp / "warm", workers=max(args.workers),
                         cache_dir=tmp / "warm-cache", **kw)
        print(f"warm-up (builds, first runs): {time.monotonic() - t:.1f} s, {warm['counts']}")
        rows = []
        for n in args.workers:
            cache = tmp / f"cache{n}"          # an empty point cache for each timed sweep
            t = time.monotonic()
            s = run_sweep(sweep, tmp / f"w{n}", workers=n, cache_dir=cache, **kw)
            wall = time.monotonic() - t
            rows.append((n, wall, s))
            t = time.monotonic()
            again = run_sweep(sweep, tmp / f"w{n}", workers=n, cache_dir=cache, **kw)
            rows[-1] += (time.monotonic() - t, again["counts"]["cached"])
        print(f"{'workers':>7} {'wall s':>8} {'points/min':>10} {'overhead s/pt':>13} "
              f"{'repeat s':>9} {'cached':>6}")
        for n, wall, s, rep, cached in rows:
            ov = s["dask_overhead_s_per_point"]
            print(f"{n:7d} {wall:8.1f} {60 * s['points'] / wall:10.1f} "
                  f"{ov if ov is not None else float('nan'):13.2f} {rep:9.1f} {cached:6d}")
        if len(rows) >= 2:
            print(f"speedup {rows[-1][0]} vs {rows[0][0]} workers: "
                  f"{rows[0][1] / rows[-1][1]:.2f}x (aim >= 1.7x on 2 cores)")


if __name__ == "__main__":
    main()
