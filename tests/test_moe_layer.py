"""The MoE layer accelerator: crossbar-tiled golden, end-to-end RTL runs (Verilator, Icarus),
cycle contract, GO-cache exactness, reports and user errors."""

import dataclasses
import json

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from moepim.models.pim import CrossbarMatmul, bank_image, tiles_of
from moepim.models.quant import moe_forward_int
from moepim.models.tile import encode_cells, tile_mvm
from moepim.sim.cli import main
from moepim.sim.config import REPO_ROOT, ConfigError, load_experiment
from moepim.sim.layer_run import (
    ResourceError,
    _check_resources,
    estimate_resources,
    run_layer_experiment,
)
from moepim.spec.tile import TileSpec
from moepim.spec.timing import SETTLE_MAX, LayerTiming

from .conftest import need_icarus

SMALL_LAYER = REPO_ROOT / "configs" / "experiments" / "layer-small.yaml"
DEFAULT = REPO_ROOT / "configs" / "experiments" / "default.yaml"


# ---------------------------------------------------------------------------------------------
# golden model of tiled matrices

def _tiled_reference(a, b, shape):
    """Composition of single-tile golden MVMs, written out tile by tile."""
    rt, ct = tiles_of(*b.shape, shape)
    ap = np.zeros((a.shape[0], rt * shape.n_rows), dtype=np.int64)
    ap[:, :a.shape[1]] = a
    bp = np.zeros((rt * shape.n_rows, ct * shape.n_outputs), dtype=np.int64)
    bp[:b.shape[0], :b.shape[1]] = b
    out = np.zeros((a.shape[0], ct * shape.n_outputs), dtype=np.int64)
    for i in range(rt):
        for j in range(ct):
            rows, cols = slice(i * shape.n_rows, (i + 1) * shape.n_rows), \
                slice(j * shape.n_outputs, (j + 1) * shape.n_outputs)
            out[:, cols] += tile_mvm(ap[:, rows], bp[rows, cols],
                                     **dataclasses.asdict(shape))
    return out[:, :b.shape[1]]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), n_in=st.integers(1, 70), n_out=st.integers(1, 40),
       adc_bits=st.sampled_from([4, 8, 16]), bits_per_cell=st.sampled_from([2, 8]))
def test_crossbar_matmul_is_tile_by_tile_golden(seed, n_in, n_out, adc_bits, bits_per_cell):
    rng = np.random.default_rng(seed)
    shape = TileSpec(n_rows=16, n_columns=16, bits_per_cell=bits_per_cell, weight_bits=8,
                      input_bits=8, n_adcs=4, adc_bits=adc_bits)
    a = rng.integers(-127, 128, (3, n_in))
    b = rng.integers(-128, 128, (n_in, n_out))
    got = CrossbarMatmul(shape)(a, b)
    assert np.array_equal(got, _tiled_reference(a, b, shape))
    if shape.ideal_adc:
        assert np.array_equal(got, a @ b)


def test_ideal_adc_gives_the_exact_product():
    rng = np.random.default_rng(0)
    shape = TileSpec(n_rows=16, n_columns=16, n_adcs=4, adc_bits=16)
    a, b = rng.integers(-127, 128, (4, 50)), rng.integers(-128, 128, (50, 30))
    assert np.array_equal(CrossbarMatmul(shape)(a, b), a @ b)


def test_bank_image_layout_is_slot_row_tile_column_tile_row_column():
    shape = TileSpec(n_rows=4, n_columns=4, n_adcs=2, adc_bits=8)
    rng = np.random.default_rng(1)
    w = [rng.integers(-128, 128, (6, 5)) for _ in range(2)]
    img = bank_image(w, 3, 6, 5, shape).reshape(3, 2, 2, 4, 4)
    padded = np.zeros((8, 8), dtype=np.int64)
    padded[:6, :5] = w[1]
    assert np.array_equal(img[1, 1, 0], encode_cells(padded[4:8, 0:4], shape))
    assert np.all(img[2] == 128)                   # empty slot: offset-encoded zeros
    with pytest.raises(ValueError, match="shape"):
        bank_image([w[0].T], 1, 6, 5, shape)


@pytest.mark.parametrize("n_rows, n_columns, bits_per_cell", [(256, 256, 8), (64, 64, 2),
                                                                (16, 20, 4)])
def test_bank_file_packs_column_sums_without_carries(n_rows, n_columns, bits_per_cell):
    """The macro's file: each crossbar row's cells ``per_word`` to a big-endian 64-bit word;
    unpacking gives the cells back, and a column's sum over all rows of the largest cells
    still fits its lane (so whole-word additions never carry into the next column)."""
    from moepim.models.pim import bank_file_words, column_sum_packing

    shape = TileSpec(n_rows=n_rows, n_columns=n_columns, bits_per_cell=bits_per_cell,
                      weight_bits=8, input_bits=8, n_adcs=4, adc_bits=8)
    sum_bits, per_word, words = column_sum_packing(shape)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 1 << bits_per_cell, 2 * n_rows * n_columns).astype(np.uint8)
    packed = bank_file_words(image, shape)
    assert packed.dtype.str == ">u8" and len(packed) == 2 * n_rows * words
    raw = np.frombuffer(packed.tobytes(), dtype=">u8").astype(np.uint64)
    lanes = (raw[:, None] >> (np.arange(per_word, dtype=np.uint64) * np.uint64(sum_bits))) \
        & np.uint64((1 << sum_bits) - 1)
    cells = lanes.reshape(2 * n_rows, words * per_word)
    assert np.array_equal(cells[:, :n_columns].reshape(-1), image)
    assert not cells[:, n_columns:].any()
    assert n_rows * ((1 << bits_per_cell) - 1) < 1 << sum_bits and per_word * sum_bits <= 64


