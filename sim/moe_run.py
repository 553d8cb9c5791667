"""The MoE layer run: workload -> routing -> grouping -> schedule -> RTL -> checked report data.

Steps (``run_layer``):

1. The workload (``moepim.models.workload``) with the accelerator's crossbar arithmetic as the
   golden (``moepim.models.pim.CrossbarMatmul``): routing, gate weights and integer outputs.
2. Grouping (``U<n>``/``S<n>``/explicit; sorted groups take the loads of the prompt window or
   of a profile trace) and, per window, the schedule of the configured policy.
3. Windows: the prompt (prefill), then one per generated token. With the GO cache a decode
   window holds the new token only (its expert choice comes from the cached scores of earlier
   tokens); without it, the whole prefix is recomputed (routing over all tokens, every
   selected (token, expert) job executed again). Token-choice routers decide each token
   alone, so their decode windows hold the new token only.
4. The hardware (``moepim.hw.MoELayerAccelerator``) runs the windows under Verilator, Icarus;
   its outputs are checked against the golden for every token of every window, and its
   cycles against the timing model (``moepim.spec.timing``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from moepim.hw.expert_engine import FFN_BANKS, FFN_REQUANTS
from moepim.hw.gate import TABLE_SIGMOID, TABLE_TANH
from moepim.hw.moe_layer import MoELayerAccelerator
from moepim.hw.route_unit import INDEX_MULT_BITS, INDEX_SHIFT_BITS
from moepim.models.moe import Routing
from moepim.models.pim import bank_file_words, bank_image
from moepim.models.quant import moe_forward_int, route_int, shared_gate_int
from moepim.models.routing import capacity_limit, expert_choice_capacity, expert_choice_mask
from moepim.models.schedule import IDLE, schedule
from moepim.spec.layer import LayerSpec
from moepim.spec.tile import TileSpec
from moepim.spec.timing import MODE_CACHED, MODE_HOST, MODE_WINDOW, LayerTiming
from moepim.testbenches.stimulus import (
    LayerJob,
    LayerStimulus,
    LayerWindow,
    RequantConstants,
)

__all__ = ["Window", "make_component", "prepare_windows", "write_bank_images",
           "bank_images", "layer_groups", "lut_writes", "bench_args", "route_counter_names",
           "expected_route_cycles", "check_windows", "expected_compute_cycles",
           "expected_window_cycles"]


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
    shared_jobs: int = 0            # jobs of the shared expert (in ``jobs``)
    # routing on the hardware (``moepim.hw.route_unit``): mode, capacity, GO-cache insert
    route_mode: int = MODE_HOST
    route_cap: int = 0
    go_insert: bool = False
    go_rows_read: int = 0           # cached decode: earlier rows the GO cache scans in SRAM
    go_dram_rows: int = 0           # ... and reads back from DRAM
    dropped: np.ndarray | None = None   # (tokens, experts) selections dropped by capacity

    def expected_routes(self, n_routed: int) -> list[list[int]]:
        """``[token, expert, weight]`` of every selection of the routed experts, sorted."""
        t, e = np.nonzero(self.mask[:, :n_routed])
        return sorted([int(a), int(b), int(self.weights[a, b])] for a, b in zip(t, e))


def make_component(spec: LayerSpec, tile_kwargs: dict) -> MoELayerAccelerator:
    """The layer's component for ``spec`` and the tile's arguments (``layer_spec``: the
    specification's fields and ``counter_bits``)."""
    tile_kwargs = dict(tile_kwargs)
    counter_bits = tile_kwargs.pop("counter_bits")
    dut = MoELayerAccelerator(layer=spec, tile=TileSpec(**tile_kwargs), counter_bits=counter_bits)
    dut._MustUse__silence = True        # a cached build (keyed by parameters) never elaborates it
    return dut


SHIFT_MAX = 31          # moepim.hw.expert_engine.SHIFT_BITS = 5


def _shift(rq, name: str) -> int:
    if rq.shift > SHIFT_MAX:
        raise ValueError(f"requantisation {name} needs a shift of {rq.shift}; the hardware "
                         f"takes 0..{SHIFT_MAX} (raise multiplier_bits' headroom or rescale)")
    return rq.shift


# the engine's bank and requantisation names -> moepim.models.quant's (per expert prefix:
# weights ``<prefix>.<name>.weight``, requantisations ``<prefix>.<name>``)
_MODEL_NAME = {"up": "up", "down": "down", "gate_proj": "gate", "mul": "mul"}


def layer_groups(groups, cfg) -> list[list[int]]:
    """The layer's groups: the routed ``groups``, then the shared expert's own group (expert
    index ``n_experts``) when the model has shared experts (fused into one, as the model's
    ``shared.d_ff`` is their total width)."""
    out = [list(g) for g in groups]
    return out + [[cfg.n_experts]] if cfg.shared.n_shared else out


def _prefix(exp: int, cfg) -> str:
    """Weight/requant/table name prefix of expert ``exp`` (the shared expert: ``shared``)."""
    return "shared" if exp == cfg.n_experts else f"experts.{exp}"


def _jobs(sched, groups, weights, ql) -> list[LayerJob]:
    jobs = []
    for g, plan in enumerate(sched.plan()):
        for tok, exp, idle in plan:
            fields = {"slot": groups[g].index(exp), "gate": int(weights[tok, exp])}
            for name in FFN_REQUANTS[ql.cfg.ffn]:
                key = f"{_prefix(exp, ql.cfg)}.{_MODEL_NAME[name]}"
                rq = ql.requant[key]
                fields[f"{name}_mult"] = rq.mult
                fields[f"{name}_shift"] = _shift(rq, key)
            jobs.append(LayerJob(group=g, token=int(tok), expert=int(exp),
                                 idle_before=int(idle), operands=fields))
    return jobs


def prepare_windows(wl, groups, policy: str, *, go_cache: bool, matmul,
                    golden: str = "all", hw_routing: bool = False,
                    go_cache_rows: int = 0) -> list[Window]:
    """The prompt window and one window per generated token (see the module docstring).
    ``groups``: :func:`layer_groups` (with a shared expert, every token is a job of its group,
    weighted by the shared gate).

    ``golden="last"``: for the no-cache windows compute only the new token's golden output
    (rows of earlier tokens are zero): enough for the GO-cache check and the cycle formula
    when those windows are not simulated.

    ``hw_routing``: the layer routes every window itself (``moepim.hw.route_unit``): a window
    of the expert-choice router over its tokens (the prompt, and with ``go_cache`` its rows
    stored in the GO cache of ``go_cache_rows`` SRAM rows), a generated token decided by the GO cache
    from the earlier rows, a top-k router token by token (with capacity dropping, each
    expert's count carried from window to window: the generated tokens' windows continue the
    prompt's, ``MODE_CACHED``); otherwise the host supplies them."""
    cfg, ql, P = wl.cfg, wl.quant, wl.n_prompt
    rc = cfg.router
    ec = rc.kind == "expert_choice"

    def cap(n):
        if rc.drops:        # the workload's capacity: over the whole sequence (models.workload);
            # an expert takes a token at most once, so a capacity above it drops nothing
            seq = P + wl.n_generate
            return min(seq, capacity_limit(seq, cfg.n_experts, rc.top_k, rc.capacity_factor))
        return expert_choice_capacity(n, cfg.n_experts, rc.ec_capacity_factor) if ec else 0
    r = wl.routing
    route = MODE_WINDOW if hw_routing else MODE_HOST
    windows = [Window("prefill", 0, wl.x_q[:P], r.mask[:P], r.weights[:P], wl.y_q[:P],
                      route_mode=route, route_cap=cap(P), go_insert=hw_routing and go_cache
                      and ec, dropped=r.dropped[:P])]
    for step in range(wl.n_generate):
        t = P + step
        # a token-choice router decides each token alone: nothing to recompute, cache or not
        if go_cache or not ec:
            windows.append(Window(
                "decode", step + 1, wl.x_q[t:t + 1], r.mask[t:t + 1], r.weights[t:t + 1],
                wl.y_q[t:t + 1], route_cap=cap(t + 1), go_rows_read=min(t, go_cache_rows or t),
                go_dram_rows=t - min(t, go_cache_rows or t), dropped=r.dropped[t:t + 1],
                route_mode=MODE_CACHED if hw_routing else MODE_HOST))
            continue
        # no cache: every earlier token's hidden state and routing recomputed
        x = wl.x_q[:t + 1]
        mask = expert_choice_mask(r.scores[:t + 1], expert_choice_capacity(
            t + 1, cfg.n_experts, cfg.router.ec_capacity_factor))
        routing = route_int(x, ql, mask=mask, matmul=matmul)
        if golden == "last":
            last = Routing(*(f[-1:] for f in (routing.mask, routing.weights, routing.dropped,
                                                routing.scores)))
            y = np.zeros(x.shape, dtype=np.int64)
            y[-1:], _ = moe_forward_int(x[-1:], ql, routing=last, matmul=matmul)
        else:
            y, _ = moe_forward_int(x, ql, routing=routing, matmul=matmul)
        windows.append(Window("decode", step + 1, x, routing.mask, routing.weights, y,
                              route_mode=route, route_cap=cap(t + 1)))
    for w in windows:
        if cfg.shared.n_shared:
            w.mask = np.hstack([w.mask, np.ones((len(w.x), 1), dtype=bool)])
            w.weights = np.hstack([w.weights, shared_gate_int(w.x, ql, matmul)[:, None]])
            w.shared_jobs = len(w.x)
        w.sched = schedule(w.mask, groups, policy)
        w.jobs = _jobs(w.sched, groups, w.weights, ql)
    return windows


def _bank_images(wl, groups, spec: LayerSpec, shape: TileSpec, matmul=None):
    """``(plusarg name, cell image, slots)`` of every bank (see :func:`bank_images`)."""
    t, cfg = wl.quant.tensors, wl.cfg
    names = FFN_BANKS[spec.ffn]
    calibrated = shape.adc_range == "calibrated"
    if calibrated and matmul is None:
        raise ValueError("adc_range 'calibrated': the bank images need the calibrated "
                         "CrossbarMatmul (its ADC windows)")

    def windows(ws):
        return [matmul.shift_for(w) for w in ws] if calibrated else None

    for g, members in enumerate(groups):
        shared = members == [cfg.n_experts]
        for k, name in enumerate(names):
            ws = [t[f"{_prefix(e, cfg)}.{_MODEL_NAME[name]}.weight"] for e in members]
            n_in, n_out = ws[0].shape
            slots = 1 if shared else spec.group_size
            yield (f"MOEPIM_BANK{len(names) * g + k}",
                   bank_image(ws, slots, n_in, n_out, shape, windows(ws), _same(matmul, shape)),
                   slots)
    if spec.router is not None:
        # the gate's crossbars (routed experts' columns, then the shared gate's), after every
        # group's banks; an MLP gate's two layers one after the other
        gates = [["gate.fc1.weight"], ["gate.fc2.weight"]] if spec.gate_hidden \
            else [["gate.weight"] + (["shared_gate.weight"] if spec.shared_gate else [])]
        for k, columns in enumerate(gates):
            if calibrated and len(columns) > 1:
                raise ValueError("adc_range 'calibrated' with a sigmoid shared gate: the gate "
                                 "bank would need one window for two matrices (not supported)")
            w = np.hstack([t[name] for name in columns]) if len(columns) > 1 else t[columns[0]]
            yield (f"MOEPIM_BANK{len(names) * len(groups) + k}",
                   bank_image([w], 1, w.shape[0], w.shape[1], shape, windows([w]),
                              _same(matmul, shape)), 1)


def _same(matmul, shape):
    """``matmul`` when its cells are this bank's (same tile arithmetic), else ``None``."""
    mine = getattr(matmul, "shape", None)
    return matmul if mine is not None and mine.arithmetic == shape.arithmetic else None


def bank_images(wl, groups, spec: LayerSpec, shape: TileSpec,
                matmul=None) -> list[tuple[str, np.ndarray]]:
    """Per bank, its plusarg name and cell image: every group's matrices, bank ids as the
    layer numbers them (``n_banks*g + k``, ``k`` over the engine's bank names). With a
    calibrated ADC range the images carry each slot's window from ``matmul``."""
    return [(name, image) for name, image, _ in _bank_images(wl, groups, spec, shape, matmul)]


def lut_writes(wl, groups, spec: LayerSpec) -> list[list[int]]:
    """The SiLU table writes of a SwiGLU layer, ``[group, addr, value]`` (the layout of
    ``moepim.hw.expert_engine``: ``slot * 2**act_bits + code index``); none for ReLU."""
    if spec.ffn != "swiglu":
        return []
    luts, cfg = wl.quant.luts, wl.cfg
    return [[g, k * len(luts[f"{_prefix(e, cfg)}.silu"]) + i, int(v)]
            for g, members in enumerate(groups) for k, e in enumerate(members)
            for i, v in enumerate(luts[f"{_prefix(e, cfg)}.silu"])]


def write_bank_images(folder: Path, wl, groups, spec: LayerSpec, shape: TileSpec,
                      matmul=None) -> list[str]:
    """Write the cell images into ``folder``; return the plusargs naming them."""
    args = []
    for name, image, slots in _bank_images(wl, groups, spec, shape, matmul):
        path = folder / f"{name}.bin"
        bank_file_words(image, shape, slots).tofile(path)
        args.append(f"+{name}={path}")
    return args


def route_counter_names(dut) -> list[str]:
    """The layer's routing counters (none without a routing front end)."""
    if dut.route_unit is None:
        return []
    return ["route_cycles"] + [name for name, _ in dut.route_unit.counters.shape()]


def bench_args(windows: list[Window], spec: LayerSpec, ql, *, gap_p=0.0, stall_p=0.0,
               seed=0, progress_file=None, luts=(), extra_counters=(),
               route_stall_p=0.0) -> LayerStimulus:
    """The ``moe_layer`` bench's stimulus; ``luts`` from :func:`lut_writes`;
    ``progress_file``: where the bench reports its simulated cycles (a progress bar);
    ``extra_counters``: :func:`route_counter_names`; ``route_stall_p``: back-pressure on the
    layer's routes (the routing formula is then an upper bound, see ``check_windows``)."""
    combine = ql.requant["combine"]
    gate_index = gate_hidden = gate_shared = None
    gate_tables = []
    if spec.router is not None:
        rq = ql.gate_index
        if rq.mult >= 1 << INDEX_MULT_BITS or rq.shift >= 1 << INDEX_SHIFT_BITS:
            raise ValueError(f"the gate's softmax index requantisation (mult {rq.mult}, shift "
                             f"{rq.shift}) does not fit the router's {INDEX_MULT_BITS}-bit "
                             f"multiplier and {INDEX_SHIFT_BITS}-bit shift")
        gate_index = RequantConstants(rq.mult, rq.shift)
    if spec.gate_hidden:
        # the MLP gate's hidden requantisation and tanh table (address code + 2**(ab-1))
        rq = ql.requant["gate.fc1"]
        gate_hidden = RequantConstants(rq.mult, _shift(rq, "gate.fc1"))
        gate_tables += [(TABLE_TANH, i, int(v)) for i, v in enumerate(ql.luts["tanh"])]
    if spec.shared_gate:
        # the shared expert's gate requantisation and sigmoid table
        rq = ql.requant["shared_gate"]
        gate_shared = RequantConstants(rq.mult, _shift(rq, "shared_gate"))
        gate_tables += [(TABLE_SIGMOID, i, int(v)) for i, v in enumerate(ql.luts["sigmoid"])]
    return LayerStimulus(
        windows=[LayerWindow(tokens=w.x.tolist(), jobs=w.jobs, route_mode=w.route_mode,
                             route_cap=w.route_cap, go_insert=int(w.go_insert))
                 for w in windows],
        lanes=spec.lanes, act_bits=ql.cfg.quant.act_bits, n_groups=spec.n_groups,
        combine=RequantConstants(combine.mult, _shift(combine, "combine")), gap_p=gap_p,
        stall_p=stall_p, seed=seed, silu_tables=[tuple(x) for x in luts],
        gate_index=gate_index, gate_hidden=gate_hidden, gate_shared=gate_shared,
        gate_tables=gate_tables, dram=spec.go_cache_rows > 0, route_stall_p=route_stall_p,
        extra_counters=list(extra_counters),
        progress_file=str(progress_file) if progress_file else None)


def expected_compute_cycles(w: Window, timing: LayerTiming) -> int:
    """The timing model's cycles of a window's timestamps (``LayerTiming.compute_cycles``)."""
    return timing.compute_cycles(w.sched.loads_per_timestamp, w.sched.tokens != IDLE)


def expected_route_cycles(w: Window, timing: LayerTiming) -> int | None:
    """The timing model's cycles of a window's routing phase (``LayerTiming.route_cycles``);
    ``None`` when the host supplies the window's routes."""
    if w.route_mode == MODE_HOST:
        return None
    n_routed = timing.route.n_experts
    selected = w.mask[:, :n_routed] if w.dropped is None else \
        w.mask[:, :n_routed] | w.dropped[:, :n_routed]
    per_token = selected.sum(axis=1)
    return timing.route_cycles(w.route_mode, len(w.x), cap=w.route_cap, insert=w.go_insert,
                               routes_per_token=[int(n) for n in per_token],
                               go_rows_read=w.go_rows_read, go_dram_rows=w.go_dram_rows)


def expected_window_cycles(w: Window, timing: LayerTiming) -> int:
    """The timing model's cycles of a whole window without input gaps or back-pressure and
    without the scheduler's settle cycle (the RTL takes this or up to ``SETTLE_MAX`` more)."""
    return timing.window_cycles(len(w.x), len(w.jobs), expected_compute_cycles(w, timing),
                                expected_route_cycles(w, timing))


def check_windows(windows: list[Window], results: list[dict], spec: LayerSpec,
                  timing: LayerTiming, restarts=()) -> dict:
    """Outputs vs golden, routes vs the golden routing and cycles vs the timing model, per
    window. The results' counters are cumulative within a simulation; ``restarts``: indices
    of windows that begin a new one."""
    n_routed = spec.n_routed_experts
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
        expected_cycles = expected_compute_cycles(w, timing)
        routing = {}
        if w.route_mode != MODE_HOST:
            # routed experts, and the shared gate's beats
            want = w.expected_routes(n_routed + int(spec.shared_gate))
            got_routes = sorted(res["routes"])
            if got_routes != want:
                extra = [r for r in got_routes if r not in want]
                missing = [r for r in want if r not in got_routes]
                mismatches.append({"window": i, "routes": "differ",
                                   "unexpected": extra[:8], "missing": missing[:8]})
            routing = {"routes": len(got_routes), "routes_match": got_routes == want,
                       "route_cycles": delta["route_cycles"],
                       "expected_route_cycles": expected_route_cycles(w, timing)}
        per_window.append({**routing, "kind": w.kind, "step": w.step, "tokens": len(w.x),
                           "jobs": len(w.jobs), "shared_jobs": w.shared_jobs,
                           "timestamps": w.sched.timestamps,
                           "tokens_loaded": w.sched.tokens_loaded,
                           "compute_cycles": delta["cycles"], "counters": delta,
                           "expected_compute_cycles": expected_cycles,
                           "cycles": res["cycles"], "mismatching_values": int(len(bad))})
    return {"mismatches": mismatches, "windows": per_window}
