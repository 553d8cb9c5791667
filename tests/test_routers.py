"""Routers and the gate softmax against the integer routing of the workloads (all simulators)."""

import dataclasses
import gc

import numpy as np
import pytest

from moepim.hw.routers import ExpertChoiceRouter, TokenChoiceRouter
from moepim.hw.softmax import GateSoftmax, exp_table
from moepim.models.quant import EXP_LUT, gate_logits_int
from moepim.models.routing import expert_choice_capacity, expert_choice_mask
from moepim.models.workload import make_workload
from moepim.sim.block_run import run_bench
from moepim.sim.config import REPO_ROOT, load_model

from .conftest import SIMULATORS, need_simulator

ZOO = REPO_ROOT / "configs" / "models"


def small(name, **kw):
    cfg = load_model(ZOO / f"{name}.yaml")
    return dataclasses.replace(cfg, d_model=64, d_ff=32, n_experts=kw.get("n_experts", 8),
                               shared=dataclasses.replace(cfg.shared, d_ff=32
                                                          if cfg.shared.n_shared else 0))


def test_exp_table_is_the_models():
    assert exp_table() == EXP_LUT.tolist()


@pytest.mark.parametrize("sim", SIMULATORS)
@pytest.mark.parametrize("name", ["mixtral-8x7b", "olmoe-1b-7b", "llama-moe-3.5b-4-16"])
def test_token_router_matches_workload_routing(sim, name):
    """Renormalised (Mixtral, LLaMA-MoE) and plain (OLMoE) softmax weights, bit-exact."""
    need_simulator(sim)
    cfg = small(name)
    k = min(cfg.router.top_k, 8)
    wl = make_workload(cfg, n_prompt=10, seed=7)
    logits = gate_logits_int(wl.x_q, wl.quant)
    bits = int(np.abs(logits).max()).bit_length() + 2
    renorm = cfg.router.renormalize or cfg.router.kind == "mlp_gate"
    unit = TokenChoiceRouter(n_experts=cfg.n_experts, k=k, logit_bits=bits,
                             renormalize=renorm, gate_bits=cfg.quant.gate_bits)
    idx = wl.quant.gate_index
    tokens = [[row.tolist(), k, idx.mult, idx.shift] for row in logits]
    stall = sim == "amaranth"
    routes = run_bench(unit, top="token_router", bench="token_router", sim=sim, args=dict(
        tokens=tokens, logit_bits=bits, gap_p=0.3 if stall else 0.0,
        stall_p=0.3 if stall else 0.0, seed=3))
    for t, (experts, weights, cycles) in enumerate(routes):
        want = np.argsort(-logits[t], kind="stable")[:k].tolist()
        assert experts == want
        assert weights == [int(wl.routing.weights[t, e]) for e in want]
        assert sorted(experts) == np.flatnonzero(wl.routing.mask[t]).tolist()
        if stall:
            assert cycles >= unit.latency(k)
        else:
            assert cycles == unit.latency(k)


@pytest.mark.parametrize("sim", SIMULATORS)
@pytest.mark.parametrize("n", [5, 16])
def test_gate_softmax_is_bit_exact_with_int_softmax(sim, n):
    """Every Q0.16 probability (not only the top gate_bits of a weight) equals
    ``models.quant.int_softmax``: random logits, masks of every size, table indices that
    clamp at 255, shift 0; cycles equal ``latency``."""
    from moepim.models.quant import Requant, int_softmax

    need_simulator(sim)
    rng = np.random.default_rng(n)
    bits = 20
    unit = GateSoftmax(n_experts=n, logit_bits=bits)
    rows = []
    for i in range(12):
        logits = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), n)
        if i % 3 == 0:
            logits = rng.integers(-40, 40, n)             # close logits: many similar terms
        mask = rng.random(n) < (i + 1) / 12
        mask[rng.integers(n)] = True
        mult, shift = int(rng.integers(1, 1 << 16)), int(rng.integers(0, 40))
        rows.append([logits.tolist(), mask.tolist(), mult, shift])
    rows.append([[7] * n, [True] * n, 1, 0])               # all equal: 1/n each
    rows.append([[0] * (n - 1) + [1], [False] * (n - 1) + [True], 1, 0])   # one: full scale
    out = run_bench(unit, top="gate_softmax", bench="gate_softmax", sim=sim, args=dict(
        rows=rows, logit_bits=bits, stall_p=0.0, seed=1))
    for (logits, mask, mult, shift), (probs, cycles) in zip(rows, out):
        want = int_softmax(np.array(logits), Requant(mult, shift), np.array(mask))
        assert probs == want.tolist(), (logits, mask, mult, shift)
        assert cycles == unit.latency(sum(mask))