def test_bank_file_of_more_rows_than_one_packing_block():
    """Banks larger than the packer's block of 65,536 rows: every row packed, in order."""
    from moepim.models.pim import bank_file_words, column_sum_packing

    shape = TileSpec(n_rows=64, n_columns=16, bits_per_cell=2, weight_bits=8, input_bits=8,
                      n_adcs=4, adc_bits=8)
    sum_bits, per_word, words = column_sum_packing(shape)
    rows = (1 << 16) + 320                       # 1,025 crossbars of 64 rows
    image = np.random.default_rng(1).integers(0, 4, rows * 16).astype(np.uint8)
    raw = bank_file_words(image, shape).astype(np.uint64)
    lanes = (raw[:, None] >> (np.arange(per_word, dtype=np.uint64) * np.uint64(sum_bits))) \
        & np.uint64((1 << sum_bits) - 1)
    assert np.array_equal(lanes.reshape(rows, words * per_word)[:, :16].reshape(-1), image)


# ---------------------------------------------------------------------------------------------
# end to end on the RTL

def _small(**workload):
    exp = load_experiment(SMALL_LAYER)
    return dataclasses.replace(exp, workload=dataclasses.replace(exp.workload, **workload))


def _check(report, windows_expected):
    assert report["golden_match"], report["mismatches"][:5]
    assert report["n_mismatches"] == 0
    assert report["cycles_match_formula"]
    for w in report["windows"]:
        assert w["compute_cycles"] == w["expected_compute_cycles"]
        assert w["route_cycles"] == w["expected_route_cycles"], w   # routing phase
        assert w["routes_match"] and w["routes"] > 0
        assert w["counters"]["timestamps"] == w["timestamps"]
        assert w["counters"]["token_loads"] == w["tokens_loaded"]
    assert len(report["windows"]) == windows_expected


@pytest.mark.xdist_group("layer-verilator")
def test_small_layer_verilator_bit_exact_with_gaps_and_backpressure(tmp_path):
    exp = _small()                      # input gaps 0.1, back-pressure 0.2, no-cache simulated
    report = run_layer_experiment(exp, sim="verilator", out_folder=tmp_path)
    n_gen = exp.workload.n_generate
    _check(report, 1 + 2 * n_gen)
    assert report["go_cache_exact"] is True
    assert report["go_cache"]["selection_equal"] and report["go_cache"]["output_equal_to_recompute"]
    # the no-cache windows recompute the whole prefix: more jobs and cycles than the cached step
    for step in report["decode"]:
        assert step["no_cache_source"] == "simulated"
        assert step["no_cache_cycles"] > step["cycles"]
        assert step["no_cache_jobs"] >= step["jobs"]
    cmp = report["go_cache_comparison"]
    assert cmp["with_go_cache"]["source"] == cmp["without_cache"]["source"] == "simulated"
    assert cmp["speedup"] > 1 and cmp["energy_ratio"] > 1
    for name in ("report.json", "report.csv", "energy.png", "area.png", "timeline.png",
                 "decode_cycles.png"):
        assert (tmp_path / name).exists(), name
    e = report["energy_pj"]
    assert all(v >= 0 for v in e["breakdown"].values())
    # leakage by hand (power_gating idle): every tile-position MVM powers its peripheral set
    # for mvm_latency = 8 planes x 64/8 columns per ADC + 4 = 68 cycles; tiny-ec-256 on 64x64
    # tiles: 16 crossbars per expert, 4 gate crossbars; 8 ADCs leaking 1.67 pJ x 10 % x
    # 1.2 GS/s = 0.2004 mW each; the jobs are the RTL's (one per busy group timestamp)
    jobs = sum(w["jobs"] for w in report["windows"][:1 + n_gen])
    mvms = jobs * 16 + report["routing"]["gate_mvms"] * 4
    assert e["breakdown"]["leakage"] == pytest.approx(mvms * 68 * 1.0 * 8 * 0.2004)
    assert e["power_gating"]["check"]["consistent"], e["power_gating"]["check"]
    assert e["groups"]["leakage"] == e["breakdown"]["leakage"]
    assert e["groups"]["dram"] == e["breakdown"]["dram"]
    # analog area by hand: 16 x 8 + 4 = 132 crossbars of 64 x 64 cells, 16 x 4 groups + 4 =
    # 68 peripheral sets of 8 8-bit ADCs (1200 um2 each)
    assert report["area_mm2"]["breakdown"]["adcs"] == pytest.approx(68 * 8 * 1200e-6)
    assert report["area_mm2"]["breakdown"]["arrays"] == pytest.approx(
        132 * 64 * 64 * 0.001526e-6)
    # the run's time: its windows' cycles on the DRAM channel's timeline
    dram, n_tok = report["dram"], exp.workload.n_prompt + n_gen
    clock = exp.tech.clock_ns.value
    assert report["time_ns"] == pytest.approx(report["cycles"] * clock
                                              + report["phases"]["dram_ns"])
    ts = report["time_split"]
    assert ts["compute"] == pytest.approx(report["cycles"] * clock * 1e-3)
    assert ts["dram_stall"] == pytest.approx(report["phases"]["dram_ns"] * 1e-3)
    assert dram["by_kind"]["tokens_in"]["bytes"] == n_tok * exp.model.d_model
    assert dram["by_kind"]["results_out"]["bytes"] == n_tok * exp.model.d_model
    assert report["phases"]["dram_ns"] >= dram["busy_ns"] * (1 - 1e-9) and dram["busy_ns"] > 0
    assert report["efficiency"]["tops_per_mm2"] > 0
    # switching activity: one SAIF per simulation (prefill, cached decode, no-cache decode)
    sw = e["switching"]
    assert set(sw) == {"prefill", "decode", "no_cache"}
    assert all(sw[k]["toggles"] > 0 for k in sw)
    assert sw["no_cache"]["toggles"] > sw["decode"]["toggles"]      # recomputes the prefix
    per_toggle = exp.tech.net_toggle_energy_fj.value * 1e-3
    assert e["breakdown"]["digital_switching"] == pytest.approx(
        (sw["prefill"]["toggles"] + sw["decode"]["toggles"]) * per_toggle)
    assert cmp["without_cache"]["breakdown"]["digital_switching"] == pytest.approx(
        sw["no_cache"]["toggles"] * per_toggle)
    # no analog-macro internals in the counts: every traced net is in the layer's RTL
    assert all(m.startswith("moe_layer") for m in sw["prefill"]["toggles_by_module"])
    # digital area from Yosys; the layer's memories (token and output buffers, scheduler
    # queues) priced as SRAM
    a = report["area_mm2"]
    assert a["breakdown"]["digital_logic"] > 0 and a["digital_logic"]["transistors"] > 0
    d, n_tok = exp.model.d_model, exp.workload.n_prompt + exp.workload.n_generate
    assert a["sram_bits"]["layer_memories"] >= n_tok * d * (exp.tile.input_bits + 1)


