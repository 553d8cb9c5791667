"""The whole decoder layer as one design (``moepim.hw.decoder_layer.DecoderLayer``: the
attention half, the x1 buffer, the MoE norm, the MoE layer with its expert-choice router and
GO cache, the second residual), through the ``decoder_layer_windows`` bench on Amaranth's
simulator, Verilator and Icarus.

A reduced layer: the attention half of ``tests/test_attention_block.py`` (``d_model`` 32, 4
query heads of 8 over 2 K/V heads, 4 lanes, LayerNorm, RoPE, two attention units, a 16 x 16
tile of 2-bit cells and 4-bit weights with an ideal 6-bit ADC, 8-bit codes) and a small MoE
layer (4 ReLU experts of ``d_ff`` 16 in 2 groups of 2, expert choice with capacity factor 2,
the GO cache). Weights are ``moepim.models.decoder.init_decoder_weights``'s, quantised by
``quantize_decoder`` on the prompt; the golden is ``decoder_forward_int`` on the tile's
crossbar arithmetic, window by window with the KV cache: a 4-row prompt window (routed as a
window, its gate scores stored in the GO cache of 4 SRAM rows), then two one-row decode
windows (each token decided by the GO cache, ``expert_choice_decode``; the second reads its
fifth row back through the layer's DRAM ports from the bench's DRAM), the host's plans
scheduled from the golden routing (``moepim.sim.moe_run.prepare_windows``). Also on
Amaranth's simulator: the host routing every window (an empty plan and a one-job plan among
them), and input gaps with back-pressure on ``o_rows`` (codes and routes).

Checked: every ``y`` code and ``last`` flag, every route, and each window's cycles (first
``i_rows`` handshake to the cycle after the last ``o_rows`` handshake) and each phase's against
``moepim.spec.timing.decoder_layer_phases`` (the MoE layer's route and compute cycles from its
``LayerTiming``), the MoE layer's routing counter against its formula. Parameter errors name
the argument.

The KV cache in DRAM (``kv_cache_rows`` 2 on Verilator and Icarus, 0 on Amaranth's
simulator): the attention block's rows at positions ``>= kv_cache_rows`` go through the
layer's one DRAM port (the KV region after the GO cache's), the prompt spilling, the decodes
fetching the earlier rows and spilling theirs; the same codes, routes and cycle checks with
the KV DRAM phases, and each window's KV DRAM words and the ``kv_counters`` against the
priced model (``moepim.sim.generation_run._kv_traffic``)."""

from __future__ import annotations

import dataclasses
import gc
from types import SimpleNamespace

import numpy as np
import pytest

from moepim.hw.attention_block import KV_COUNTERS
from moepim.hw.decoder_layer import PHASES, DecoderLayer
from moepim.hw.expert_engine import SHIFT_BITS
from moepim.hw.norm import NORM_SHIFT_BITS
from moepim.hw.rope import COEF_BITS, table_rows
from moepim.hw.route_unit import INDEX_MULT_BITS, INDEX_SHIFT_BITS
from moepim.models.decoder import (
    _quant,
    decoder_forward_int,
    init_decoder_weights,
    quantize_decoder,
    rope_tables,
)
from moepim.models.generation import step_work
from moepim.models.pim import CrossbarMatmul, bank_file_words, bank_image
from moepim.models.quant import route_int
from moepim.models.routing import expert_choice_capacity, expert_choice_decode
from moepim.models.workload import hidden_states, workload_of_inputs
from moepim.models.zoo import QuantConfig, RouterConfig
from moepim.sim.amaranth_macro import add_bank_model
from moepim.sim.block_run import run_bench
from moepim.sim.config import REPO_ROOT, load_model
from moepim.sim.generation_run import _kv_traffic
from moepim.sim.moe_run import (
    bank_images,
    expected_compute_cycles,
    expected_route_cycles,
    layer_groups,
    prepare_windows,
    write_bank_images,
)
from moepim.spec import timing
from moepim.spec.checks import ParameterError
from moepim.spec.layer import LayerSpec
from moepim.spec.tile import TileSpec
from moepim.spec.timing import MODE_HOST, LayerTiming

from .conftest import need_simulator

