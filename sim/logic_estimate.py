"""A resource estimate of the MoE layer's digital logic and memories, without synthesis.

The timing level (``--sim model``) builds nothing, so a design no RTL run has synthesised
has no Yosys figure. This module estimates one from the layer's component objects (their
constructors only: nothing is elaborated), in the units of ``moepim.sim.synth``:

* **logic transistors** (Yosys's ``stat -tech cmos`` count of the gate flow): a linear model
  in the layer's lane datapaths,

  - ``relu_group_lanes`` / ``swiglu_group_lanes``: per FFN kind, engines x ``lanes``: each
    group's engine (partial-sum trees, requantisations, activation, gate weighting, all
    replicated per lane) with its share of the combine unit's adder tree (one input per
    group and lane; the two are always in proportion, one engine per group, so one feature);
  - ``relu_adder_bits`` / ``swiglu_adder_bits``: per FFN kind, the bits of the engines'
    partial-sum trees (``row_tiles - 1`` adders of the bank's partial-output width, per bank,
    engine and lane): what grows with ``d_model`` and ``d_ff`` over the row tiles (the
    requantisers after the trees widen with them; Yosys's counts grow at different rates for
    the two kinds, hence one feature per kind);
  - ``engines``: the engine instances (control, counters, job register);
  - ``constant``: the layer's control, the scheduler and the routing front end.

  The coefficients are fitted by relative least squares on Yosys runs of layers of every
  FFN, router and shared-expert kind over lanes, groupings and model widths
  (``tools/fit_logic_estimate.py``, which writes ``configs/hw/logic-estimate.yaml`` with the
  residuals it measured); designs far outside them (other bit widths) are extrapolations;
* **memory bits**: counted, not fitted: the token buffer (``n_tokens * d_model * act_bits``),
  the output buffer (``n_tokens * d_model * acc_bits``), the scheduler's job queues
  (``n_groups`` FIFOs of ``depth`` jobs), the expert-choice router's score rows and the GO
  cache's rows (``n_tokens`` resp. ``go_cache_rows`` rows of ``n_experts x score bits``) and the
  route unit's tables.

The estimate is for the timing level's reports (and sweeps) of designs never synthesised;
any RTL run synthesises its design and the timing level then uses that synthesis instead.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import yaml

__all__ = ["FEATURES", "layer_features", "design_component", "estimate_layer_logic", "load_coefficients",
           "COEFFICIENTS_FILE"]

FEATURES = ("relu_group_lanes", "swiglu_group_lanes", "relu_adder_bits", "swiglu_adder_bits",
            "engines", "constant")
COEFFICIENTS_FILE = Path(__file__).resolve().parents[1] / "configs" / "hw" / \
    "logic-estimate.yaml"


def _elem_width(bank) -> int:
    """Width of one partial output of a matrix bank (its ``rd_data``: lanes x row tiles)."""
    return bank.signature.members["rd_data"].shape.elem_shape.elem_shape.width


def _engines(dut) -> list:
    """``(engine, instances)`` of the layer: the routed groups' engine and the shared one."""
    shared = dut.shared_engine
    n_sh = 1 if shared is not None else 0
    return [(dut.engine, dut.n_groups - n_sh)] + ([(shared, 1)] if n_sh else [])


def layer_features(dut) -> dict:
    """The estimate's features and the counted memory bits of a ``MoELayerAccelerator``
    (its constructor's objects; nothing elaborated)."""
    lanes = dut.lanes
    feats = {k: 0 for k in FEATURES}
    for eng, n in _engines(dut):
        feats[f"{eng.ffn}_group_lanes"] += n * lanes
        feats["engines"] += n
        # the partial-sum trees: row_tiles - 1 adders of the bank's partial-output width
        feats[f"{eng.ffn}_adder_bits"] += n * lanes * sum(
            (b.row_tiles - 1) * _elem_width(b) for b in eng.banks.values())
    feats["constant"] = 1
    return {**feats, "memory_bits": _memory_bits(dut)}


def _memory_bits(dut) -> int:
    rows = dut.n_tokens * dut.blocks
    bits = rows * dut.lanes * (dut._act_bits + dut.acc_bits)          # token + output buffer
    sched = dut.scheduler
    job_bits = sched.i_jobs.payload.job.shape().size
    # a buffered FIFO keeps depth - 1 entries in its memory and one in its output register
    bits += dut.n_groups * (sched.depth - 1) * job_bits
    route = dut.route_unit
    if route is not None:
        if route.ec is not None:
            bits += dut.n_tokens * route.ec._row.size
        if route.go is not None:
            bits += route.go.go_cache_rows * route.go.row_bits
        if route.gate_hidden:                   # the tanh table: act_bits codes
            bits += (1 << dut._act_bits) * dut._act_bits
        if route.shared_gate:                   # the sigmoid table: gate weights
            bits += (1 << dut._act_bits) * route.gate_bits
    for eng, n in _engines(dut):
        if eng.ffn == "swiglu":
            bits += n * eng.lut_depth * dut._act_bits
    return int(bits)