@pytest.mark.xdist_group("layer-verilator")
def test_layer_routes_on_its_hardware_and_the_go_cache_spills_to_dram(tmp_path):
    """The routing front end (gate crossbars, softmax, expert-choice router, GO cache): every
    window's routes equal the golden's, the GO cache of 4 SRAM rows spills later rows through
    the layer's DRAM port and reads them back for each decision; its RTL counters equal the
    functional model's; the routing phase's cycles equal the formula, DRAM rows included."""
    exp = _small(input_gaps=0.0, backpressure=0.0, no_cache="model")
    exp = dataclasses.replace(exp, layer=dataclasses.replace(exp.layer, go_cache_rows=4,
                                                             switching_activity=False))
    report = run_layer_experiment(exp, sim="verilator", out_folder=tmp_path, synthesize=False)
    _check(report, 1 + exp.workload.n_generate)
    go = report["go_cache"]
    assert go["rows"] == 4 and go["counters"]["spills"] > 0 and go["counters"]["dram_reads"] > 0
    assert go["rtl_counters"] == go["counters"] and go["counters_match_rtl"]
    assert go["rtl_selection_equal"] and report["go_cache_exact"] is True
    r = report["routing"]
    assert r["source"].startswith("hardware") and r["routes_match"]
    assert r["route_cycles_match_formula"]
    assert r["gate_mvms"] == exp.workload.n_prompt + exp.workload.n_generate
    # a decode step's routing scans more rows as the sequence grows (DRAM rows included)
    assert r["decode_route_cycles"] == sorted(r["decode_route_cycles"])
    # the GO cache is in the layer's RTL: its SRAM is among the layer's memories
    assert report["area_mm2"]["sram_bits"]["go_cache"] == 0


@pytest.mark.parametrize("name, router", [
    ("llama-moe-3.5b-4-16-paper", "expert_choice"), ("mixtral-8x7b", "top_k"),
    ("qwen1.5-moe-a2.7b", "top_k"), ("olmoe-1b-7b", "top_k"),
    ("llama-moe-3.5b-4-16", "top_k"),       # MLP gate: two gate layers, then top-4
    ("switch-base-128", "top_k"),           # with capacity dropping in the router
])
def test_which_routers_run_on_the_layer(name, router):
    from moepim.sim.config import load_model
    from moepim.sim.layer_run import hw_router

    assert hw_router(load_model(REPO_ROOT / "configs" / "models" / f"{name}.yaml")) == router