TIME = pytest.mark.xdist_group("decoder_layer")

TILE = TileSpec(n_rows=16, n_columns=16, bits_per_cell=2, weight_bits=4, input_bits=8,
                n_adcs=8, adc_bits=6)
QUANT = QuantConfig(weight_bits=TILE.weight_bits, act_bits=TILE.input_bits,
                    multiplier_bits=15, gate_bits=8)
EC_FACTOR = 2.0                 # expert choice: each expert takes ceil(2 T / 4) of T tokens
CFG = dataclasses.replace(
    load_model(REPO_ROOT / "configs" / "models" / "reduced" / "tiny-ec-256.yaml"),
    d_model=32, d_ff=16, n_experts=4, n_heads=4, n_kv_heads=2, head_dim=8, norm="layernorm",
    rope_theta=10000.0, quant=QUANT,
    router=RouterConfig(kind="expert_choice", ec_capacity_factor=EC_FACTOR))
LANES, N_ATTENTION_UNITS = 4, 2
PROMPT, N_DECODE = 4, 2                 # a 4-row prompt window, then two one-row decodes
N_POSITIONS = PROMPT + N_DECODE
GROUPS = [[0, 1], [2, 3]]               # experts per group
POLICY = "reschedule"
SEED = 5
AB = QUANT.act_bits
SHIFT_MAX = (1 << SHIFT_BITS) - 1       # the requantisers' shifts
ATTENTION = dict(n_heads=CFG.n_heads, n_kv_heads=CFG.kv_heads, head_dim=CFG.head_size,
                 n_positions=N_POSITIONS, n_attention_units=N_ATTENTION_UNITS, center=True,
                 rope=True)
SPEC = LayerSpec(d_model=CFG.d_model, d_ff=CFG.d_ff, n_experts=CFG.n_experts,
                 n_groups=len(GROUPS), group_size=max(map(len, GROUPS)), n_tokens=PROMPT,
                 lanes=LANES, gate_bits=QUANT.gate_bits, multiplier_bits=QUANT.multiplier_bits,
                 router="expert_choice",
                 c_max=expert_choice_capacity(PROMPT, CFG.n_experts, EC_FACTOR),
                 go_cache_rows=PROMPT, max_sequence=N_POSITIONS)


def _layer(kv_cache_rows=None) -> DecoderLayer:
    return DecoderLayer(layer=SPEC, tile=TILE,
                        attention=dict(ATTENTION, kv_cache_rows=kv_cache_rows))


def _golden(decode_masks=None):
    """The quantised layer, every window's golden ``y`` rows and MoE windows (plans, routes),
    window by window as the hardware runs them. ``decode_masks``: the decode windows' expert
    selections chosen by a host (default: the decode rule)."""
    mm = CrossbarMatmul(TILE)
    w = init_decoder_weights(CFG, SEED)
    x = hidden_states(CFG, N_POSITIONS, SEED + 1)
    dq = quantize_decoder(w, CFG, x[:PROMPT])
    x_q = _quant(x, dq.s_x, AB)
    spans = [(0, PROMPT)] + [(PROMPT + k, 1) for k in range(N_DECODE)]
    ys, h2s, masks, x1s, cache, scores = [], [], [], [], None, None
    for p0, n in spans:
        rows = x_q[p0:p0 + n]
        routing = None
        if p0:
            # the decode rule from the earlier tokens' gate scores (what the GO cache decides)
            _, _, first = decoder_forward_int(rows, dq, cache=cache, matmul=mm)
            new = route_int(first["h2"], dq.moe, matmul=mm).scores[0]
            sel = expert_choice_decode(scores, new, EC_FACTOR) if decode_masks is None \
                else np.asarray(decode_masks[len(ys) - 1], dtype=bool)
            routing = route_int(first["h2"], dq.moe, mask=sel[None], matmul=mm)
        y, cache, mid = decoder_forward_int(rows, dq, cache=cache, routing=routing, matmul=mm)
        scores = mid["routing"].scores if scores is None else \
            np.vstack([scores, mid["routing"].scores])
        ys.append(y)
        h2s.append(mid["h2"])
        x1s.append(mid["x1"])
        masks.append(mid["routing"].mask)
    moe_w = {k: v for k, v in w.items() if not k.startswith(("attn", "moe_norm"))}
    wl = workload_of_inputs(CFG, seed=SEED, n_prompt=PROMPT, x_q=np.vstack(h2s), quant=dq.moe,
                            weights=moe_w, mask=np.vstack(masks), matmul=mm)
    groups = layer_groups(GROUPS, CFG)
    windows = _moe_windows(wl, groups, mm, host=False)
    y_all = np.vstack(ys)
    # the golden's pieces agree: the MoE windows' outputs give the layer's y
    x1 = np.vstack(x1s)
    y_check = np.clip(dq.requant["res2.x1"].apply(x1) + dq.requant["res2.moe"].apply(wl.y_q),
                      -(1 << (AB - 1)) + 1, (1 << (AB - 1)) - 1)
    assert np.array_equal(y_check, y_all)
    # not degenerate: outputs spread over the codes, every window routes tokens
    assert len(np.unique(y_all)) > 40 and (np.abs(y_all) < (1 << (AB - 1)) - 1).mean() > 0.5
    assert decode_masks is not None or all(len(win.jobs) > 0 for win in windows)
    return {"dq": dq, "mm": mm, "x_q": x_q, "y": y_all, "wl": wl, "groups": groups,
            "windows": windows, "spans": spans}


