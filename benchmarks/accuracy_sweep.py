"""Accuracy of the analog datapath against its cost, from the golden model only (no RTL).

For every candidate tile (weight encoding x bits per cell x ADC bits x ADC range x rows) the
MoE layer of an experiment's model runs its prompt through ``moepim.models.quant.
moe_forward_int`` with ``moepim.models.pim.CrossbarMatmul`` (the crossbar tiles' exact
arithmetic), and is compared with the exact integer layer (``moepim.models.workload.
datapath_accuracy``: relative L2 error, SNR, routing agreement). Cost per MoE layer (experts
and gate) from the experiment's technology file: crossbars, array + ADC area (every
peripheral set's ADCs; ``group_size`` experts share a set), ADC conversions and their plus
the cells' read energy per token (each token visits ``top_k`` experts on average), and the
MVM latency. Prints a table, writes ``accuracy_sweep.csv`` and ``accuracy_sweep.png``.

    python benchmarks/accuracy_sweep.py [CONFIG] [--out build/accuracy] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

from moepim.models.pim import CrossbarMatmul, tiles_of
from moepim.models.workload import datapath_accuracy, make_workload, with_matmul
from moepim.sim.config import REPO_ROOT, load_experiment
from moepim.spec.tile import TileSpec

ENCODINGS = ("offset", "reference_column", "differential")
BITS_PER_CELL = (1, 2, 4, 8)
ADC_BITS = (4, 5, 6, 7, 8)


def layer_cost(model, shape: TileSpec, tech, group_size: int) -> dict:
    mats = [(model.d_model, model.d_ff), (model.d_ff, model.d_model)]
    if model.ffn == "swiglu":
        mats.append((model.d_model, model.d_ff))
    per_expert = sum(math.prod(tiles_of(i, o, shape)) for i, o in mats)
    gate = math.prod(tiles_of(model.d_model, model.n_experts, shape))
    crossbars = per_expert * model.n_experts + gate
    sets = per_expert * -(-model.n_experts // group_size) + gate
    adc_e = tech.adc_energy_pj[shape.adc_bits].value
    cell_e = tech.cell_read_energy_fj.value * 1e-3
    array_um2 = crossbars * shape.n_rows * shape.n_physical_columns * tech.cell_area_um2.value
    adc_um2 = sets * shape.n_adcs * tech.adc_area_um2[shape.adc_bits].value
    per_mvm_pj = shape.input_bits * (shape.n_lines * adc_e
                                     + shape.n_rows * shape.n_physical_columns * cell_e)
    visits = model.router.top_k * per_expert + gate
    return {"crossbars": crossbars, "area_mm2": (array_um2 + adc_um2) * 1e-6,
            "adc_area_mm2": adc_um2 * 1e-6,
            "conversions_per_token": visits * shape.input_bits * shape.n_lines,
            "energy_nj_per_token": visits * per_mvm_pj * 1e-3,
            "mvm_latency": shape.input_bits * shape.columns_per_adc + 4}


# (encoding, bits per cell, ADC bits, range, rows as a fraction of the configured rows), the
# most telling first: the paper's offset tile, the reference column with one-cell weights, the
# differential encoding around the accurate region, then finer offset slicings (the full
# cross product would be ~200 points of 30-100 s each on 2 cores)
GRID = ([("offset", 8, 8, "fixed", 1),
         ("reference_column", 8, 8, "fixed", 1), ("reference_column", 8, 8, "calibrated", 1),
         ("differential", 2, 8, "fixed", 1)]
        + [("differential", 2, a, "calibrated", 1) for a in (8, 7, 6)]
        + [("differential", 1, a, "calibrated", 1) for a in (7, 6)]
        + [("differential", 4, 8, "calibrated", 1), ("differential", 2, 7, "calibrated", 0.5),
           ("reference_column", 2, 8, "calibrated", 1)]
        + [("offset", b, 8, "fixed", 1) for b in (4, 2)])
QUICK = [("offset", 8, 8, "fixed", 1), ("reference_column", 8, 8, "calibrated", 1),
         ("differential", 2, 7, "calibrated", 1), ("differential", 2, 8, "calibrated", 1)]


def candidates(tile, quick: bool):
    for enc, bpc, adc, rng, rows in (QUICK if quick else GRID):
        yield dict(n_rows=int(tile.n_rows * rows), n_columns=tile.n_columns,
                   bits_per_cell=bpc, weight_bits=tile.weight_bits,
                   input_bits=tile.input_bits, n_adcs=tile.n_adcs, adc_bits=adc,
                   adc_shift=None, weight_encoding=enc, adc_range=rng)


def evaluate(exp, tile: dict, base) -> dict:
    """``base``: the workload (exact integer products) whose weights and inputs every
    candidate reuses."""
    shape = TileSpec(**tile)
    acc = datapath_accuracy(with_matmul(base, CrossbarMatmul(shape)))
    return {**{k: tile[k] for k in ("weight_encoding", "bits_per_cell", "adc_bits",
                                    "adc_range", "n_rows")},
            **acc, **layer_cost(exp.model, shape, exp.tech, exp.tile.group_size
                                if exp.workload is None else _group_size(exp))}


def _group_size(exp) -> int:
    g = exp.workload.grouping
    return int(g[1:]) if isinstance(g, str) and g[1:].isdigit() else exp.tile.group_size


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    markers = {"offset": "x", "reference_column": "s", "differential": "o"}
    for r in rows:
        for ax, key in zip(axes, ("area_mm2", "energy_nj_per_token")):
            snr = min(r["snr_db"], 80.0)
            ax.scatter(r[key], snr, marker=markers[r["weight_encoding"]],
                       c=f"C{r['bits_per_cell'].bit_length() - 1}",
                       alpha=0.9 if r["adc_range"] == "calibrated" else 0.45,
                       s=14 + 6 * (r["adc_bits"] - 4))
    for ax, label in zip(axes, ("MoE-layer array + ADC area (mm2)",
                                "array + ADC energy per token (nJ)")):
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("SNR vs exact integer layer (dB, capped at 80)")
        ax.axhline(40, color="grey", lw=0.8, ls="--")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], ls="", marker=m, color="k", label=e)
               for e, m in markers.items()]
    handles += [plt.Line2D([], [], ls="", marker="o", color=f"C{b.bit_length() - 1}",
                           label=f"{b}-bit cells") for b in BITS_PER_CELL]
    axes[1].legend(handles=handles, fontsize=8, loc="lower right")
    fig.suptitle("Datapath accuracy vs cost (marker size: ADC bits; solid: calibrated range; "
                 "dashed: 40 dB = 1 % error)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?",
                    default=REPO_ROOT / "configs" / "experiments" / "default.yaml")
    ap.add_argument("--out", default="build/accuracy")
    ap.add_argument("--n-prompt", type=int, default=None,
                    help="tokens of the prompt (default: the experiment's)")
    ap.add_argument("--quick", action="store_true",
                    help="four points: the paper's tile and three accurate candidates")
    args = ap.parse_args(argv)
    exp = load_experiment(args.config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n_prompt = args.n_prompt or exp.workload.n_prompt
    rows = []
    cols = ("weight_encoding", "bits_per_cell", "adc_bits", "adc_range", "n_rows",
            "relative_l2_error_vs_exact_integer", "snr_db", "routing_agreement", "crossbars",
            "area_mm2", "energy_nj_per_token", "conversions_per_token", "mvm_latency")
    print(" | ".join(cols) + " | s")
    base = make_workload(exp.model, n_prompt=n_prompt, seed=exp.workload.seed)
    for tile in candidates(exp.tile, args.quick):
        t0 = time.monotonic()
        r = evaluate(exp, tile, base)
        rows.append(r)
        print(" | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c])
                         for c in cols) + f" | {time.monotonic() - t0:.1f}", flush=True)
        # written after every point: an interrupted sweep keeps what it measured
        with open(out / "accuracy_sweep.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    plot(rows, out / "accuracy_sweep.png")
    print(f"wrote {out / 'accuracy_sweep.csv'} and {out / 'accuracy_sweep.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