def test_wrong_hardware_routes_are_mismatches():
    """A route the hardware emits that the golden does not have (or a missing one) makes the
    window a mismatch, never a warning."""
    from moepim.sim.moe_run import Window, check_windows
    from moepim.spec.layer import LayerSpec
    from moepim.spec.timing import MODE_WINDOW

    spec = LayerSpec(d_model=4, d_ff=4, n_experts=2, n_groups=2, group_size=1, n_tokens=2,
                     lanes=4, gate_bits=8, multiplier_bits=15, router="expert_choice")

    class Timing:           # the cycles are not what this test is about
        blocks = 1

        class route:
            n_experts = 2

        @staticmethod
        def route_cycles(*a, **k):
            return 7

        @staticmethod
        def compute_cycles(*a, **k):
            return 0

    mask = np.array([[True, False], [False, True]])
    w = Window("prefill", 0, np.zeros((2, 4)), mask, np.array([[3, 0], [0, 5]]),
               np.zeros((2, 4), dtype=np.int64), route_mode=MODE_WINDOW, route_cap=1)
    from moepim.models.schedule import schedule
    w.sched = schedule(mask, [[0], [1]], "compact")
    counters = {"cycles": 0, "route_cycles": 7}
    good = {"outputs": np.zeros((2, 4)).tolist(), "routes": [[1, 1, 5], [0, 0, 3]],
            "counters": counters, "cycles": 0}
    assert not check_windows([w], [good], spec, Timing)["mismatches"]
    bad = dict(good, routes=[[0, 0, 3], [1, 1, 4]])
    out = check_windows([w], [bad], spec, Timing)
    assert out["mismatches"] == [{"window": 0, "routes": "differ", "unexpected": [[1, 1, 4]],
                                  "missing": [[1, 1, 5]]}]
    assert out["windows"][0]["routes_match"] is False


@pytest.mark.xdist_group("layer-verilator")
def test_window_cycles_without_gaps_follow_the_formula(tmp_path):
    exp = _small(input_gaps=0.0, backpressure=0.0, no_cache="model")
    report = run_layer_experiment(exp, sim="verilator", out_folder=tmp_path, synthesize=False)
    _check(report, 1 + exp.workload.n_generate)
    # total window cycles: the formula is a tight lower bound (scheduler settle <= SETTLE_MAX)
    blocks = exp.model.d_model // exp.layer.lanes
    for w in report["windows"]:
        base = (2 * w["tokens"] * blocks + w["route_cycles"] + max(1, w["jobs"])
                + w["compute_cycles"] + 1)
        assert base <= w["cycles"] <= base + SETTLE_MAX, w
    # the no-cache steps from the formula grow with the prefix
    nc = [d["no_cache_cycles"] for d in report["decode"]]
    assert nc == sorted(nc) and nc[0] > report["decode"][0]["cycles"]


def test_icarus_runs_the_small_layer_bit_exact(tmp_path):
    need_icarus()
    exp = _small(n_prompt=4, n_generate=1, no_cache="off", input_gaps=0.0, backpressure=0.3)
    report = run_layer_experiment(exp, sim="icarus", out_folder=tmp_path)
    _check(report, 2)
    assert report["sim"] == "icarus"
    # no SAIF from Icarus: switching energy is listed as not included, never guessed
    assert "digital_switching" not in report["energy_pj"]["breakdown"]
    assert any("switching" in x for x in report["energy_pj"]["not_included"])
    assert report["area_mm2"]["breakdown"]["digital_logic"] > 0


SWIGLU_LAYER = REPO_ROOT / "configs" / "experiments" / "layer-swiglu-small.yaml"
SHARED_LAYER = REPO_ROOT / "configs" / "experiments" / "layer-shared-small.yaml"


def test_icarus_runs_the_shared_swiglu_layer_bit_exact(tmp_path):
    """SwiGLU engines (SiLU tables in RAM) and the shared expert's engine under Icarus."""
    need_icarus()
    exp = load_experiment(SHARED_LAYER)
    exp = dataclasses.replace(exp, workload=dataclasses.replace(exp.workload, n_prompt=2,
                                                                n_generate=1))
    report = run_layer_experiment(exp, sim="icarus", out_folder=tmp_path, synthesize=False)
    _check(report, 2)
    assert all(w["shared_jobs"] == w["tokens"] for w in report["windows"])


@pytest.mark.xdist_group("layer-verilator")
def test_top_k_routes_under_back_pressure(tmp_path):
    """The top-k router's routes leave token by token while the gate stage works on the next
    token; with the host refusing route beats at random, the routes and outputs are still
    exact and the routing counter (stalls left out) is at most the formula."""
    exp = load_experiment(SWIGLU_LAYER)
    report = run_layer_experiment(exp, sim="verilator", out_folder=tmp_path, synthesize=False,
                                  route_backpressure=0.5)
    assert report["golden_match"] and report["cycles_match_formula"]
    assert report["routing"]["routes_match"]
    assert report["routing"]["route_cycles_rule"].startswith("at most")
    per = report["windows"]
    assert all(w["route_cycles"] <= w["expected_route_cycles"] for w in per)
    assert all(w["compute_cycles"] == w["expected_compute_cycles"] for w in per)
    # the gate stage worked on during refused route beats (why the formula is a bound here)
    assert per[0]["route_cycles"] < per[0]["expected_route_cycles"]