def _moe_windows(wl, groups, mm, *, host: bool):
    """The MoE layer's windows with their plans: routed on the layer (the prompt window with
    its GO-cache insert, the decodes from the GO cache), or by the host (``MODE_HOST``)."""
    return prepare_windows(wl, groups, POLICY, go_cache=True, matmul=mm, hw_routing=not host,
                           go_cache_rows=SPEC.go_cache_rows)


def _expected_routes(win):
    """The routes the layer emits: the golden selections, none when the host routes."""
    return [] if win.route_mode == MODE_HOST else win.expected_routes(CFG.n_experts)


def _norm_words(nq):
    return [[nq.gamma[i:i + LANES].tolist()]
            + ([nq.beta[i:i + LANES].tolist()] if nq.center else [])
            for i in range(0, CFG.d_model, LANES)]


def _held(dq) -> dict:
    held = {}
    for prefix, nq in (("norm", dq.norms["attn_norm"]), ("moe_norm", dq.norms["moe_norm"])):
        assert nq.requant.shift < 1 << NORM_SHIFT_BITS
        held.update({f"{prefix}_eps": nq.eps, f"{prefix}_mult": nq.requant.mult,
                     f"{prefix}_shift": nq.requant.shift})
    rqs = {"q": dq.requant["attn.q"], "k": dq.requant["attn.k"], "v": dq.requant["attn.v"],
           "o": dq.requant["attn.o"], "res": dq.requant["res1.x"],
           "index": dq.attn_index, "res2_x1": dq.requant["res2.x1"],
           "res2_moe": dq.requant["res2.moe"], "combine": dq.moe.requant["combine"]}
    for name, rq in rqs.items():
        assert rq.shift <= SHIFT_MAX, name
        held[f"{name}_mult"], held[f"{name}_shift"] = rq.mult, rq.shift
    gi = dq.moe.gate_index
    assert gi.mult < 1 << INDEX_MULT_BITS and gi.shift < 1 << INDEX_SHIFT_BITS
    held["gate_index_mult"], held["gate_index_shift"] = gi.mult, gi.shift
    return {k: int(v) for k, v in held.items()}


