"""The attention half of the decoder layer as one design
(``moepim.hw.attention_block.AttentionBlock``: norm, Q/K/V projections on crossbar banks, RoPE,
the on-chip KV store, grouped-query attention on two attention units, the O projection and the
first residual), through the ``attention_block_windows`` bench on Amaranth's simulator,
Verilator and Icarus.

A reduced layer (``d_model`` 32, 4 query heads of 8 over 2 K/V heads, 4 lanes, LayerNorm, RoPE,
a 16 x 16 tile of 2-bit cells and 4-bit weights with an ideal 6-bit ADC, 8-bit codes) runs a
5-row prompt window, then two 1-row decode windows at positions 5 and 6 over the KV store the
earlier windows wrote. Checked: every ``x1`` code bit-exact against the golden arithmetic
(``int_norm``, ``CrossbarMatmul(tile)`` for the four projections with the requantisation and
clamp of ``moepim.models.decoder``, ``_rope_int``, ``attend_int``, ``x1 = clamp(rq_res1(x) +
rq_o(a Wo))``), the ``last`` flags, and each window's cycles (first ``i_rows`` handshake to the
cycle after the last ``o_rows`` handshake) and each phase's against
``moepim.spec.timing.attention_block_phases``: the phases of
``moepim.sim.generation_run.dense_cycles`` plus ``ATTENTION_BLOCK_PHASE_OVERHEAD`` per phase
after the norm. One more run (Amaranth) with input gaps and output back-pressure checks the
codes alone. Rounds whose units need different K/V heads: multi-head attention (4 heads, 4
K/V heads) on two units (Amaranth and Verilator) and on four (Amaranth), and 4 heads over 2
K/V heads on three units (a round across both K/V heads, then a partial round; Amaranth).

The KV cache in DRAM (``kv_cache_rows`` 2 on all three simulators, 0 on Amaranth's): the
bench is the DRAM (a dict memory answering a read the cycle after its request); the same
codes, the window's and each phase's cycles with the ``kv_spill``/``kv_fetch`` phases, and
each window's DRAM word addresses, rows and ``kv_counters`` against the priced model
(``moepim.sim.generation_run._kv_traffic`` of the ``kv_go`` steps)."""

from __future__ import annotations

import gc
from types import SimpleNamespace

import numpy as np
import pytest

from moepim.hw.attention_block import KV_COUNTERS, PHASES, AttentionBlock
from moepim.hw.rope import COEF_BITS, table_rows
from moepim.models.decoder import (
    NORM_FRAC_BITS,
    NORM_RECIP_BITS,
    NormQuant,
    _rope_int,
    attend_int,
    int_norm,
    rope_tables,
)
from moepim.models.generation import step_work
from moepim.models.pim import CrossbarMatmul, bank_file_words, bank_image
from moepim.models.quant import Requant, _clamp
from moepim.sim.amaranth_macro import add_bank_model
from moepim.sim.block_run import run_bench
from moepim.sim.generation_run import _kv_traffic
from moepim.spec import timing
from moepim.spec.checks import ParameterError
from moepim.spec.tile import TileSpec

from .conftest import need_simulator

TIME = pytest.mark.xdist_group("attention_block")

TILE = TileSpec(n_rows=16, n_columns=16, bits_per_cell=2, weight_bits=4, input_bits=8,
                n_adcs=8, adc_bits=6)
SHAPE = dict(d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, lanes=4, act_bits=8,
             multiplier_bits=15, n_positions=8, n_attention_units=2, center=True, rope=True)
AB, MB, LANES = SHAPE["act_bits"], SHAPE["multiplier_bits"], SHAPE["lanes"]
LIM = (1 << (AB - 1)) - 1
BANK_BASE = 4
WINDOWS = [(0, 5), (5, 1), (6, 1)]          # (first position, rows): a prompt, two decodes
CFG = SimpleNamespace(rope_theta=10000.0, head_size=SHAPE["head_dim"],
                      quant=SimpleNamespace(act_bits=AB))


def _block(shape=SHAPE) -> AttentionBlock:
    return AttentionBlock(tile=TILE, **shape)


def _fit(values, target) -> Requant:
    """A requantisation mapping the largest magnitude of ``values`` to about ``target``."""
    rq = Requant.from_ratio(target / max(1, int(np.abs(values).max())), MB)
    assert rq.shift < 32 and rq.mult < 1 << MB
    return rq