@pytest.mark.xdist_group("layer-verilator")
def test_swiglu_layer_verilator_bit_exact(tmp_path):
    """SwiGLU experts (up, gate_proj, down banks; per-expert SiLU tables written at run time),
    top-2 routing: bit-exact with the crossbar golden, cycles equal to the formula."""
    exp = load_experiment(SWIGLU_LAYER)
    assert exp.model.ffn == "swiglu" and exp.model.router.kind == "softmax_topk"
    report = run_layer_experiment(exp, sim="verilator", out_folder=tmp_path)
    _check(report, 1 + exp.workload.n_generate)
    m, t = exp.model, exp.tile
    rt, ct = tiles_of(m.d_model, m.d_ff, TileSpec(**t.shape_kwargs()))
    down_rt, down_ct = tiles_of(m.d_ff, m.d_model, TileSpec(**t.shape_kwargs()))
    # three banks per expert: two d_model x d_ff (up, gate_proj) and one d_ff x d_model
    per_expert = 2 * rt * ct + down_rt * down_ct
    assert report["energy_pj"]["events"]["expert_tile_mvms"] == \
        per_expert * sum(w["jobs"] for w in report["windows"])
    groups = report["schedule"]["groups"]
    assert report["area_mm2"]["peripheral_sets"] == per_expert * len(groups) + \
        tiles_of(m.d_model, m.n_experts, TileSpec(**t.shape_kwargs()))[0]
    # the SiLU tables are RAM in every engine: 2**act_bits entries per expert slot
    silu = [x for x in report["area_mm2"]["digital_logic"]["memories"] if x["name"] == "silu"]
    assert silu and silu[0]["depth"] == max(len(g) for g in groups) << t.input_bits
    assert silu[0]["instances"] == len(groups)
    # every token went through top-2 experts
    assert sum(w["jobs"] for w in report["windows"]) == \
        m.router.top_k * (exp.workload.n_prompt + exp.workload.n_generate)


@pytest.mark.xdist_group("layer-verilator")
def test_shared_expert_layer_verilator_bit_exact(tmp_path):
    """A sigmoid-gated shared expert (wider than the routed ones) on its own engine: every
    token is one of its jobs, its gated output is combined with the routed experts'."""
    from moepim.sim.layer_run import layer_spec
    from moepim.sim.moe_run import make_component

    exp = load_experiment(SHARED_LAYER)
    m, w = exp.model, exp.workload
    assert m.shared.n_shared == 1 and m.shared.d_ff != m.d_ff
    report = run_layer_experiment(exp, sim="verilator", out_folder=tmp_path, synthesize=False)
    _check(report, 1 + w.n_generate)
    groups = report["schedule"]["groups"]
    assert report["schedule"]["shared_expert"] == m.n_experts and groups[-1] == [m.n_experts]
    for win in report["windows"]:
        assert win["shared_jobs"] == win["tokens"]
        assert win["jobs"] == win["tokens"] * (m.router.top_k + 1)
        # the shared gate runs on the router (a gate column, the sigmoid table): one route
        # beat per token besides its top-k, compared with the golden's weight
        assert win["routes"] == win["tokens"] * (m.router.top_k + 1) and win["routes_match"]
    assert "sigmoid gate" in report["routing"]["source"]
    # the shared group works once per token: it is busy in as many timestamps as tokens
    n_tok = w.n_prompt + w.n_generate
    assert report["per_group"]["busy_timestamps"][-1] == n_tok
    # its engine is slower than the routed ones: the cycle formula takes, per timestamp, the
    # slowest working engine (asserted in _check for every window)
    spec, tile = layer_spec(exp)
    timing = LayerTiming.of(spec, exp.tile.spec())
    assert timing.group_latencies[-1] > timing.group_latencies[0]
    # the timing model's latencies are the RTL engines' (asked of the objects only here)
    dut = make_component(spec, tile)
    assert timing.group_latencies == (dut.engine.job_latency,) * (spec.n_groups - 1) + (
        dut.shared_engine.job_latency,)
    # area: the shared expert's crossbars and its own peripheral sets are counted
    shape = exp.tile.spec()
    per = lambda d_ff: 2 * np.prod(tiles_of(m.d_model, d_ff, shape)) + np.prod(  # noqa: E731
        tiles_of(d_ff, m.d_model, shape))
    gate = np.prod(tiles_of(m.d_model, m.n_experts + 1, shape))
    assert report["area_mm2"]["peripheral_sets"] == \
        per(m.d_ff) * (len(groups) - 1) + per(m.shared.d_ff) + gate
    assert report["area_mm2"]["crossbars"] == per(m.d_ff) * m.n_experts + per(m.shared.d_ff) \
        + gate


def test_shared_expert_reaches_the_golden():
    """The golden layer adds the gated shared expert: without it the outputs differ, and its
    sigmoid gate weights are per token, not constant."""
    from moepim.models.quant import shared_gate_int
    from moepim.models.workload import make_workload

    exp = load_experiment(SHARED_LAYER)
    mm = CrossbarMatmul(exp.tile.spec())
    wl = make_workload(exp.model, n_prompt=6, n_generate=0, seed=2, matmul=mm)
    gates = shared_gate_int(wl.x_q, wl.quant, mm)
    assert gates.shape == (6,) and len(set(gates.tolist())) > 1
    assert gates.min() >= 0 and gates.max() < (1 << exp.model.quant.gate_bits)
    routed = dataclasses.replace(exp.model, shared=dataclasses.replace(exp.model.shared,
                                                                       n_shared=0))
    wl.quant.cfg = routed
    y, _ = moe_forward_int(wl.x_q, wl.quant, routing=wl.routing, matmul=mm)
    assert not np.array_equal(y, wl.y_q)


MLP_LAYER = REPO_ROOT / "configs" / "experiments" / "layer-mlpgate-small.yaml"