@pytest.mark.parametrize("sim", SIMULATORS)
def test_expert_choice_router_matches_workload(sim):
    need_simulator(sim)
    cfg = small("llama-moe-3.5b-4-16-paper", n_experts=6)
    wl = make_workload(cfg, n_prompt=12, seed=4)
    scores = wl.routing.scores                      # Q0.16 integer softmax per token
    cap = expert_choice_capacity(12, cfg.n_experts, cfg.router.ec_capacity_factor)
    unit = ExpertChoiceRouter(n_tokens=16, n_experts=cfg.n_experts, c_max=8)
    windows = [[scores.tolist(), cap], [scores[:7].tolist(), 3]]
    out = run_bench(unit, top="expert_router", bench="expert_router", sim=sim,
                    args=dict(windows=windows, gap_p=0.3, stall_p=0.3, seed=1))
    for (rows, c), got in zip(windows, out):
        mask = np.zeros((len(rows), cfg.n_experts), dtype=bool)
        for e, t in got:
            mask[t, e] = True
        np.testing.assert_array_equal(mask, expert_choice_mask(np.array(rows), c))
        assert [e for e, _ in got] == sorted(e for e, _ in got)     # expert by expert
    np.testing.assert_array_equal(
        expert_choice_mask(scores, cap), wl.routing.mask)            # = the workload's prompt


@pytest.mark.filterwarnings("ignore:.*created but never used")
def test_router_cycle_formulas():
    unit = TokenChoiceRouter(n_experts=16, k=4, logit_bits=24, renormalize=True)
    sm = GateSoftmax(n_experts=16, logit_bits=24)
    # one reciprocal (18 quotient bits + 1) per token, whatever the mask
    assert sm.latency(4) == sm.latency(16) == 2 * 16 + 4 + 18 + 1
    assert unit.latency(4) == 16 + 4 + 2 + sm.latency(4)
    ec = ExpertChoiceRouter(n_tokens=40, n_experts=16, c_max=10)
    assert ec.select_cycles(40, 10) == 16 * 51
    del unit, sm, ec
    gc.collect()   # built for their formulas only; they warn here, under this test's filter


@pytest.mark.filterwarnings("ignore:.*created but never used")
def test_router_parameter_errors():
    from moepim.spec.checks import ParameterError

    with pytest.raises(ParameterError, match="k=9"):
        TokenChoiceRouter(n_experts=16, k=9, logit_bits=20, renormalize=False)
    with pytest.raises(ParameterError, match="k=5"):
        TokenChoiceRouter(n_experts=4, k=5, logit_bits=20, renormalize=False)
    with pytest.raises(ParameterError, match="c_max=0"):
        ExpertChoiceRouter(n_tokens=8, n_experts=4, c_max=0)
    gc.collect()


