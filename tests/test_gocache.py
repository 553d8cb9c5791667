"""GO cache: decode with the cache is bit-identical to full recomputation; the RTL matches the
functional model (selections and counters) with a DRAM of random latency and back-pressure."""

import dataclasses
import gc

import numpy as np
import pytest
from amaranth.sim import Simulator

from moepim.hw.gocache import OP_CLEAR, OP_DECIDE, OP_INSERT, GateOutputCache
from moepim.models.gocache import GoCacheModel
from moepim.models.quant import SCORE_BITS, moe_forward_int, route_int
from moepim.models.routing import expert_choice_capacity, expert_choice_mask
from moepim.models.workload import make_workload
from moepim.sim.config import REPO_ROOT, load_model

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
    cache = GoCacheModel(n_experts=cfg.n_experts, score_bits=SCORE_BITS, capacity=6)
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


def run_rtl(cache, commands, *, seed, latency_max, p_stall):
    """Play (op, cap, scores) commands; DRAM: a Python memory answering reads in order after
    1..latency_max cycles, accepting requests with probability 1 - p_stall."""
    rng = np.random.default_rng(seed)
    sim = Simulator(cache)
    sim.add_clock(1e-8)
    dram, pending = {}, []
    masks = []

    async def bench(ctx):
        cycle = 0
        for op, cap, scores in commands:
            ctx.set(cache.i_cmd.valid, 1)
            ctx.set(cache.i_cmd.payload.op, op)
            ctx.set(cache.i_cmd.payload.cap, cap)
            ctx.set(cache.i_cmd.payload.scores.as_value(),
                    sum(int(s) << (SCORE_BITS * e) for e, s in enumerate(scores)))
            sent, got = False, op != OP_DECIDE
            while not (sent and got and (op == OP_DECIDE or
                                         ctx.get(cache.i_cmd.ready))):
                # DRAM side
                req_ready = int(rng.random() >= p_stall)
                ctx.set(cache.o_dram_req.ready, req_ready)
                if pending and pending[0][0] <= cycle:
                    ctx.set(cache.i_dram_resp.valid, 1)
                    ctx.set(cache.i_dram_resp.payload.data.as_value(), pending[0][1])
                else:
                    ctx.set(cache.i_dram_resp.valid, 0)
                sel_ready = int(rng.random() >= p_stall)
                ctx.set(cache.o_select.ready, sel_ready)
                if ctx.get(cache.i_cmd.valid) and ctx.get(cache.i_cmd.ready):
                    sent = True
                resp_taken = ctx.get(cache.i_dram_resp.valid) and ctx.get(cache.i_dram_resp.ready)
                if ctx.get(cache.o_dram_req.valid) and req_ready:
                    p = cache.o_dram_req.payload
                    if ctx.get(p.write):
                        dram[ctx.get(p.addr)] = ctx.get(p.data.as_value())
                    else:
                        delay = int(rng.integers(1, latency_max + 1))
                        when = max(cycle + delay, pending[-1][0] if pending else 0)
                        pending.append((when, dram[ctx.get(p.addr)]))
                if ctx.get(cache.o_select.valid) and sel_ready:
                    masks.append(ctx.get(cache.o_select.payload.mask))
                    got = True
                await ctx.tick()
                cycle += 1
                if resp_taken:
                    pending.pop(0)
                if sent:
                    ctx.set(cache.i_cmd.valid, 0)
                if sent and got and op != OP_DECIDE:
                    break
                assert cycle < 100_000
        # let the last insert finish
        for _ in range(20):
            ctx.set(cache.o_dram_req.ready, 1)
            if ctx.get(cache.o_dram_req.valid):
                p = cache.o_dram_req.payload
                dram[ctx.get(p.addr)] = ctx.get(p.data.as_value())
            await ctx.tick()
        c = cache.counters
        out = {k: ctx.get(getattr(c, k)) for k in ("sram_reads", "sram_writes", "sram_bits",
                                                    "hits", "spills", "dram_reads",
                                                    "dram_bytes")}
        masks.append(out)

    sim.add_testbench(bench)
    sim.run()
    counters = masks.pop()
    return masks, counters


@pytest.mark.parametrize("seed, capacity", [(1, 4), (2, 30), (3, 1)])
def test_rtl_go_cache_matches_model(seed, capacity):
    wl = ec_workload(seed, n_prompt=10, n_generate=6)
    cfg, scores = wl.cfg, wl.routing.scores
    factor = cfg.router.ec_capacity_factor
    cache = GateOutputCache(n_experts=cfg.n_experts, capacity=capacity, max_tokens=64)
    model = GoCacheModel(n_experts=cfg.n_experts, score_bits=SCORE_BITS, capacity=capacity)
    commands = [(OP_CLEAR, 0, np.zeros(cfg.n_experts, dtype=np.int64))]
    expected = []
    for t in range(10):
        commands.append((OP_INSERT, 0, scores[t]))
        model.insert(scores[t])
    for t in range(10, 16):
        cap = expert_choice_capacity(t + 1, cfg.n_experts, factor)
        commands.append((OP_DECIDE, cap, scores[t]))
        expected.append(model.decide_and_insert(scores[t], factor))
    masks, counters = run_rtl(cache, commands, seed=seed, latency_max=5, p_stall=0.3)
    got = [np.array([(mk >> e) & 1 for e in range(cfg.n_experts)], dtype=bool) for mk in masks]
    assert len(got) == len(expected)
    for g, e, t in zip(got, expected, range(10, 16)):
        np.testing.assert_array_equal(g, e)
        np.testing.assert_array_equal(g, wl.routing.mask[t])
    assert counters == model.counters


@pytest.mark.filterwarnings("ignore:.*created but never used")
def test_go_cache_errors_and_export(tmp_path):
    from moepim.hw.params import ParameterError
    from moepim.sim.build import export_component
    from moepim.sim.lint import compile_icarus, lint_verilator

    from .conftest import need_icarus

    with pytest.raises(ParameterError, match="capacity=0"):
        GateOutputCache(n_experts=4, capacity=0, max_tokens=8)
    gc.collect()   # the half-built object warns here, under this test's filter
    with pytest.raises(ValueError, match="capacity=0"):
        GoCacheModel(n_experts=4, score_bits=16, capacity=0)
    v, _ = export_component(GateOutputCache(n_experts=16, capacity=64, max_tokens=4096),
                            "go_cache", tmp_path)
    lint = lint_verilator(v, "go_cache")
    assert lint.returncode == 0, lint.stderr[-3000:]
    need_icarus()
    assert compile_icarus(v, "go_cache").returncode == 0