@pytest.mark.xdist_group("layer-verilator")
def test_mlp_gate_routes_on_the_layer(tmp_path):
    """LLaMA-MoE's MLP gate on the layer: the first gate layer's partial sums requantised and
    looked up in the tanh table (written at run time) feed the second layer's crossbars, whose
    logits go to the top-k router; routes, outputs and routing cycles are exact. The hidden
    width (24) is not a multiple of the 16 lanes: the second layer gets a partial block."""
    from moepim.sim.layer_run import layer_spec
    from moepim.sim.moe_run import make_component

    exp = load_experiment(MLP_LAYER)
    exp = dataclasses.replace(exp, layer=dataclasses.replace(exp.layer,
                                                             switching_activity=False))
    m = exp.model
    assert m.router.kind == "mlp_gate" and m.router.gate_hidden % exp.layer.lanes
    report = run_layer_experiment(exp, sim="verilator", out_folder=tmp_path)
    _check(report, 1 + exp.workload.n_generate)
    r = report["routing"]
    assert r["hw_router"] == "top_k" and "two layers, tanh table" in r["source"]
    n_tok = exp.workload.n_prompt + exp.workload.n_generate
    assert r["gate_mvms"] == n_tok
    assert sum(w["routes"] for w in report["windows"]) == m.router.top_k * n_tok
    # the gate stage is the two layers: longer than a linear gate on the same bank
    spec, tile = layer_spec(exp)
    ru = make_component(spec, tile).route_unit
    assert ru.gate_hidden == m.router.gate_hidden and len(ru.banks) == 2
    b1, b2 = ru.banks
    gate = LayerTiming.of(spec, exp.tile.spec()).route.gate_cycles
    assert gate == b1.mvm_latency + b1.out_blocks + b2.mvm_latency + b2.out_blocks + 3
    # the tanh table is a RAM of the layer (Yosys), 2**act_bits entries
    tanh = [x for x in report["area_mm2"]["digital_logic"]["memories"] if x["name"] == "tanh"]
    assert tanh and tanh[0]["depth"] == 1 << exp.tile.input_bits
    # both gate layers' crossbars priced per routed token
    shape = exp.tile.spec()
    gate = np.prod(tiles_of(m.d_model, m.router.gate_hidden, shape)) \
        + np.prod(tiles_of(m.router.gate_hidden, m.n_experts, shape))
    assert report["energy_pj"]["events"]["gate_tile_mvms"] == n_tok * gate


SWITCH_LAYER = REPO_ROOT / "configs" / "experiments" / "layer-switch-small.yaml"


@pytest.mark.xdist_group("layer-verilator")
def test_switch_capacity_dropping_on_the_layer(tmp_path):
    """Switch's capacity on the top-k router: each expert takes at most ``C`` tokens of the
    sequence, counted from the prompt's first token through every generated token's window;
    later selections are dropped (not routed, counted). The kept routes, the drop count and
    the outputs equal the golden's (``apply_capacity`` in token order); a dropped selection
    still takes its cycle (formula)."""
    from moepim.models.routing import capacity_limit

    exp = load_experiment(SWITCH_LAYER)
    exp = dataclasses.replace(exp, layer=dataclasses.replace(exp.layer,
                                                             switching_activity=False))
    m, w = exp.model, exp.workload
    report = run_layer_experiment(exp, sim="verilator", out_folder=tmp_path, synthesize=False)
    assert report["golden_match"] and report["cycles_match_formula"]
    assert all(x["route_cycles"] == x["expected_route_cycles"] and x["routes_match"]
               for x in report["windows"])
    r = report["routing"]
    assert "capacity dropping" in r["source"]
    n_tok = w.n_prompt + w.n_generate
    assert r["capacity"] == capacity_limit(n_tok, m.n_experts, m.router.top_k,
                                           m.router.capacity_factor)
    # drops in the prompt and in a generated token's window (the count carried over)
    per = report["windows"]
    assert per[0]["counters"]["route_drops"] > 0
    assert sum(x["counters"]["route_drops"] for x in per[1:]) > 0
    assert r["dropped"] == r["dropped_golden"] > 0
    assert sum(x["routes"] for x in per) == n_tok * m.router.top_k - r["dropped"]


def test_gate_tables_need_their_gates():
    """A shared gate without a shared expert, or beside an MLP gate (it reads the token, not
    the hidden layer), is refused with the parameter named."""
    from moepim.hw.route_unit import RouteUnit
    from moepim.sim.layer_run import layer_spec
    from moepim.sim.moe_run import make_component
    from moepim.spec.checks import ParameterError

    spec, tile = layer_spec(load_experiment(SWIGLU_LAYER))
    with pytest.raises(ParameterError, match="shared_gate"):
        make_component(dataclasses.replace(spec, shared_gate=True), tile)
    with pytest.raises(ParameterError, match="shared_gate"):
        RouteUnit(d_model=64, n_experts=4, n_tokens=4, lanes=16, router="top_k",
                  gate_hidden=8, shared_gate=True, tile=TileSpec())
    with pytest.raises(ParameterError, match="drop"):
        RouteUnit(d_model=64, n_experts=4, n_tokens=4, lanes=16, router="expert_choice",
                  drop=True, tile=TileSpec())


def test_requantiser_multiplier_width_is_one_rule():
    """The engines and the route unit refuse the same multiplier widths, with one message."""
    from moepim.hw.expert_engine import ExpertEngine
    from moepim.hw.route_unit import RouteUnit
    from moepim.spec.checks import ParameterError

    for build in (lambda mb: RouteUnit(d_model=64, n_experts=4, n_tokens=4, lanes=16,
                                       router="top_k", multiplier_bits=mb, tile=TileSpec()),
                  lambda mb: ExpertEngine(d_model=64, d_ff=64, group_size=1, lanes=16,
                                          multiplier_bits=mb, tile=TileSpec())):
        for bad in (0, 32):
            with pytest.raises(ParameterError, match=f"multiplier_bits={bad}.*1 to 31"):
                build(bad)


