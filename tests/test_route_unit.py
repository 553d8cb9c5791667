"""The route unit's blocks on their own: the gate front end (``moepim.hw.gate``) and the two
router stages (``moepim.hw.route_back_end``), one scenario list per block, each scenario run
on the golden integer model and on Amaranth's simulator and Verilator through the same bench
(``moepim.testbenches.route_benches``).

Checked per scenario: every logit, shared-gate weight and route bit-exact against the golden
model (``moepim.models.pim.CrossbarMatmul``, ``moepim.models.quant.int_softmax``,
``moepim.models.routing``), and the cycles against the timing model
(``moepim.spec.timing.RouteTiming``: the gate's ``gate_cycles``, the router's
``router_cycles`` between hand-overs and ``close_cycles`` to the closing beat). The whole
route unit inside the layer is tested in ``tests/test_moe_layer.py``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from moepim.hw.gate import TABLE_SIGMOID, TABLE_TANH, GateFrontEnd
from moepim.hw.route_back_end import ExpertChoiceBackEnd, TopKBackEnd
from moepim.hw.route_unit import RouteUnit
from moepim.models.pim import CrossbarMatmul, bank_file_words, bank_image
from moepim.models.quant import Requant, int_softmax
from moepim.models.routing import (
    apply_capacity,
    expert_choice_capacity,
    expert_choice_mask,
    topk_mask,
)
from moepim.sim.amaranth_macro import add_bank_model
from moepim.sim.block_run import run_bench
from moepim.spec.checks import ParameterError, ceil_div
from moepim.spec.numerics import SCORE_BITS
from moepim.spec.tile import TileSpec
from moepim.spec.timing import MODE_WINDOW, RouteTiming

from .conftest import need_simulator

SIMS = ("amaranth", "verilator")
TILE = TileSpec(n_rows=16, n_columns=16, bits_per_cell=2, weight_bits=4, input_bits=4,
                n_adcs=4, adc_bits=8)
TIME = pytest.mark.xdist_group("route_unit")


def _sim_ok(sim):
    if sim != "amaranth":
        need_simulator(sim)


# ---------------------------------------------------------------------------------------------
# the gate front end

@dataclasses.dataclass(frozen=True)
class GateCase:
    name: str
    d_model: int = 32
    n_experts: int = 4
    lanes: int = 4
    gate_hidden: int = 0
    shared_gate: bool = False
    n_tokens: int = 3
    stall_p: float = 0.0
    seed: int = 1


GATE_CASES = [
    GateCase("linear"),
    GateCase("shared_gate", n_experts=5, shared_gate=True, stall_p=0.3, seed=2),
    GateCase("mlp", d_model=16, gate_hidden=12, lanes=2, seed=3),
]


def _gate_golden(case: GateCase, rng):
    """Weights, tables, token vectors and the expected logits / shared weights."""
    ib, wb = TILE.input_bits, TILE.weight_bits
    wlim, xlim = (1 << (wb - 1)) - 1, (1 << (ib - 1)) - 1
    n_cols = case.n_experts + case.shared_gate
    mm = CrossbarMatmul(TILE)
    x = rng.integers(-xlim, xlim + 1, size=(case.n_tokens, case.d_model))
    held, tables = {}, []
    if case.gate_hidden:
        w1 = rng.integers(-wlim, wlim + 1, size=(case.d_model, case.gate_hidden))
        w2 = rng.integers(-wlim, wlim + 1, size=(case.gate_hidden, n_cols))
        mats = [w1, w2]
        tanh = rng.integers(-xlim, xlim + 1, size=1 << ib)
        tables += [(TABLE_TANH, a, int(v)) for a, v in enumerate(tanh)]
        rq = Requant(mult=3, shift=4)
        held.update(hidden_mult=rq.mult, hidden_shift=rq.shift)
        h = np.clip(rq.apply(mm(x, w1)), -xlim, xlim)
        logits = mm(tanh[h + (1 << (ib - 1))], w2)
    else:
        w = rng.integers(-wlim, wlim + 1, size=(case.d_model, n_cols))
        mats = [w]
        logits = mm(x, w)
    shared = None
    if case.shared_gate:
        sig = rng.integers(0, 256, size=1 << ib)
        tables += [(TABLE_SIGMOID, a, int(v)) for a, v in enumerate(sig)]
        rq = Requant(mult=5, shift=6)
        held.update(shared_mult=rq.mult, shared_shift=rq.shift)
        shared = sig[np.clip(rq.apply(logits[:, -1]), -xlim, xlim) + (1 << (ib - 1))]
        logits = logits[:, :-1]
    return x, mats, held, tables, logits, shared


@TIME
@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("case", GATE_CASES, ids=lambda c: c.name)
def test_gate_front_end_logits_and_cycles(case, sim, tmp_path):
    _sim_ok(sim)
    rng = np.random.default_rng(case.seed)
    x, mats, held, tables, logits, shared = _gate_golden(case, rng)
    fe = GateFrontEnd(d_model=case.d_model, n_experts=case.n_experts, n_tokens=8,
                      lanes=case.lanes, tile=TILE, gate_hidden=case.gate_hidden,
                      shared_gate=case.shared_gate)
    images = [bank_image([w], 1, w.shape[0], w.shape[1], TILE) for w in mats]
    plusargs = []
    for k, image in enumerate(images):
        path = tmp_path / f"bank{k}.bin"
        bank_file_words(image, TILE, 1).tofile(path)
        plusargs.append(f"+MOEPIM_BANK{k}={path}")

    def setup(simulator):
        for bank, image in zip(fe.banks, images):
            add_bank_model(simulator, bank, image)

    tokens = [[t, int(t == case.n_tokens - 1), x[t].tolist()] for t in range(case.n_tokens)]
    got = run_bench(fe, top=f"gate_front_end_{case.name}", bench="gate_front_end", sim=sim,
                    setup=setup, plusargs=plusargs, preset={"bank_id": 0},
                    args=dict(tokens=tokens, lanes=case.lanes, input_bits=TILE.input_bits,
                              held=held, tables=tables, n_experts=case.n_experts,
                              shared_gate=case.shared_gate, stall_p=case.stall_p,
                              seed=case.seed))
    lb = fe.logit_bits
    widths = [case.gate_hidden] if case.gate_hidden else []
    widths.append(case.n_experts + case.shared_gate)
    timing = RouteTiming(router="top_k", n_experts=case.n_experts,
                         gate_stages=tuple((TILE.mvm_latency, ceil_div(w, case.lanes))
                                           for w in widths))
    for t, (lg, sw, tok, last, cycles) in enumerate(got):
        raw = [v & ((1 << lb) - 1) for v in lg]          # as bits: either simulator's reading
        signed = [v - (1 << lb) if v >> (lb - 1) else v for v in raw]
        assert signed == logits[t].tolist(), f"token {t}: logits"
        if case.shared_gate:
            assert sw == shared[t], f"token {t}: shared weight"
        assert (tok, last) == (t, int(t == case.n_tokens - 1))
        assert cycles == timing.gate_cycles, f"token {t}: gate cycles"


def test_gate_cycles_by_hand():
    """The linear case's ``gate_cycles`` worked by hand: a 4-bit input over 16 columns with
    4 ADCs (4 columns per ADC) is ``4 * 4 + 4 = 20`` cycles of MVM; 4 experts in blocks of
    4 lanes is 1 logit block; start + MVM + blocks + 1 = ``20 + 1 + 2 = 23``."""
    assert TILE.mvm_latency == 20
    assert RouteTiming(router="top_k", n_experts=4, gate_stages=((20, 1),)).gate_cycles == 23


def test_gate_front_end_refuses_bad_parameters():
    with pytest.raises(ParameterError, match="gate_hidden"):
        GateFrontEnd(d_model=32, n_experts=4, n_tokens=4, lanes=4, tile=TILE, gate_hidden=-1)
    with pytest.raises(ParameterError, match="shared_gate"):
        GateFrontEnd(d_model=32, n_experts=4, n_tokens=4, lanes=4, tile=TILE, gate_hidden=8,
                     shared_gate=True)
    with pytest.raises(ParameterError, match="tile"):
        GateFrontEnd(d_model=32, n_experts=4, n_tokens=4, lanes=4, tile=dict(n_rows=16))


# ---------------------------------------------------------------------------------------------
# the router stages

@dataclasses.dataclass(frozen=True)
class StageCase:
    name: str
    router: str
    n_experts: int = 4
    top_k: int = 1
    renormalize: bool = False
    drop: bool = False
    shared_gate: bool = False
    windows: tuple = (6,)           # tokens per window
    gap_p: float = 0.0
    stall_p: float = 0.0
    seed: int = 1


STAGE_CASES = [
    StageCase("expert_choice", "expert_choice", windows=(6, 3)),
    StageCase("expert_choice_shared", "expert_choice", n_experts=3, shared_gate=True,
              windows=(5,), gap_p=0.3, stall_p=0.3, seed=4),
    StageCase("top_2_renormalized", "top_k", n_experts=6, top_k=2, renormalize=True,
              windows=(5, 4)),
    StageCase("top_1_dropping", "top_k", n_experts=3, drop=True, windows=(7,), seed=5),
    StageCase("top_2_back_pressure", "top_k", n_experts=5, top_k=2, gap_p=0.4, stall_p=0.4,
              seed=6),
]
LOGIT_BITS, GATE_BITS, N_TOKENS = 10, 8, 8
INDEX = Requant(mult=400, shift=9)


def _stage(case: StageCase, ec_c_max: int = 4):
    common = dict(n_experts=case.n_experts, n_tokens=N_TOKENS, logit_bits=LOGIT_BITS,
                  gate_bits=GATE_BITS, shared_gate=case.shared_gate)
    if case.router == "expert_choice":
        return ExpertChoiceBackEnd(c_max=ec_c_max, **common)
    return TopKBackEnd(top_k=case.top_k, renormalize=case.renormalize, drop=case.drop,
                       **common)


def _stage_golden(case: StageCase, logits, cap):
    """The window's routes ``(token, expert, weight)`` as a sorted list."""
    shift = SCORE_BITS - GATE_BITS
    if case.router == "expert_choice":
        p16 = int_softmax(logits, INDEX)
        mask = expert_choice_mask(p16, cap)
    else:
        mask = topk_mask(logits, case.top_k)
        p16 = int_softmax(logits, INDEX, mask if case.renormalize else None)
        if case.drop:
            mask, _ = apply_capacity(mask, cap)
    return sorted((int(t), int(e), int(p16[t, e] >> shift)) for t, e in zip(*np.nonzero(mask)))