def _run(sim, g, tmp_path, *, host=False, gap_p=0.0, stall_p=0.0, seed=SEED,
         kv_cache_rows=None):
    if sim != "amaranth":
        need_simulator(sim)
    dut = _layer(kv_cache_rows)
    kv = kv_cache_rows is not None
    base = dut.attention_bank_base
    images = dict(bank_images(g["wl"], g["groups"], SPEC, TILE, g["mm"]))
    # cell images: the MoE layer's groups and gate first, the attention block's after them
    assert base == dut.moe.gate_bank_id + len(dut.moe.route_unit.banks) == len(images)
    for k, (name, unit) in enumerate(dut.attention.projections.items()):
        images[f"MOEPIM_BANK{base + k}"] = bank_image(
            [g["dq"].tensors[f"attn.{name}.weight"]], 1, unit.n_in, unit.n_out, TILE,
            matmul=g["mm"])
    plusargs = write_bank_images(tmp_path, g["wl"], g["groups"], SPEC, TILE, g["mm"])
    for k in range(len(dut.attention.projections)):
        path = tmp_path / f"MOEPIM_BANK{base + k}.bin"
        bank_file_words(images[f"MOEPIM_BANK{base + k}"], TILE, 1).tofile(path)
        plusargs.append(f"+MOEPIM_BANK{base + k}={path}")

    def setup(s):
        moe = dut.moe
        for gi, engine in enumerate(moe.group_engines):
            for k, name in enumerate(engine.bank_names):
                add_bank_model(s, engine.banks[name],
                               images[f"MOEPIM_BANK{len(engine.bank_names) * gi + k}"])
        for k, bank in enumerate(moe.route_unit.banks):
            add_bank_model(s, bank, images[f"MOEPIM_BANK{moe.gate_bank_id + k}"])
        for k, unit in enumerate(dut.attention.projections.values()):
            add_bank_model(s, unit.bank, images[f"MOEPIM_BANK{base + k}"])

    dq = g["dq"]
    windows = []
    g["windows"] = _moe_windows(g["wl"], g["groups"], g["mm"], host=host)
    for (p0, n), win in zip(g["spans"], g["windows"]):
        windows.append({
            "first_position": p0, "rows": g["x_q"][p0:p0 + n].tolist(),
            "route_mode": win.route_mode, "route_cap": win.route_cap,
            "go_insert": int(win.go_insert), "routes": _expected_routes(win),
            "jobs": [{"group": j.group, "token": j.token, "expert": j.expert,
                      "idle_before": j.idle_before, "operands": j.operands}
                     for j in win.jobs],
            "gap_p": gap_p, "stall_p": stall_p})
    cos, sin = rope_tables(CFG, N_POSITIONS)
    got = run_bench(dut, top="decoder_layer", bench="decoder_layer_windows", sim=sim,
                    args=dict(norm_params=_norm_words(dq.norms["attn_norm"]),
                              moe_norm_params=_norm_words(dq.norms["moe_norm"]),
                              rope_table=table_rows(cos, sin, lanes=LANES),
                              coef_bits=COEF_BITS, held=_held(dq), silu_tables=[],
                              gate_tables=[], windows=windows, lanes=LANES, act_bits=AB,
                              routing=True, dram=dut.moe.route_unit.has_go_cache or kv,
                              seed=seed, kv_dram_base=dut.kv_dram_base if kv else None),
                    setup=setup if sim == "amaranth" else None, plusargs=plusargs)
    return dut, got


def _check_values(g, got):
    """Every ``y`` code, ``last`` flag and route."""
    beats = CFG.d_model // LANES
    for (p0, n), win, res in zip(g["spans"], g["windows"], got):
        where = f"window at {p0}"
        assert res["outputs"] == g["y"][p0:p0 + n].tolist(), where
        assert res["lasts"] == [[0] * (beats - 1) + [1]] * n, where
        assert res["routes_match"], (where, res["routes"])
        assert res["routes"] == _expected_routes(win), where


def _check_cycles(g, dut, got):
    """Each window's and each phase's cycles against ``decoder_layer_phases``, the MoE
    layer's routing counter against its formula."""
    lt = LayerTiming.of(SPEC, TILE)
    prev_route = 0
    for (p0, n), win, res in zip(g["spans"], g["windows"], got):
        where = f"window at {p0}"
        route = expected_route_cycles(win, lt)
        assert res["counters"]["route_cycles"] - prev_route == (route or 0), where
        prev_route = res["counters"]["route_cycles"]
        want = dut.phase_cycles(n, p0, route=route, n_jobs=len(win.jobs),
                                compute=expected_compute_cycles(win, lt),
                                settle=lt.settle_cycles([j.group for j in win.jobs]))
        assert res["end"] - res["first_in"] == sum(want.values()), where
        # each phase: the cycle after its end is the one before the next phase shows
        starts = {PHASES[ph]: c for c, ph in res["phases"]}
        order = [k for k, v in want.items() if v]
        ends = [starts[ph] - 1 for ph in order[1:]] + [res["end"]]
        spans = np.diff([res["first_in"]] + ends).tolist()
        assert [PHASES[ph] for _, ph in res["phases"]] == order, where
        assert dict(zip(order, spans)) == {k: v for k, v in want.items() if v}, where


