"""The MoE layer run: workload -> routing -> grouping -> schedule -> RTL -> checked report data.

Steps (``run_layer``):

1. The workload (``moepim.models.workload``) with the accelerator's crossbar arithmetic as the
   golden (``moepim.models.pim.CrossbarMatmul``): routing, gate weights and integer outputs.
2. Grouping (``U<n>``/``S<n>``/explicit; sorted groups take the loads of the prompt window or
   of a profile trace) and, per window, the schedule of the configured policy.
3. Windows: the prompt (prefill), then one per generated token. With the GO cache a decode
   window holds the new token only (its expert choice comes from the cached scores of earlier
   tokens); without it, the whole prefix is recomputed (routing over all tokens, every
   selected (token, expert) job executed again).
4. The hardware (``moepim.hw.MoELayerAccelerator``) runs the windows under Verilator, Icarus;
   its outputs are checked against the golden for every token of every window, and its
   cycles against the schedule's formula (``moepim.models.pim.window_cycles``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from moepim.hw.moe_layer import MoELayerAccelerator
from moepim.models.moe import Routing
from moepim.models.pim import bank_image, window_cycles
from moepim.models.quant import moe_forward_int, route_int
from moepim.models.routing import expert_choice_capacity, expert_choice_mask
from moepim.models.schedule import schedule
from moepim.models.tile import TileShape

__all__ = ["LayerSpec", "Window", "make_component", "prepare_windows", "write_bank_images", "bank_images",
           "bench_args", "check_windows"]


@dataclass(frozen=True)
class LayerSpec:
    """Everything that sizes the hardware (the build key) besides the tile."""

    d_model: int
    d_ff: int
    n_experts: int
    n_groups: int
    group_size: int
    n_tokens: int
    lanes: int
    gate_bits: int
    multiplier_bits: int


@dataclass
class Window:
    kind: str                       # "prefill" or "decode"
    step: int                       # decode step (0 for the prompt)
    x: np.ndarray                   # (tokens, d_model) integer inputs of the window
    mask: np.ndarray                # (tokens, experts) selection
    weights: np.ndarray             # (tokens, experts) gate weights
    golden: np.ndarray              # (tokens, d_model) expected outputs
    sched: object = None            # moepim.models.schedule.Schedule
    jobs: list = field(default_factory=list)


def make_component(spec: LayerSpec, tile_kwargs: dict) -> MoELayerAccelerator:
    dut = MoELayerAccelerator(
        d_model=spec.d_model, d_ff=spec.d_ff, n_experts=spec.n_experts, n_groups=spec.n_groups,
        group_size=spec.group_size, n_tokens=spec.n_tokens, lanes=spec.lanes,
        gate_bits=spec.gate_bits, multiplier_bits=spec.multiplier_bits, **tile_kwargs)
    dut._MustUse__silence = True        # a cached build (keyed by parameters) never elaborates it
    return dut


SHIFT_MAX = 31          # moepim.hw.expert_engine.SHIFT_BITS = 5


def _shift(rq, name: str) -> int:
    if rq.shift > SHIFT_MAX:
        raise ValueError(f"requantisation {name} needs a shift of {rq.shift}; the hardware "
                         f"takes 0..{SHIFT_MAX} (raise multiplier_bits' headroom or rescale)")
    return rq.shift


def _jobs(sched, groups, weights, ql) -> list:
    jobs = []
    for g, plan in enumerate(sched.plan()):
        for tok, exp, idle in plan:
            up, down = ql.requant[f"experts.{exp}.up"], ql.requant[f"experts.{exp}.down"]
            jobs.append([g, tok, exp, idle, {
                "slot": groups[g].index(exp), "gate": int(weights[tok, exp]),
                "up_mult": up.mult, "up_shift": _shift(up, f"experts.{exp}.up"),
                "down_mult": down.mult, "down_shift": _shift(down, f"experts.{exp}.down")}])
    return jobs


def prepare_windows(wl, groups, policy: str, *, go_cache: bool, matmul,
                    golden: str = "all") -> list[Window]:
    """The prompt window and one window per generated token (see the module docstring).

    ``golden="last"``: for the no-cache windows compute only the new token's golden output
    (rows of earlier tokens are zero): enough for the GO-cache check and the cycle formula
    when those windows are not simulated."""
    cfg, ql, P = wl.cfg, wl.quant, wl.n_prompt
    r = wl.routing
    windows = [Window("prefill", 0, wl.x_q[:P], r.mask[:P], r.weights[:P], wl.y_q[:P])]
    for step in range(wl.n_generate):
        t = P + step
        if go_cache:
            windows.append(Window("decode", step + 1, wl.x_q[t:t + 1], r.mask[t:t + 1],
                                  r.weights[t:t + 1], wl.y_q[t:t + 1]))
            continue
        # no cache: every earlier token's hidden state and routing recomputed
        x = wl.x_q[:t + 1]
        if cfg.router.kind == "expert_choice":
            mask = expert_choice_mask(r.scores[:t + 1], expert_choice_capacity(
                t + 1, cfg.n_experts, cfg.router.ec_capacity_factor))
        else:
            mask = r.mask[:t + 1]
        routing = route_int(x, ql, mask=mask, matmul=matmul)
        if golden == "last":
            last = Routing(*(f[-1:] for f in (routing.mask, routing.weights, routing.dropped,
                                                routing.scores)))
            y = np.zeros(x.shape, dtype=np.int64)
            y[-1:], _ = moe_forward_int(x[-1:], ql, routing=last, matmul=matmul)
        else:
            y, _ = moe_forward_int(x, ql, routing=routing, matmul=matmul)
        windows.append(Window("decode", step + 1, x, routing.mask, routing.weights, y))
    for w in windows:
        w.sched = schedule(w.mask, groups, policy)
        w.jobs = _jobs(w.sched, groups, w.weights, ql)
    return windows


def bank_images(wl, groups, spec: LayerSpec, shape: TileShape) -> list[tuple[str, np.ndarray]]:
    """Per bank, its plusarg name and cell image: every group's up and down matrices."""
    t = wl.quant.tensors
    images = []
    for g, members in enumerate(groups):
        for k, (name, n_in, n_out) in enumerate((("up", spec.d_model, spec.d_ff),
                                                 ("down", spec.d_ff, spec.d_model))):
            images.append((f"MOEPIM_BANK{2 * g + k}", bank_image(
                [t[f"experts.{e}.{name}.weight"] for e in members], spec.group_size, n_in,
                n_out, shape)))
    return images