@TIME
@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("case", STAGE_CASES, ids=lambda c: c.name)
def test_router_stage_routes_and_cycles(case, sim):
    _sim_ok(sim)
    rng = np.random.default_rng(case.seed)
    lim = 1 << (LOGIT_BITS - 1)
    windows, expected = [], []
    for n in case.windows:
        logits = rng.integers(-lim // 4, lim // 4, size=(n, case.n_experts))
        shared = rng.integers(0, 1 << GATE_BITS, size=n)
        if case.router == "expert_choice":
            cap = expert_choice_capacity(n, case.n_experts, 1.0)
        else:
            cap = 2 if case.drop else N_TOKENS
        windows.append({"held": {"mode": MODE_WINDOW, "cap": cap, "index_mult": INDEX.mult,
                                 "index_shift": INDEX.shift},
                        "tokens": [[t, logits[t].tolist(), int(shared[t])] for t in range(n)]})
        expected.append((logits, shared, cap))
    stage = _stage(case)
    got = run_bench(stage, top=f"route_stage_{case.name}", bench="route_stage", sim=sim,
                    args=dict(windows=windows, logit_bits=LOGIT_BITS,
                              shared_gate=case.shared_gate, gap_p=case.gap_p,
                              stall_p=case.stall_p, seed=case.seed))
    timing = RouteTiming(router=case.router, n_experts=case.n_experts, gate_stages=((1, 1),),
                         shared_gate=case.shared_gate)
    for w, ((logits, shared, cap), res) in enumerate(zip(expected, got)):
        routes = [tuple(r) for r in res["routes"]]
        main = [r for r in routes if r[1] < case.n_experts]
        assert sorted(main) == _stage_golden(case, logits, cap), f"window {w}: routes"
        if case.shared_gate:
            beats = [r for r in routes if r[1] == case.n_experts]
            assert beats == [(t, case.n_experts, int(shared[t])) for t in range(len(logits))]
        if case.router == "top_k":
            # per token its routes leave together, in token order
            assert [r[0] for r in main] == sorted(r[0] for r in main)
        if case.gap_p or case.stall_p:
            continue        # the cycle formulas hold without gaps and back-pressure
        n_routes = [case.top_k] * len(logits)
        taken = res["taken"]
        for t in range(1, len(taken)):
            assert taken[t] - taken[t - 1] == timing.router_cycles(
                MODE_WINDOW, first=t == 1, n_routes=n_routes[t - 1]), f"token {t - 1}"
        assert res["closed"] - taken[-1] == timing.router_cycles(
            MODE_WINDOW, n_routes=n_routes[-1]) + timing.close_cycles(
            MODE_WINDOW, len(logits), cap) - 1


def test_route_unit_is_its_stages():
    """The route unit composes the blocks tested here: its ports are theirs, its counters
    both stages' in order, and the blocks the layer exports are these objects."""
    ru = RouteUnit(d_model=32, n_experts=4, n_tokens=N_TOKENS, lanes=4, router="top_k",
                   top_k=2, drop=True, tile=TILE)
    assert isinstance(ru.front, GateFrontEnd) and isinstance(ru.back, TopKBackEnd)
    assert [n for n, _ in ru.counters.shape()] == ["gate_mvms", "gate_dac_drives",
                                                   "route_drops"]
    assert ru.o_routes.signature == ru.back.o_routes.signature
    assert ru.i_tokens.signature == ru.front.i_tokens.signature
    assert ru.tc is ru.back.tc and ru.bank is ru.front.bank and ru.drop
    ec = RouteUnit(d_model=32, n_experts=4, n_tokens=N_TOKENS, lanes=4,
                   router="expert_choice", go_cache_rows=2, max_sequence=8, tile=TILE)
    assert ec.go is ec.back.go and ec.softmax is ec.back.softmax and ec.has_go_cache
    assert [n for n, _ in ec.counters.shape()][:2] == ["gate_mvms", "gate_dac_drives"]


def test_router_stages_refuse_bad_parameters():
    with pytest.raises(ParameterError, match="max_sequence"):
        ExpertChoiceBackEnd(n_experts=4, n_tokens=4, logit_bits=10, go_cache_rows=4, max_sequence=2)
    with pytest.raises(ParameterError, match="go_cache_rows"):
        ExpertChoiceBackEnd(n_experts=4, n_tokens=4, logit_bits=10, go_cache_rows=-1)
    with pytest.raises(ParameterError, match="n_experts"):
        TopKBackEnd(n_experts=0, n_tokens=4, logit_bits=10)