@TIME
@pytest.mark.parametrize("sim", ["amaranth", "verilator", "icarus"])
def test_decoder_layer_against_the_golden_model(sim, tmp_path):
    g = _golden()
    dut, got = _run(sim, g, tmp_path)
    # the GO cache holds 4 rows: the second decode reads the fifth back from the DRAM
    assert [w.go_dram_rows for w in g["windows"]] == [0, 0, 1]
    _check_values(g, got)
    _check_cycles(g, dut, got)


def _check_kv_traffic(dut, got, kv_cache_rows):
    """Per window: the KV region's DRAM words written and read (the attention block's
    ``kv_dram_address``) and the KV counters, in rows equal to the priced model
    (``moepim.sim.generation_run._kv_traffic`` of the ``kv_go`` steps)."""
    C, block = kv_cache_rows, dut.attention
    exp = SimpleNamespace(layer=SimpleNamespace(kv_cache_rows=C))
    prev = dict.fromkeys(KV_COUNTERS, 0)

    def words(positions):
        return [block.kv_dram_address(p, b, value) for p in positions
                for value in (False, True) for b in range(block.head_beats)]

    spans = [(0, PROMPT)] + [(PROMPT + k, 1) for k in range(N_DECODE)]
    for step, ((p0, n), res) in enumerate(zip(spans, got, strict=True)):
        where = f"window at {p0}"
        work = step_work("kv_go", step, PROMPT)
        assert work.n_tokens - n == p0, where
        priced = _kv_traffic(exp, work, "kv_go")
        assert res["kv_writes"] == words(range(max(p0, C), p0 + n)), where
        assert res["kv_reads"] == words(range(C, p0)), where
        now = res["kv_counters"]
        W = block.kv_dram_words_per_row
        assert {k: now[k] - prev[k] for k in KV_COUNTERS} == {
            "words_written": priced["write_rows"] * W, "words_read": priced["read_rows"] * W,
            "rows_written": priced["write_rows"], "rows_read": priced["read_rows"]}, where
        prev = now


# kv_cache_rows 2 on Verilator and Icarus (and on all three simulators in
# tests/test_attention_block.py), 0 (every row in DRAM) on Amaranth's simulator
KV_RUNS = [("verilator", 2), ("icarus", 2), ("amaranth", 0)]


@TIME
@pytest.mark.parametrize("sim, kv_cache_rows", KV_RUNS,
                         ids=[f"{sim}-kv{c}" for sim, c in KV_RUNS])
def test_decoder_layer_kv_cache_in_dram(sim, kv_cache_rows, tmp_path):
    """The attention block's KV rows at positions ``>= kv_cache_rows`` in DRAM, through
    the layer's one DRAM port with the GO cache's (the KV region after the GO region; the
    second decode also reads a GO-cache row back): the prompt spills, the decodes fetch and
    spill. Codes, routes, window and phase cycles (``decoder_layer_phases`` with
    ``kv_cache_rows``) and the KV DRAM words per window against the priced model."""
    g = _golden()
    dut, got = _run(sim, g, tmp_path, kv_cache_rows=kv_cache_rows)
    assert [w.go_dram_rows for w in g["windows"]] == [0, 0, 1]
    assert dut.kv_dram_base == 1 << dut.moe.o_dram_req.payload.addr.shape().width
    _check_values(g, got)
    _check_cycles(g, dut, got)
    _check_kv_traffic(dut, got, kv_cache_rows)


# the host's decode selections: no expert, then expert 2 alone
HOST_DECODE_MASKS = [[False] * CFG.n_experts, [e == 2 for e in range(CFG.n_experts)]]