@pytest.mark.parametrize("make, top", [
    (lambda: TokenChoiceRouter(n_experts=16, k=4, logit_bits=24, renormalize=True),
     "token_router"),
    (lambda: ExpertChoiceRouter(n_tokens=64, n_experts=16, c_max=16), "expert_router"),
])
def test_router_exports_lint_clean(tmp_path, make, top):
    from moepim.sim.build import export_component
    from moepim.sim.lint import compile_icarus, lint_verilator

    from .conftest import need_icarus

    v, _ = export_component(make(), top, tmp_path)
    lint = lint_verilator(v, top)
    assert lint.returncode == 0, lint.stderr[-3000:]
    need_icarus()
    assert compile_icarus(v, top).returncode == 0


@pytest.mark.xdist_group("verilator-small")
def test_gate_mvm_on_crossbar_tiles_feeds_the_expert_choice_router():
    """Gate scores from the gate matrix on crossbar tiles (the TileGroup RTL: one crossbar per
    row tile sharing one peripheral set), partial sums added, the integer softmax, then the
    expert-choice router RTL: the selection equals the accelerator's golden routing."""
    from moepim.hw import TileGroup
    from moepim.models.pim import CrossbarMatmul
    from moepim.models.quant import int_softmax
    from moepim.sim.tile_run import _field_maps
    from moepim.spec.tile import TileSpec

    need_simulator("verilator")
    cfg = load_model(REPO_ROOT / "configs" / "models" / "reduced" / "tiny-ec-256.yaml")
    tile = dict(n_rows=64, n_columns=64, bits_per_cell=8, weight_bits=8, input_bits=8,
                n_adcs=8, adc_bits=8, adc_shift=None)
    shape = TileSpec(**tile)
    wl = make_workload(cfg, n_prompt=10, seed=5, matmul=CrossbarMatmul(shape))
    w_gate = wl.quant.tensors["gate.weight"].astype(np.int64)           # (d_model, experts)
    n_rt = cfg.d_model // shape.n_rows
    weights = []
    for i in range(n_rt):
        w = np.zeros((shape.n_rows, shape.n_outputs), dtype=np.int64)
        w[:, :cfg.n_experts] = w_gate[i * shape.n_rows:(i + 1) * shape.n_rows]
        weights.append(w.tolist())
    xs, xbar = [], []
    for t in range(wl.n_prompt):
        for i in range(n_rt):
            xs.append(wl.x_q[t, i * shape.n_rows:(i + 1) * shape.n_rows].tolist())
            xbar.append(i)
    group = TileGroup(tile=TileSpec(**tile), group_size=n_rt, core="macro")
    res = run_bench(group, top="tile_group", bench="tile_scenario", sim="verilator",
                    args={"weights": weights, "xs": xs, "xbar": xbar, "gaps": [0] * len(xs),
                          "ready_pattern": [1, 1, 0], "fields": _field_maps(group),
                          "timeout": 100_000})
    partial = np.array(res["y"], dtype=np.int64).reshape(wl.n_prompt, n_rt, -1)
    logits = partial.sum(axis=1)[:, :cfg.n_experts]                     # partial-sum adders
    np.testing.assert_array_equal(logits, gate_logits_int(wl.x_q[:wl.n_prompt], wl.quant,
                                                          CrossbarMatmul(shape)))
    scores = int_softmax(logits, wl.quant.gate_index)
    np.testing.assert_array_equal(scores, wl.routing.scores[:wl.n_prompt])
    cap = expert_choice_capacity(wl.n_prompt, cfg.n_experts, cfg.router.ec_capacity_factor)
    unit = ExpertChoiceRouter(n_tokens=16, n_experts=cfg.n_experts, c_max=8)
    got = run_bench(unit, top="expert_router", bench="expert_router", sim="verilator",
                    args=dict(windows=[[scores.tolist(), cap]], gap_p=0.2, stall_p=0.2,
                              seed=2))[0]
    mask = np.zeros((wl.n_prompt, cfg.n_experts), dtype=bool)
    for e, t in got:
        mask[t, e] = True
    np.testing.assert_array_equal(mask, wl.routing.mask[:wl.n_prompt])