def test_mlp_gate_golden_depends_on_the_tanh_table():
    """The tanh table reaches the routes: a wrong table changes the selections (so a bench
    that skipped the table writes could not match the golden routes)."""
    from moepim.models.quant import route_int
    from moepim.models.workload import make_workload

    exp = load_experiment(MLP_LAYER)
    mm = CrossbarMatmul(exp.tile.spec())
    wl = make_workload(exp.model, n_prompt=8, n_generate=0, seed=3, matmul=mm)
    wl.quant.luts["tanh"] = wl.quant.luts["tanh"][::-1].copy()
    assert not np.array_equal(route_int(wl.x_q, wl.quant, matmul=mm).mask, wl.routing.mask)


def test_swiglu_golden_differs_from_a_wrong_silu_table():
    """The SiLU tables reach the golden: changing one expert's table changes its outputs
    (so a bench that skipped the table writes could not pass the bit-exact check)."""
    from moepim.models.workload import make_workload

    exp = load_experiment(SWIGLU_LAYER)
    mm = CrossbarMatmul(exp.tile.spec())
    wl = make_workload(exp.model, n_prompt=4, n_generate=0, seed=1, matmul=mm)
    e = int(np.flatnonzero(wl.routing.mask.any(axis=0))[0])
    wl.quant.luts[f"experts.{e}.silu"] = np.zeros_like(wl.quant.luts[f"experts.{e}.silu"])
    y, _ = moe_forward_int(wl.x_q, wl.quant, routing=wl.routing, matmul=mm)
    assert not np.array_equal(y, wl.y_q)


@pytest.mark.parametrize("config, workload", [
    (SMALL_LAYER, dict(n_prompt=4, n_generate=2, no_cache="simulate")),
    (SHARED_LAYER, dict(n_prompt=3, n_generate=1)),
    (MLP_LAYER, dict(n_prompt=3, n_generate=1)),
])
def test_amaranth_simulator_runs_the_layer_bit_exact(tmp_path, config, workload):
    """``--sim amaranth``: every group's engine elaborated in place, the matrix banks played
    by Python models of the macro (``moepim.sim.amaranth_macro.add_bank_model``); same
    outputs and cycle formula as the Verilog runs."""
    exp = load_experiment(config)
    exp = dataclasses.replace(exp, workload=dataclasses.replace(exp.workload, **workload))
    report = run_layer_experiment(exp, sim="amaranth", out_folder=tmp_path, synthesize=False)
    n_windows = 1 + workload["n_generate"] * (2 if workload.get("no_cache") == "simulate"
                                              else 1)
    _check(report, n_windows)
    assert report["sim"] == "amaranth" and report["build"]["build_s"] == 0.0
    assert "digital_switching" not in report["energy_pj"]["breakdown"]


def test_layer_exports_one_engine_module_for_all_groups():
    from moepim.hw.moe_layer import ENGINE_MODULE
    from moepim.sim.build import to_verilog
    from moepim.sim.layer_run import layer_spec
    from moepim.sim.moe_run import make_component

    spec, tile = layer_spec(_small())
    layer = make_component(spec, tile)
    text = to_verilog(layer, "moe_layer")
    assert spec.n_groups > 1
    assert text.count(f"module {ENGINE_MODULE}(") == 1
    assert text.count(f"  {ENGINE_MODULE} engine") == spec.n_groups


# ---------------------------------------------------------------------------------------------
# configuration, resources, user errors

def test_default_experiment_is_the_papers_full_size_workload():
    exp = load_experiment(DEFAULT)
    m, t, w = exp.model, exp.tile, exp.workload
    assert (m.d_model, m.d_ff, m.n_experts, m.router.kind) == (4096, 688, 16, "expert_choice")
    assert (t.n_rows, t.n_columns, t.weight_bits, t.input_bits) == (256, 256, 8, 8)
    assert (w.grouping, w.policy, w.n_prompt, w.n_generate, w.go_cache) == \
        ("S2", "reschedule", 32, 8, True)
    est = estimate_resources(exp, 8, 2)
    assert est["memory_bytes"] < 4 << 30
    # the accurate tile: a reference column, 2-bit cells, 4 columns per weight, 64 outputs per
    # crossbar: up 16 x ceil(688/64) = 176, down 3 x ceil(4096/64) = 192 crossbars per expert
    assert (t.weight_encoding, t.bits_per_cell, t.adc_range) == ("reference_column", 2,
                                                                 "calibrated")
    assert est["crossbars"] == 16 * (16 * 11 + 3 * 64)
    # the paper's tile: 8-bit offset cells, 256 outputs per crossbar: 16 x 3 + 3 x 16 = 96
    paper = load_experiment(REPO_ROOT / "configs" / "experiments" / "paper" / "default.yaml")
    assert (paper.tile.weight_encoding, paper.tile.bits_per_cell) == ("offset", 8)
    assert estimate_resources(paper, 8, 2)["crossbars"] == 16 * 96