def write_bank_images(folder: Path, wl, groups, spec: LayerSpec, shape: TileShape) -> list[str]:
    """Write the cell images into ``folder``; return the plusargs naming them."""
    args = []
    for name, image in bank_images(wl, groups, spec, shape):
        path = folder / f"{name}.bin"
        image.tofile(path)
        args.append(f"+{name}={path}")
    return args


def bench_args(windows: list[Window], spec: LayerSpec, ql, *, gap_p=0.0, stall_p=0.0,
               seed=0, progress=False) -> dict:
    combine = ql.requant["combine"]
    return {"windows": [{"tokens": w.x.tolist(), "jobs": w.jobs, "n_groups": spec.n_groups}
                        for w in windows],
            "lanes": spec.lanes, "act_bits": ql.cfg.quant.act_bits,
            "combine": [combine.mult, _shift(combine, "combine")], "gap_p": gap_p, "stall_p": stall_p,
            "seed": seed, "progress": progress}


def check_windows(windows: list[Window], results: list[dict], dut, restarts=()) -> dict:
    """Outputs vs golden and cycles vs the formula, per window. The results' counters are
    cumulative within a simulation; ``restarts``: indices of windows that begin a new one."""
    mismatches, per_window = [], []
    prev = {}
    for i, (w, res) in enumerate(zip(windows, results)):
        if i in restarts:
            prev = {}
        now = res["counters"]
        delta = {k: (v - prev.get(k, 0) if not isinstance(v, list) else
                     [a - b for a, b in zip(v, prev.get(k, [0] * len(v)))])
                 for k, v in now.items()}
        prev = now
        got = np.asarray(res["outputs"], dtype=np.int64)
        bad = np.argwhere(got != w.golden)
        for tok, col in bad[:16]:
            mismatches.append({"window": i, "token": int(tok), "index": int(col),
                               "expected": int(w.golden[tok, col]), "got": int(got[tok, col])})
        expected_cycles = window_cycles(w.sched.loads_per_slot, blocks=dut.blocks,
                                        job_latency=dut.job_latency)
        per_window.append({"kind": w.kind, "step": w.step, "tokens": len(w.x),
                           "jobs": len(w.jobs), "timestamps": w.sched.timestamps,
                           "tokens_loaded": w.sched.tokens_loaded,
                           "compute_cycles": delta["cycles"], "counters": delta,
                           "expected_compute_cycles": expected_cycles,
                           "cycles": res["cycles"], "mismatching_values": int(len(bad))})
    return {"mismatches": mismatches, "windows": per_window}