@TIME
def test_decoder_layer_with_host_routes(tmp_path):
    """The host routes every window (``MODE_HOST``: no routing phase, the plan offered from
    the window's start, its first beat taken in the cycle the tokens end): the prompt's
    expert-choice plan, then a decode with an empty plan (no expert work: ``y`` is the
    requantised ``x1``) and one with a single job. Codes and cycles (Amaranth)."""
    g = _golden(decode_masks=HOST_DECODE_MASKS)
    dut, got = _run("amaranth", g, tmp_path, host=True)
    assert [len(w.jobs) for w in g["windows"][1:]] == [0, 1]
    _check_values(g, got)
    _check_cycles(g, dut, got)
    assert all(res["routes"] == [] for res in got)


@TIME
def test_decoder_layer_with_gaps_and_back_pressure(tmp_path):
    """Input gaps and back-pressure on ``o_rows`` (down to the MoE layer's read-out): the
    same codes and routes (the cycles depend on the draws; Amaranth)."""
    g = _golden()
    _, got = _run("amaranth", g, tmp_path, gap_p=0.3, stall_p=0.4, seed=8)
    _check_values(g, got)


def test_decoder_layer_phases_compose_the_unit_formulas():
    """``decoder_layer_phases``: the attention block's phases, then the MoE norm and the
    second residual as buffer-fed phases (one read each before their first beat), the MoE
    layer's route, plan and compute cycles as given. The prompt (4 rows of B = 8 beats): the
    MoE norm ``4 (B + 1 + 17 + 30 + 4 + B) = 272`` (LayerNorm's mean, the 17-bit root, the
    ``NORM_RECIP_BITS`` = 30 reciprocal), + 1; the residual ``32 + 2``, + 1; the plan's 7
    beats; the timestamps 500 and a settle cycle."""
    shape = dict(d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, lanes=4, act_bits=8,
                 center=True, mvm=TILE.mvm_latency, rope=True, n_attention_units=2)
    ph = timing.decoder_layer_phases(4, 0, **shape, route=300, n_jobs=7, compute=500,
                                     settle=1)
    att = timing.attention_block_phases(4, 0, **shape)
    assert list(ph)[:len(att)] == list(att) and all(ph[k] == v for k, v in att.items())
    assert {k: ph[k] for k in ("moe_norm", "route", "jobs", "experts", "moe_residual")} == \
        {"moe_norm": 273, "route": 300, "jobs": 7, "experts": 501, "moe_residual": 35}
    host = timing.decoder_layer_phases(1, 4, **shape, route=None, n_jobs=0, compute=0)
    assert host["route"] == 0 and host["jobs"] == 1 and host["experts"] == 0
    assert timing.decoder_layer_cycles(1, 4, **shape, route=None, n_jobs=0, compute=0) == \
        sum(host.values())
    assert tuple(ph) == PHASES[1:]


BAD = [
    (dict(attention=dict(ATTENTION, d_model=64)), "d_model"),
    (dict(attention=dict(ATTENTION, lanes=8)), "lanes"),
    (dict(attention=dict(ATTENTION, act_bits=6)), "act_bits"),
    (dict(attention=dict(ATTENTION, multiplier_bits=12)), "multiplier_bits"),
    (dict(attention=dict(ATTENTION, max_rows=5)), "max_rows"),   # more than n_tokens = 4
    (dict(attention=dict(ATTENTION, tile=TILE)), "attention"),
    (dict(attention=[1]), "attention"),
    (dict(layer="small"), "layer"),
    (dict(attention=dict(ATTENTION, n_kv_heads=3)), "n_kv_heads"),     # AttentionBlock's
    (dict(attention=dict(ATTENTION, kv_cache_rows=6)), "kv_cache_rows"),   # n_positions 6
]


@pytest.mark.filterwarnings("ignore:.*created but never used")
@pytest.mark.parametrize("kwargs, name", BAD, ids=[f"{n}-{i}" for i, (_, n) in enumerate(BAD)])
def test_decoder_layer_parameter_errors_name_the_argument(kwargs, name):
    good = dict(layer=SPEC, tile=TILE, attention=ATTENTION)
    with pytest.raises(ParameterError, match=f"^{name}=") as e:
        DecoderLayer(**{**good, **kwargs})
    got = e.value.name
    del e
    gc.collect()
    assert got == name