def _golden(seed, shape=SHAPE):
    """Weights, constants, the rows of all windows and the golden ``x1`` rows."""
    rng = np.random.default_rng(seed)
    d, H, G, hd = (shape[k] for k in ("d_model", "n_heads", "n_kv_heads", "head_dim"))
    lanes, center = shape["lanes"], shape["center"]
    n = sum(t for _, t in WINDOWS)
    x = rng.integers(-LIM, LIM + 1, size=(n, d))
    x[1] = LIM                                              # an extreme row
    wh = 1 << (TILE.weight_bits - 1)
    w = {"q": rng.integers(-wh, wh, (d, H * hd)), "k": rng.integers(-wh, wh, (d, G * hd)),
         "v": rng.integers(-wh, wh, (d, G * hd)), "o": rng.integers(-wh, wh, (H * hd, d))}
    matmul = CrossbarMatmul(TILE)
    gamma, beta = rng.integers(-LIM, LIM + 1, d), rng.integers(-LIM, LIM + 1, d)
    norm_rq = Requant.from_ratio(1.0 / (2.5 * LIM * 2.0 ** (NORM_RECIP_BITS - NORM_FRAC_BITS))
                                 * 40, MB)
    nq = NormQuant(gamma=gamma, beta=beta if center else None, eps=5, requant=norm_rq,
                   center=center)
    h = int_norm(x, nq, AB)
    rq, t = {}, {}
    pos = np.arange(n)
    for name, heads in (("q", H), ("k", G), ("v", G)):
        acc = matmul(h, w[name])
        rq[name] = _fit(acc, 1.3 * LIM)
        t[name] = _clamp(rq[name].apply(acc), AB).reshape(n, heads, hd)
    q, k = t["q"], t["k"]
    if shape["rope"]:
        q, k = _rope_int(q, pos, CFG), _rope_int(k, pos, CFG)
    scores = np.einsum("thd,lhd->htl", q, np.repeat(k, H // G, axis=1))
    index = Requant.from_ratio(40.0 / float(scores.std()), MB)
    assert index.shift < 32
    rep = H // G
    a = attend_int(q, np.repeat(k, rep, axis=1), np.repeat(t["v"], rep, axis=1), pos, index,
                   AB).reshape(n, H * hd)
    acc_o = matmul(a, w["o"])
    rq["o"] = _fit(acc_o, 0.8 * LIM)
    rq["res"] = Requant.from_ratio(0.7, MB)
    x1 = _clamp(rq["res"].apply(x) + rq["o"].apply(acc_o), AB)
    # not degenerate: projections, attention and outputs spread over the codes
    for name in ("q", "k", "v"):
        assert np.count_nonzero(np.abs(t[name]) < LIM) > t[name].size // 2, name
    assert len(np.unique(a)) > 20 and len(np.unique(x1)) > 40
    assert (np.abs(x1) == LIM).any() and (np.abs(x1) < LIM).mean() > 0.5
    held = {"norm_eps": nq.eps, "norm_mult": norm_rq.mult, "norm_shift": norm_rq.shift,
            "index_mult": index.mult, "index_shift": index.shift}
    for name in ("q", "k", "v", "o", "res"):
        held[f"{name}_mult"], held[f"{name}_shift"] = rq[name].mult, rq[name].shift
    params = [[gamma[i:i + lanes].tolist()] + ([beta[i:i + lanes].tolist()] if center else [])
              for i in range(0, d, lanes)]
    return {"x": x, "x1": x1, "w": w, "matmul": matmul, "held": held, "params": params}


def _run(sim, g, tmp_path, *, gap_p=0.0, stall_p=0.0, seed=3, shape=SHAPE, windows=WINDOWS):
    if sim != "amaranth":
        need_simulator(sim)
    block = _block(shape)
    lanes = shape["lanes"]
    images, plusargs = {}, []
    for k, (name, unit) in enumerate(block.projections.items()):
        images[name] = bank_image([g["w"][name]], 1, unit.n_in, unit.n_out, TILE,
                                  matmul=g["matmul"])
        path = tmp_path / f"bank{BANK_BASE + k}.bin"
        bank_file_words(images[name], TILE, 1).tofile(path)
        plusargs.append(f"+MOEPIM_BANK{BANK_BASE + k}={path}")

    def setup(s):
        for name, unit in block.projections.items():
            add_bank_model(s, unit.bank, images[name])

    cos, sin = rope_tables(CFG, shape["n_positions"])
    spans, windows = windows, []
    for p0, n in spans:
        windows.append({"first_position": p0, "rows": g["x"][p0:p0 + n].tolist(),
                        "gap_p": gap_p, "stall_p": stall_p})
    kv = {"kv_dram": True} if shape.get("kv_cache_rows") is not None else {}
    got = run_bench(block, top="attention_block", bench="attention_block_windows", sim=sim,
                    args=dict(norm_params=g["params"],
                              rope_table=table_rows(cos, sin, lanes=lanes)
                              if shape["rope"] else [],
                              coef_bits=COEF_BITS, held=g["held"], windows=windows,
                              lanes=lanes, act_bits=AB, seed=seed, **kv),
                    setup=setup, plusargs=plusargs, preset={"bank_base": BANK_BASE})
    return block, got


def _check_codes(g, got, shape=SHAPE, windows=WINDOWS):
    for (p0, n), res in zip(windows, got, strict=True):
        want = g["x1"][p0:p0 + n].tolist()
        for r in range(n):
            assert res["outputs"][r] == want[r], f"window at {p0}: row {r}"
        beats = shape["d_model"] // shape["lanes"]
        assert res["lasts"] == [[0] * (beats - 1) + [1]] * n, f"window at {p0}"


def _check_cycles(block, got, windows=WINDOWS):
    for (p0, n), res in zip(windows, got, strict=True):
        want = block.phase_cycles(n, p0)
        assert res["end"] - res["first_in"] == sum(want.values()), f"window at {p0}"
        # each phase: the cycle after its last output handshake is the one before the next
        # phase's state (the next phase's first read is issued in it)
        starts = {PHASES[ph]: c for c, ph in res["phases"]}
        order = [PHASES[ph] for _, ph in res["phases"] if ph]
        assert order == [k.removeprefix("attn_") for k, v in want.items() if v], \
            f"window at {p0}"
        ends = [starts[ph] - 1 for ph in order[1:]] + [res["end"]]
        spans = np.diff([res["first_in"]] + ends).tolist()
        assert dict(zip([k for k, v in want.items() if v], spans)) == \
            {k: v for k, v in want.items() if v}, f"window at {p0}"


@TIME
@pytest.mark.parametrize("sim", ["amaranth", "verilator", "icarus"])
def test_attention_block_against_the_golden_model(sim, tmp_path):
    g = _golden(seed=17)
    block, got = _run(sim, g, tmp_path)
    _check_codes(g, got)
    _check_cycles(block, got)
    for p0, n in WINDOWS:
        assert block.phase_cycles(n, p0) == timing.attention_block_phases(
            n, p0, **_timing_shape())


VARIANTS = {
    # one attention unit, multi-head attention (a K/V head per query head), RMSNorm
    "one_unit_mha_rms": dict(SHAPE, n_kv_heads=4, n_attention_units=1, center=False),
    # no RoPE, one-beat head vectors (lanes = head_dim), 4 query heads on 1 K/V head
    "no_rope_one_beat": dict(SHAPE, lanes=8, n_kv_heads=1, rope=False),
    # multi-head attention on four units: one round, every unit on its own K/V head
    "mha_four_units": dict(SHAPE, n_kv_heads=4, n_attention_units=4),
    # 4 query heads over 2 K/V heads on three units: round 0 spans both K/V heads (heads 0, 1
    # on K/V head 0, head 2 on 1), round 1 is partial (head 3; two units idle)
    "gqa_three_units": dict(SHAPE, n_attention_units=3),
}


@TIME
@pytest.mark.parametrize("name", list(VARIANTS))
def test_attention_block_variants(name, tmp_path):
    """Other shapes on Amaranth's simulator: codes and cycles."""
    shape = VARIANTS[name]
    g = _golden(seed=23, shape=shape)
    block, got = _run("amaranth", g, tmp_path, shape=shape)
    _check_codes(g, got, shape)
    _check_cycles(block, got)
    _check_phase_formula(block, shape)


MHA = dict(SHAPE, n_kv_heads=4, n_attention_units=2)


@TIME
@pytest.mark.parametrize("sim", ["amaranth", "verilator"])
def test_attention_block_mha_on_two_units(sim, tmp_path):
    """Multi-head attention (4 heads, 4 K/V heads) on two units: each round's units read
    different K/V heads from the one store read per cycle. Codes and cycles."""
    g = _golden(seed=29, shape=MHA)
    block, got = _run(sim, g, tmp_path, shape=MHA)
    _check_codes(g, got, MHA)
    _check_cycles(block, got)
    _check_phase_formula(block, MHA)


def _check_phase_formula(block, shape):
    """The block's phases are ``attention_block_phases`` with its ``n_attention_units``."""
    for p0, n in WINDOWS:
        assert block.phase_cycles(n, p0) == timing.attention_block_phases(
            n, p0, **_timing_shape(shape))


def _check_kv_traffic(block, got, kv_cache_rows):
    """Per window: the KV DRAM words written and read, by address (``kv_dram_address``:
    the window's new rows at positions ``>= kv_cache_rows``, then the earlier rows at
    ``kv_cache_rows .. p0 - 1``, each position's K beats then its V beats), in rows equal to
    the priced model (``moepim.sim.generation_run._kv_traffic`` of the ``kv_go`` steps: the
    prompt, then one row per decode step), and the block's ``kv_counters`` likewise."""
    C, HB, W = kv_cache_rows, block.head_beats, block.kv_dram_words_per_row
    exp = SimpleNamespace(layer=SimpleNamespace(kv_cache_rows=C))
    n_prompt = WINDOWS[0][1]
    prev = dict.fromkeys(KV_COUNTERS, 0)

    def words(positions):
        return [block.kv_dram_address(p, b, value) for p in positions
                for value in (False, True) for b in range(HB)]

    for step, ((p0, n), res) in enumerate(zip(WINDOWS, got, strict=True)):
        where = f"window at {p0}"
        work = step_work("kv_go", step, n_prompt)
        assert (work.n_tokens - n, work.n_tokens) == (p0, p0 + n), where
        priced = _kv_traffic(exp, work, "kv_go")
        want_w, want_r = words(range(max(p0, C), p0 + n)), words(range(C, p0))
        assert res["kv_writes"] == want_w and res["kv_reads"] == want_r, where
        assert (len(want_w), len(want_r)) == (priced["write_rows"] * W,
                                              priced["read_rows"] * W), where
        now = res["kv_counters"]
        delta = {k: now[k] - prev[k] for k in KV_COUNTERS}
        assert delta == {"words_written": len(want_w), "words_read": len(want_r),
                         "rows_written": priced["write_rows"],
                         "rows_read": priced["read_rows"]}, where
        prev = now
        rows = timing.kv_dram_rows(n, p0, C)
        assert (rows["written"], rows["read"]) == (priced["write_rows"],
                                                   priced["read_rows"]), where


KV_RUNS = [("amaranth", 2), ("verilator", 2), ("icarus", 2), ("amaranth", 0)]


@TIME
@pytest.mark.parametrize("sim, kv_cache_rows", KV_RUNS,
                         ids=[f"{sim}-kv{c}" for sim, c in KV_RUNS])
def test_attention_block_kv_cache_in_dram(sim, kv_cache_rows, tmp_path):
    """``kv_cache_rows`` positions on chip, the rest in the bench's DRAM (a dict memory
    answering a read the cycle after its request): the prompt window spills its rows at
    positions ``>= kv_cache_rows`` (``kv_spill``), each decode window first fetches the
    earlier ones back into the store (``kv_fetch``) and spills its new row. Every code
    bit-exact against the same golden, the window's and each phase's cycles against
    ``attention_block_phases`` with ``kv_cache_rows``, the DRAM words per window against the
    priced model."""
    shape = dict(SHAPE, kv_cache_rows=kv_cache_rows)
    g = _golden(seed=17)
    block, got = _run(sim, g, tmp_path, shape=shape)
    _check_codes(g, got, shape)
    _check_cycles(block, got)
    _check_phase_formula(block, shape)
    _check_kv_traffic(block, got, kv_cache_rows)
    # the decode windows fetch and spill: their DRAM phases are in the formula
    for p0, n in WINDOWS[1:]:
        ph = block.phase_cycles(n, p0)
        assert ph["kv_spill"] > 0 and ph["kv_fetch"] > 0


def test_attention_block_kv_dram_phases_by_hand():
    """``W = 2 head_dim / lanes = 4`` words a position. ``kv_cache_rows`` 2: the prompt
    (5 rows from 0) spills positions 2 .. 4: ``1 + 3 * 4 = 13`` cycles (the store read, a
    write a cycle), no fetch; the decode at 6 fetches 2 .. 5, ``4 * 4 + 1 = 17`` (a request
    a cycle, the last response a cycle later), and spills 6, ``1 + 4``; a window wholly on
    chip moves nothing. ``None``: no DRAM phase."""
    shape = _timing_shape(dict(SHAPE, kv_cache_rows=2))
    ph = timing.attention_block_phases(5, 0, **shape)
    assert (ph["kv_spill"], ph["kv_fetch"]) == (13, 0)
    ph = timing.attention_block_phases(1, 6, **shape)
    assert (ph["kv_spill"], ph["kv_fetch"]) == (5, 17)
    ph = timing.attention_block_phases(2, 0, **shape)
    assert (ph["kv_spill"], ph["kv_fetch"]) == (0, 0)
    base = timing.attention_block_phases(1, 6, **_timing_shape())
    assert timing.attention_block_cycles(1, 6, **shape) == sum(base.values()) + 5 + 17
    assert timing.kv_dram_rows(1, 6, 2) == {"written": 1, "read": 4}
    assert timing.kv_dram_rows(1, 6, None) == {"written": 0, "read": 0}


@TIME
def test_attention_block_with_gaps_and_back_pressure(tmp_path):
    """Input gaps and output back-pressure: the same codes (the cycles depend on the draws)."""
    g = _golden(seed=17)
    _, got = _run("amaranth", g, tmp_path, gap_p=0.3, stall_p=0.4, seed=8)
    _check_codes(g, got)


def _timing_shape(shape=SHAPE):
    return dict(d_model=shape["d_model"], n_heads=shape["n_heads"],
                n_kv_heads=shape["n_kv_heads"], head_dim=shape["head_dim"],
                lanes=shape["lanes"], act_bits=shape["act_bits"], center=shape["center"],
                mvm=TILE.mvm_latency, rope=shape["rope"],
                n_attention_units=shape["n_attention_units"],
                kv_cache_rows=shape.get("kv_cache_rows"))


def test_attention_block_cycles_by_hand():
    """The prompt window (5 rows from position 0): the norm ``5 (B + 1 + 17 + 31 + 4 + B)
    = 340`` (B = 8 beats); the MVM ``8 * 2 + 4 = 20`` cycles; Q (8 output beats) paces the
    projections: ``8 + 20 + 8 + 2 + 4 * 28 = 150``, + 1; RoPE 20 Q vectors of one beat:
    ``20 + 3``, + 1; attention 2 rounds of the rows' jobs ``6 L + 27`` (L = 1 .. 5 keys of 2
    beats): ``2 * (90 + 135) = 450``, + 1; O projection as Q's: 151; the residual ``40 + 2``,
    + 1. The decode at position 6 (one row, 7 keys): the norm 68, the projections ``38 + 1``,
    RoPE ``4 + 3 + 1``, attention ``2 * 69 + 1``, O ``38 + 1``, the residual ``8 + 2 + 1``."""
    assert TILE.mvm_latency == 20
    ph = timing.attention_block_phases(5, 0, **_timing_shape())
    assert ph == {"attn_norm": 340, "qkv_projection": 151, "rope": 24, "kv_spill": 0,
                  "kv_fetch": 0, "attention": 451, "o_projection": 151, "residual": 43}
    assert timing.attention_block_cycles(1, 6, **_timing_shape()) == \
        68 + 39 + 8 + 139 + 39 + 11 == 304
    no_rope = dict(_timing_shape(), rope=False)
    assert timing.attention_block_phases(1, 6, **no_rope)["rope"] == 0


BAD = [
    (dict(n_heads=0), "n_heads"),
    (dict(n_kv_heads=3), "n_kv_heads"),
    (dict(lanes=3), "lanes"),
    (dict(lanes=8), "lanes"),                 # head_dim / 2 = 4 is not a multiple of 8
    (dict(n_attention_units=5), "n_attention_units"),     # more units than heads
    (dict(n_attention_units=0), "n_attention_units"),
    (dict(act_bits=9), "tile"),               # codes wider than the tile's inputs
    (dict(act_bits=1), "act_bits"),
    (dict(center=1), "center"),
    (dict(rope="yes"), "rope"),
    (dict(max_rows=9), "max_rows"),
    (dict(kv_cache_rows=8), "kv_cache_rows"),            # n_positions = 8
    (dict(kv_cache_rows=-1), "kv_cache_rows"),
    (dict(counter_bits=4), "counter_bits"),
    (dict(multiplier_bits=0), "multiplier_bits"),
    (dict(tile={"n_rows": 16}), "tile"),
]


@pytest.mark.filterwarnings("ignore:.*created but never used")
@pytest.mark.parametrize("kwargs, name", BAD, ids=[f"{n}-{i}" for i, (_, n) in enumerate(BAD)])
def test_attention_block_parameter_errors_name_the_argument(kwargs, name):
    good = dict(tile=TILE, **SHAPE)
    with pytest.raises(ParameterError, match=f"^{name}=") as e:
        AttentionBlock(**{**good, **kwargs})
    got = e.value.name
    del e
    gc.collect()
    assert got == name