def test_variant_experiments_cover_the_grid():
    folder = REPO_ROOT / "configs" / "experiments" / "layer"
    seen = set()
    for path in folder.glob("*.yaml"):
        exp = load_experiment(path)
        assert exp.model.d_model == 4096
        seen.add((exp.workload.grouping, exp.workload.policy, exp.workload.go_cache))
    for g in ("U1", "U2", "S2", "U4", "S4"):
        for p in ("compact", "reschedule"):
            for cache in (True, False):
                assert (g, p, cache) in seen, (g, p, cache)


def test_resource_check_refuses_what_does_not_fit():
    exp = load_experiment(DEFAULT)
    est = dict(estimate_resources(exp, 8, 2), available_bytes=1 << 30)
    with pytest.raises(ResourceError, match="--allow-large"):
        _check_resources(exp, est, allow_large=False)
    _check_resources(exp, est, allow_large=True)


def _layer_config(tmp_path, mutate, name="bad.yaml"):
    raw = yaml.safe_load(SMALL_LAYER.read_text())
    for key in ("model", "tile", "tech", "dram"):
        raw[key] = str((SMALL_LAYER.parent / raw[key]).resolve())
    mutate(raw)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("mutate, key", [
    (lambda r: r["layer"].update(lanes=48), "layer.lanes"),
    (lambda r: r["layer"].update(wide=1), "layer.wide"),
    (lambda r: r["workload"].update(policy="fastest"), "workload.policy"),
    (lambda r: r["workload"].update(grouping="X3"), "X3"),
    (lambda r: r["workload"].update(n_prompt=0), "workload.n_prompt"),
    (lambda r: r.update(simulator="modelsim"), "simulator"),
    (lambda r: r.update(dram="missing.yaml"), "missing.yaml"),
    (lambda r: r["workload"].update(no_cache="sometimes"), "workload.no_cache"),
])
def test_bad_layer_configs_exit_2_without_output(tmp_path, capsys, mutate, key):
    path = _layer_config(tmp_path, mutate)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and key in err[0], err
    assert not out.exists()


def test_trace_with_other_expert_count_is_rejected(tmp_path, capsys):
    trace = tmp_path / "t.npy"
    np.save(trace, np.zeros((1, 11, 5), dtype=np.uint8))
    path = _layer_config(tmp_path, lambda r: r["workload"].update(trace=str(trace)))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "t.npy" in err and "8" in err
    assert not out.exists()


def test_model_that_does_not_fit_the_crossbars_is_refused(tmp_path, capsys):
    # 4-bit crossbar inputs cannot take the model's 8-bit activations
    tile = yaml.safe_load((REPO_ROOT / "configs" / "hw" / "tile-64.yaml").read_text())
    tile.pop("version")
    path = _layer_config(tmp_path, lambda r: r.update(tile=dict(tile, input_bits=4)))
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "input_bits" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # a layer far beyond this machine is refused before anything is built
    exp = load_experiment(DEFAULT)
    big = dataclasses.replace(exp, model=dataclasses.replace(exp.model, d_model=65536,
                                                             d_ff=65536, n_experts=64))
    with pytest.raises(ResourceError, match="GiB"):
        _check_resources(big, estimate_resources(big, 32, 2), allow_large=False)


def test_layer_config_errors_name_the_file():
    with pytest.raises(ConfigError) as e:
        load_experiment(REPO_ROOT / "configs" / "models" / "reduced" / "tiny-ec-256.yaml")
    assert "tiny-ec-256.yaml" in str(e.value)
    assert json.dumps(str(e.value))


@pytest.mark.xdist_group("layer-verilator")
def test_gocache_experiment_reports_both_modes(tmp_path, capsys):
    out = tmp_path / "go"
    cfg = REPO_ROOT / "configs" / "experiments" / "gocache-small.yaml"
    assert main(["run", str(cfg), "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["go_cache_exact"] is True and report["golden_match"] is True
    cmp = report["go_cache_comparison"]
    for mode in ("with_go_cache", "without_cache"):
        assert cmp[mode]["cycles"] > 0 and cmp[mode]["energy_pj"] > 0
    assert cmp["without_cache"]["cycles"] > cmp["with_go_cache"]["cycles"]
    assert "GO cache exact: True" in capsys.readouterr().out


def test_waves_flag_is_for_layer_runs(tmp_path, capsys):
    tile_cfg = REPO_ROOT / "configs" / "experiments" / "tile-small.yaml"
    assert main(["run", str(tile_cfg), "--out", str(tmp_path / "t"), "--waves", "--quiet"]) == 2
    assert "--waves" in capsys.readouterr().err
    # Amaranth's simulator writes no VCD here: refused, nothing written
    out = tmp_path / "a"
    assert main(["run", str(SMALL_LAYER), "--out", str(out), "--sim", "amaranth", "--waves",
                 "--quiet"]) == 2
    assert "--waves" in capsys.readouterr().err and not out.exists()


@pytest.mark.xdist_group("layer-verilator")
def test_layer_run_writes_waves_on_request(tmp_path):
    exp = _small(n_prompt=4, n_generate=1, no_cache="off")
    report = run_layer_experiment(exp, sim="verilator", out_folder=tmp_path, waves=True, synthesize=False)
    assert report["golden_match"]
    vcd = tmp_path / "waves.vcd"
    assert vcd.exists() and vcd.stat().st_size > 0
    assert "o_outputs__valid" in vcd.read_text(errors="replace")[:200_000]