def design_component(base: Path, overrides: dict, folder: Path):
    """The experiment ``base`` with ``overrides`` (sweep key paths, written into ``folder``)
    and its layer component (constructed, not elaborated)."""
    from .config import load_experiment
    from .layer_run import layer_spec
    from .moe_run import make_component
    from .sweep import Point, SweepSpec, materialize

    spec = SweepSpec(source=Path(base), base=Path(base), axes={}, zip=[], skip=[])
    exp = load_experiment(materialize(spec, Point(0, dict(overrides), "design"), Path(folder)))
    layer, tile = layer_spec(exp)
    return exp, make_component(layer, tile)


def load_coefficients(path: Path = COEFFICIENTS_FILE) -> dict:
    """The fitted coefficients (transistors per feature unit) and their provenance; read once
    per process and file (a sweep's worker prices many points)."""
    return _load_coefficients(Path(path).resolve())


@cache
def _load_coefficients(path: Path) -> dict:
    from .config import ConfigError

    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(str(path), "file", str(path),
                          f"a readable YAML file ({exc})") from None
    coef = raw.get("transistors_per_unit") if isinstance(raw, dict) else None
    if not isinstance(coef, dict) or set(coef) != set(FEATURES):
        raise ConfigError(str(path), "transistors_per_unit", coef,
                          f"a mapping with exactly the features {', '.join(FEATURES)}")
    for k, v in coef.items():
        if not isinstance(v, (int, float)) or v < 0:
            raise ConfigError(str(path), f"transistors_per_unit.{k}", v,
                              "a number >= 0 (transistors per feature unit)")
    if not isinstance(raw.get("source"), str) or not raw["source"].strip():
        raise ConfigError(str(path), "source", raw.get("source"),
                          "the fit's provenance (tool, Yosys flow, designs)")
    return raw


def estimate_layer_logic(dut, tech, *, coefficients: dict | None = None) -> dict:
    """A synthesis-shaped record (``transistors``, ``memory_bits``, areas in mm2) for the
    layer ``dut``, from the fitted model; ``method`` says it is an estimate and how good."""
    fit = coefficients or load_coefficients()
    feats = layer_features(dut)
    coef = fit["transistors_per_unit"]
    transistors = int(round(sum(coef[k] * feats[k] for k in FEATURES)))
    t, sram = tech.transistor_area_um2, tech.sram_area_um2_per_bit
    logic = transistors * t.value * 1e-6
    memory = feats["memory_bits"] * sram.value * 1e-6
    err = fit.get("max_relative_error")
    return {"top": "moe_layer", "flow": "estimate", "cells": None, "flip_flops": None,
            "transistors": transistors, "memory_bits": feats["memory_bits"],
            "memories": [], "features": {k: feats[k] for k in FEATURES},
            "logic_area_mm2": logic, "memory_area_mm2": memory, "area_mm2": logic + memory,
            "transistor_area_um2": t.value, "source": t.source,
            "sram_area_um2_per_bit": sram.value, "sram_source": sram.source,
            "excluded": [],
            "method": ("resource estimate (not synthesised): logic transistors from a linear "
                       "model of the layer's lane datapaths (engines x lanes per FFN kind, "
                       "partial-sum adder bits, engines, a constant; configs/hw/"
                       f"logic-estimate.yaml) fitted to Yosys runs ({fit['source']}"
                       + (f"; largest relative error over the fit's designs {err:.1%}"
                          if isinstance(err, (int, float)) else "")
                       + "), memory bits counted from the layer's buffers, queues and "
                       "router rows")}


def fit(rows: list[dict]) -> tuple[dict, list[float]]:
    """Least-squares coefficients (clipped at 0, refitted without the clipped features)
    from ``rows`` of features with their synthesised ``transistors``; the relative
    residuals."""
    active = list(FEATURES)
    while True:
        a = np.array([[r[k] for k in active] for r in rows], dtype=float)
        y = np.array([r["transistors"] for r in rows], dtype=float)
        # relative least squares: every design weighs the same whatever its size
        w = 1.0 / y
        sol, *_ = np.linalg.lstsq(a * w[:, None], y * w, rcond=None)
        neg = [k for k, v in zip(active, sol) if v < 0]
        if not neg:
            break
        active = [k for k in active if k not in neg]
    coef = {k: 0.0 for k in FEATURES}
    coef.update({k: float(v) for k, v in zip(active, sol)})
    pred = np.array([sum(coef[k] * r[k] for k in FEATURES) for r in rows])
    return coef, [float(e) for e in (pred - y) / y]
