"""GO cache: decode with the cache is bit-identical to full recomputation; the RTL matches the
functional model (selections and counters) with a DRAM of random latency and back-pressure."""

import dataclasses
import gc

import numpy as np
import pytest

from moepim.hw.gocache import OP_CLEAR, OP_DECIDE, OP_INSERT, GateOutputCache
from moepim.models.gocache import GoCacheModel
from moepim.models.quant import moe_forward_int, route_int
from moepim.models.routing import expert_choice_capacity, expert_choice_mask
from moepim.models.workload import make_workload
from moepim.sim.block_run import run_bench
from moepim.sim.config import REPO_ROOT, load_model
from moepim.spec.numerics import SCORE_BITS

from .conftest import need_simulator

PAPER = REPO_ROOT / "configs" / "models" / "llama-moe-3.5b-4-16-paper.yaml"
SEEDS, PROMPT, STEPS = (1, 2, 3, 4), 16, 8


def ec_workload(seed, n_prompt=PROMPT, n_generate=STEPS):
    cfg = dataclasses.replace(load_model(PAPER), d_model=96, d_ff=32)
    return make_workload(cfg, n_prompt=n_prompt, n_generate=n_generate, seed=seed)


@pytest.mark.parametrize("seed", SEEDS)
def test_decode_with_go_cache_equals_full_recomputation(seed):
    """4 seeds x 8 decode steps (16-token prompt, 16 experts, capacity factor 4)."""
    wl = ec_workload(seed)
    cfg, scores = wl.cfg, wl.routing.scores
    factor = cfg.router.ec_capacity_factor
    cache = GoCacheModel(n_experts=cfg.n_experts, score_bits=SCORE_BITS, go_cache_rows=6)
    for t in range(PROMPT):
        cache.insert(scores[t])
    for t in range(PROMPT, PROMPT + STEPS):
        cached = cache.decide_and_insert(scores[t], factor)
        # full recomputation: every token so far through the gate, column top-C over all
        full_mask = expert_choice_mask(scores[:t + 1], expert_choice_capacity(
            t + 1, cfg.n_experts, factor))
        np.testing.assert_array_equal(cached, full_mask[-1])
        full = route_int(wl.x_q[:t + 1], wl.quant, mask=full_mask)
        y_full, _ = moe_forward_int(wl.x_q[:t + 1], wl.quant, routing=full)
        one = route_int(wl.x_q[t:t + 1], wl.quant, mask=cached[None])
        y_cached, _ = moe_forward_int(wl.x_q[t:t + 1], wl.quant, routing=one)
        np.testing.assert_array_equal(y_cached[0], y_full[-1])
        np.testing.assert_array_equal(y_cached[0], wl.y_q[t])      # the workload's golden
    assert cache.counters["spills"] == PROMPT + STEPS - 6
    assert cache.counters["dram_reads"] > 0


@pytest.mark.parametrize("sim, seed, capacity", [
    ("amaranth", 1, 4), ("amaranth", 2, 30), ("amaranth", 3, 1),
    ("verilator", 1, 4), ("icarus", 3, 1)])
def test_rtl_go_cache_matches_model(sim, seed, capacity):
    need_simulator(sim)
    wl = ec_workload(seed, n_prompt=10, n_generate=6)
    cfg, scores = wl.cfg, wl.routing.scores
    factor = cfg.router.ec_capacity_factor
    cache = GateOutputCache(n_experts=cfg.n_experts, go_cache_rows=capacity, max_tokens=64)
    model = GoCacheModel(n_experts=cfg.n_experts, score_bits=SCORE_BITS, go_cache_rows=capacity)
    commands = [(OP_CLEAR, 0, np.zeros(cfg.n_experts, dtype=np.int64))]
    expected = []
    for t in range(10):
        commands.append((OP_INSERT, 0, scores[t]))
        model.insert(scores[t])
    for t in range(10, 16):
        cap = expert_choice_capacity(t + 1, cfg.n_experts, factor)
        commands.append((OP_DECIDE, cap, scores[t]))
        expected.append(model.decide_and_insert(scores[t], factor))
    r = run_bench(cache, top="go_cache", bench="go_cache_commands", sim=sim, args=dict(
        commands=[[op, cap, [int(v) for v in sc]] for op, cap, sc in commands],
        score_bits=SCORE_BITS, decide_op=OP_DECIDE, latency_max=5, stall_p=0.3, seed=seed))
    masks, counters = r["masks"], r["counters"]
    got = [np.array([(mk >> e) & 1 for e in range(cfg.n_experts)], dtype=bool) for mk in masks]
    assert len(got) == len(expected)
    for g, e, t in zip(got, expected, range(10, 16)):
        np.testing.assert_array_equal(g, e)
        np.testing.assert_array_equal(g, wl.routing.mask[t])
    assert counters == model.counters


@pytest.mark.filterwarnings("ignore:.*created but never used")
def test_go_cache_errors_and_export(tmp_path):
    from moepim.sim.build import export_component
    from moepim.sim.lint import compile_icarus, lint_verilator
    from moepim.spec.checks import ParameterError

    from .conftest import need_icarus

    with pytest.raises(ParameterError, match="go_cache_rows=0"):
        GateOutputCache(n_experts=4, go_cache_rows=0, max_tokens=8)
    gc.collect()   # the half-built object warns here, under this test's filter
    with pytest.raises(ValueError, match="go_cache_rows=0"):
        GoCacheModel(n_experts=4, score_bits=16, go_cache_rows=0)
    v, _ = export_component(GateOutputCache(n_experts=16, go_cache_rows=64, max_tokens=4096),
                            "go_cache", tmp_path)
    lint = lint_verilator(v, "go_cache")
    assert lint.returncode == 0, lint.stderr[-3000:]
    need_icarus()
    assert compile_icarus(v, "go_cache").returncode == 0


def test_go_cache_rows_are_one_number_for_the_run_its_export_and_its_area():
    """``layer.go_cache_rows`` beyond the run's tokens: the layer's route unit, the exported
    ``go_cache`` block and the GO-cache model all get the run's token count."""
    from moepim.sim.config import load_experiment
    from moepim.sim.layer_run import layer_spec
    from moepim.sim.tops import make_top

    exp = load_experiment(REPO_ROOT / "configs" / "experiments" / "gocache-small.yaml")
    seq = exp.workload.n_prompt + exp.workload.n_generate
    for rows, want in ((None, seq), (seq + 100, seq), (3, 3)):
        e = dataclasses.replace(exp, layer=dataclasses.replace(exp.layer, go_cache_rows=rows))
        assert e.go_cache_rows == want
        assert layer_spec(e)[0].go_cache_rows == want
        _, params = make_top(e, "go_cache")
        assert params["go_cache_rows"] == want and params["max_tokens"] == seq
