"""The timing level's resource estimate (``moepim.sim.logic_estimate``) against Yosys, side by
side in one process, on layers the fit (``configs/hw/logic-estimate.yaml``) never saw: the
estimated and synthesised logic transistors and memory bits, their relative error, and the
wall time of each (the estimate constructs the layer's objects; Yosys exports the Verilog and
synthesises it, cached by Verilog digest, so a second run of this script times the cache).

    python benchmarks/logic_estimate.py
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

from moepim.sim.config import REPO_ROOT
from moepim.sim.digital import component_area
from moepim.sim.logic_estimate import design_component, estimate_layer_logic, load_coefficients

EXP = REPO_ROOT / "configs" / "experiments"
# held out: none of these is among the fit's designs
HELD_OUT = [
    ("layer-swiglu-small.yaml", {"workload.grouping": "U2", "layer.lanes": 32}),
    ("layer-small.yaml", {"layer.lanes": 16, "workload.grouping": "U4"}),
    ("default.yaml", {"model.n_experts": 8}),
    ("default.yaml", {"workload.grouping": "U1", "layer.lanes": 8}),
]


def main() -> None:
    fit = load_coefficients()
    print(f"fit: {len(fit['fit_designs'])} designs, largest residual "
          f"{fit['max_relative_error']:.1%}")
    print("| design | estimate (transistors) | Yosys | error | memory bits est / Yosys | "
          "estimate s | Yosys s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    worst = 0.0
    for base, over in HELD_OUT:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            exp, dut = design_component(EXP / base, over, Path(tmp))
            est = estimate_layer_logic(dut, exp.tech, coefficients=fit)
            t_est = time.perf_counter() - t0
            t0 = time.perf_counter()
            synth = component_area(dut, "moe_layer", exp.tech, sim="icarus")
            t_syn = time.perf_counter() - t0
        err = est["transistors"] / synth["transistors"] - 1
        worst = max(worst, abs(err))
        name = base.removesuffix(".yaml") + "".join(f" {k}={v}" for k, v in over.items())
        print(f"| {name} | {est['transistors']:,} | {synth['transistors']:,} | {err:+.1%} | "
              f"{est['memory_bits']:,} / {synth['memory_bits']:,} | {t_est:.2f} | "
              f"{t_syn:.1f} |", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"largest held-out error {worst:.1%}; peak memory {peak:.0f} MB")


if __name__ == "__main__":
    main()
