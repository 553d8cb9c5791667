"""Decoder experiments (``kind: decoder``, ``moepim.sim.generation_run``): the reduced
generation experiment end to end, its MoE layer on Verilator and Icarus (every output and
route bit-exact, cycles equal to the formula, the GO cache exact) and its attention half on
``AttentionBlock``'s RTL (the prompt and every KV+GO step's row: every ``x1`` code bit-exact,
every window's cycles equal to the formula and to the priced step's), every mode generating
the same tokens; the step's cycles equal to the unit formulas; the four modes' ordering; a
grouped-query and a LayerNorm model; the config's errors named by key."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from types import SimpleNamespace

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from moepim.models.decoder import kv_row_bytes
from moepim.models.dram import DramChannel
from moepim.models.generation import MODES, step_work
from moepim.sim.config import REPO_ROOT, ConfigError, load_experiment
from moepim.sim.generation_run import (
    PHASES,
    _kv_traffic,
    _Shapes,
    _step_timeline,
    dense_cycles,
    moe_phase_cycles,
    run_decoder_experiment,
)
from moepim.spec import timing as T

from .conftest import need_simulator

SMALL = REPO_ROOT / "configs" / "experiments" / "generation-small.yaml"
TIME = pytest.mark.xdist_group("generation_run")


def _run(tmp_path, sim, exp=None, synthesize=False):
    exp = exp or load_experiment(SMALL)
    out = tmp_path / "run"
    out.mkdir()
    return exp, run_decoder_experiment(exp, sim=sim, out_folder=out, synthesize=synthesize), out


def _check_report(exp, r, out):
    wl = exp.workload
    modes = r["cache_comparison"]["modes"]
    assert set(modes) == set(wl.modes)
    assert r["generation"]["modes_agree"] and len(r["generation"]["tokens"]) == wl.n_generate
    assert r["generation"]["sequence_lengths"] == list(range(wl.n_prompt + 1,
                                                             wl.n_prompt + wl.n_generate))
    moe = json.loads((out / "moe" / "report.json").read_text())
    sh = _Shapes(d=exp.model.d_model, heads=exp.model.n_heads, kv_heads=exp.model.kv_heads,
                 head_dim=exp.model.head_size, vocab=exp.model.vocab_size,
                 lanes=exp.layer.lanes, units=exp.layer.n_attention_units,
                 act_bits=exp.model.quant.act_bits, mvm=exp.tile.spec().mvm_latency,
                 center=exp.model.norm == "layernorm", rope=exp.model.rope_theta is not None)
    # the accuracy block: the integer decoder against the float one, teacher-forced
    acc = r["accuracy"]
    assert acc["tokens_compared"] == wl.n_generate
    assert len(acc["float_tokens"]) == len(acc["our_token_rank_in_float_logits"]) == wl.n_generate
    for key in ("relative_l2_error_x1", "relative_l2_error_y", "relative_l2_error_y_same_routing"):
        assert 0.0 < acc[key] < 1.0, (key, acc[key])
    same = [f == t for f, t in zip(acc["float_tokens"], r["generation"]["tokens"])]
    assert acc["next_token_agreement"] == sum(same) / len(same)
    assert all((rank == 0) == s for rank, s in zip(acc["our_token_rank_in_float_logits"], same))
    row_bytes = kv_row_bytes(exp.model)
    for mode, m in modes.items():
        assert [s["step"] for s in m["steps"]] == list(range(wl.n_generate))
        # one DRAM channel over the mode's run: the steps follow each other on it, it moved
        # exactly the steps' transfers, and the run ends when the channel has drained
        steps = m["steps"]
        for a, b in zip(steps, steps[1:]):
            assert math.isclose(b["start_ns"], a["start_ns"] + a["time_ns"])
        moved = sum(v["bytes"] for s in steps for v in s["dram"].values())
        assert m["dram"]["bytes"] == moved
        end = steps[-1]["start_ns"] + steps[-1]["time_ns"]
        assert end >= m["dram"]["last_done_ns"] - 1e-6
        for s in steps:
            want = (s["kv_dram_rows"]["read_rows"] * row_bytes,
                    s["kv_dram_rows"]["write_rows"] * row_bytes)
            assert (s["dram"].get("kv_read", {}).get("bytes", 0),
                    s["dram"].get("kv_write", {}).get("bytes", 0)) == want
            if mode in ("none", "go"):
                assert want == (0, 0)
        for s in m["steps"]:
            # the energy is its breakdown; the time its compute plus its stalls
            assert math.isclose(s["energy_pj"], sum(s["breakdown_pj"].values()))
            assert math.isclose(s["time_ns"], s["compute_ns"] + s["stall_ns"])
            assert s["cycles"] == sum(s["phase_cycles"].values())
            # the MoE layer's cycles: the RTL's window (cached) or the formula's
            if s["step"] == 0:
                want = moe["windows"][0]["cycles"]
            elif mode in ("go", "kv_go"):
                want = moe["decode"][s["step"] - 1]["cycles"]
            else:
                want = moe["decode"][s["step"] - 1]["no_cache_cycles"]
            # ... less its token and output beats and hand-over (DecoderLayer's composition)
            rows = step_work(mode, s["step"], wl.n_prompt).moe_rows
            want -= 2 * rows * sh.blocks + T.WINDOW_OVERHEAD
            assert s["phase_cycles"]["moe"] == want, (mode, s["step"])
        # the new row's attention in a cached step, by the unit's formula
        if mode == "kv_go":
            s = m["steps"][1]
            rounds = -(-sh.heads // sh.units)
            assert s["phase_cycles"]["attention"] == T.ATTENTION_BLOCK_PHASE_OVERHEAD + \
                rounds * T.attention_job_cycles(s["n_tokens"], sh.head_dim // sh.lanes)
    transfers = ("kv_spill", "kv_fetch")
    for s in range(1, wl.n_generate):
        # compute cycles (the KV DRAM phases aside): none >= kv >= kv_go, none >= go >= kv_go
        steps = {mode: modes[mode]["steps"][s] for mode in modes}
        c = {mode: st["cycles"] - sum(st["phase_cycles"][p] for p in transfers)
             for mode, st in steps.items()}
        assert c["none"] >= c["kv"] >= c["kv_go"] and c["none"] >= c["go"] >= c["kv_go"]
        # the KV DRAM phases are the KV modes' own, the same rows read in both
        assert all(steps[m]["phase_cycles"][p] == 0 for m in ("none", "go") for p in transfers)
        assert steps["kv"]["phase_cycles"]["kv_fetch"] == steps["kv_go"]["phase_cycles"][
            "kv_fetch"] > 0
        assert steps["kv"]["cycles"] >= steps["kv_go"]["cycles"]
    ratios = r["cache_comparison"]["ratios"]
    none, kvgo = modes["none"]["decode"], modes["kv_go"]["decode"]
    assert ratios["none_vs_kv_go"]["time"] == pytest.approx(none["time_ns"] / kvgo["time_ns"])
    assert ratios["none_vs_kv_go"]["energy"] == pytest.approx(none["energy_pj"]
                                                              / kvgo["energy_pj"])
    assert ratios["none_vs_kv_go"]["energy"] > 1
    rows = list(csv.reader((out / "steps.csv").open()))
    assert len(rows) == 1 + len(modes) * wl.n_generate
    assert (out / "generation.png").stat().st_size > 0
    assert r["paper"]["explanations"]


@TIME
@pytest.mark.parametrize("sim", ["verilator"])
def test_reduced_generation_on_the_rtl(sim, tmp_path):
    """The run's pipeline on the default simulator. (Icarus runs the same reduced designs in
    tests/test_decoder_layer.py, the whole layer in one design, and tests/test_moe_layer.py;
    a generation run on it took 125 s of the suite for no path of its own.)"""
    need_simulator(sim)
    exp, r, out = _run(tmp_path, sim)
    assert r["golden_match"] is True and r["moe"]["golden_match"] is True
    assert r["moe"]["n_mismatches"] == 0
    assert r["cycles_match_formula"] and r["go_cache_exact"]
    # the attention half of the prompt and of every KV+GO step on AttentionBlock's RTL
    ab = r["attention_block"]
    assert ab["sim"] == sim and ab["golden_match"] is True and ab["n_mismatches"] == 0
    assert ab["cycles_match_formula"] and ab["kv_dram_match_priced"]
    assert ab["kv_cache_rows"] == exp.layer.kv_cache_rows == 0
    wl = exp.workload
    assert [(w["first_position"], w["rows"]) for w in ab["windows"]] == \
        [(0, wl.n_prompt)] + [(wl.n_prompt + k - 1, 1) for k in range(1, wl.n_generate)]
    kv_go = r["cache_comparison"]["modes"]["kv_go"]["steps"]
    for w, s in zip(ab["windows"], kv_go):
        assert w["cycles"] == w["formula_cycles"]
        # the step's priced attention half is the simulated window's cycles
        half = sum(s["phase_cycles"][p] for p in ("attn_norm", "qkv_projection", "rope",
                                                  "kv_spill", "kv_fetch", "attention",
                                                  "o_projection"))
        # (the norm fed from the embedding's buffer: one cycle more than from i_rows)
        fed = T.ATTENTION_BLOCK_PHASE_OVERHEAD if wl.embedding else 0
        assert half - fed + s["phase_cycles"]["residual"] == w["cycles"], s["step"]
        assert w["kv_dram_cycles"] == s["phase_cycles"]["kv_spill"] + \
            s["phase_cycles"]["kv_fetch"] > 0
        assert w["kv_dram_match_priced"], s["step"]
    assert "AttentionBlock" in r["levels"]["attention_half"]
    _check_report(exp, r, out)


@TIME
def test_reduced_generation_timing_level_with_area(tmp_path):
    """The timing level: the same cycles and energy without the RTL (the MoE layer's
    values not simulated), and the decoder's digital units' area from Yosys."""
    exp, r, out = _run(tmp_path, "model", synthesize=True)
    assert r["golden_match"] is None and r["generation"]["modes_agree"]
    assert r["attention_block"] is None and "not simulated" in r["levels"]["attention_half"]
    _check_report(exp, r, out)
    area = r["area_mm2"]
    assert area["breakdown"]["decoder_digital_units"] > 0
    assert {"attention_block", "norm_unit", "residual_unit", "argmax_unit"} <= \
        set(area["digital_units"])
    assert math.isclose(area["total"], sum(area["breakdown"].values()))
    # the embedding's row tiles share their column's peripheral set
    emb = area["dense_crossbars"]["embedding"]
    assert emb["crossbars"] > emb["peripheral_sets"]


def _variant(tmp_path, workload=None, **model_changes):
    raw = yaml.safe_load(SMALL.read_text())
    model = yaml.safe_load((SMALL.parent / raw["model"]).read_text())
    model.update(model_changes)
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(model))
    raw["model"] = str(tmp_path / "model.yaml")
    for key in ("tile", "tech", "dram"):
        raw[key] = str((SMALL.parent / raw[key]).resolve())
    raw["workload"].update(workload or {"n_generate": 3})
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(raw))
    return load_experiment(tmp_path / "exp.yaml")


@TIME
@pytest.mark.parametrize("changes", [{"n_kv_heads": 2}, {"norm": "layernorm", "n_kv_heads": 1}],
                         ids=["gqa", "layernorm-mqa"])
def test_grouped_query_and_layernorm_models(changes, tmp_path):
    exp = _variant(tmp_path, **changes)
    assert exp.model.kv_heads == changes["n_kv_heads"]
    exp, r, out = _run(tmp_path, "model", exp=exp)
    _check_report(exp, r, out)
    # fewer K/V heads: fewer K/V bytes per cached row read back
    kv = r["cache_comparison"]["modes"]["kv_go"]["steps"][1]
    assert kv["kv_dram_rows"]["read_rows"] == kv["n_tokens"] - 1


@settings(max_examples=25, deadline=None)
@given(heads=st.sampled_from([(4, 4), (4, 2), (8, 1)]), lanes=st.sampled_from([4, 8]),
       units=st.integers(1, 4), n_prompt=st.integers(1, 20), step=st.integers(1, 20),
       center=st.booleans(), rope=st.booleans())
def test_mode_ordering_on_random_shapes(heads, lanes, units, n_prompt, step, center, rope):
    """Every dense phase of a step: none >= kv >= kv_go and none >= go >= kv_go in cycles
    (the MoE layer's recomputed window against its cached one is the layer's own test)."""
    d, hd = 64, 16
    sh = _Shapes(d=d, heads=heads[0], kv_heads=heads[1], head_dim=hd, vocab=100, lanes=lanes,
                 units=units, act_bits=8, mvm=20, center=center, rope=rope)
    mats = {"q": (d, heads[0] * hd), "k": (d, heads[1] * hd), "v": (d, heads[1] * hd),
            "o": (heads[0] * hd, d), "embedding": (64, d), "lm_head": (d, 100)}
    c = {m: dense_cycles(sh, mats, step_work(m, step, n_prompt), embedding=True, lm_head=True)
         for m in MODES}
    for phase in c["none"]:
        assert c["none"][phase] >= c["kv"][phase] >= c["kv_go"][phase], phase
        assert c["none"][phase] >= c["go"][phase] >= c["kv_go"][phase], phase


def _bad(tmp_path, edit):
    raw = yaml.safe_load(SMALL.read_text())
    for key in ("model", "tile", "tech", "dram"):
        raw[key] = str((SMALL.parent / raw[key]).resolve())
    edit(raw)
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as e:
        load_experiment(p)
    return str(e.value)


@pytest.mark.parametrize("edit, key", [
    (lambda r: r["workload"].update(modes=["none", "cache"]), "workload.modes[1]"),
    (lambda r: r["workload"].update(modes=[]), "workload.modes"),
    (lambda r: r["workload"].update(n_generate=0), "workload.n_generate"),
    (lambda r: r["layer"].update(n_attention_units=0), "layer.n_attention_units"),
    (lambda r: r["layer"].update(lanes=24), "layer.lanes"),
    (lambda r: r.update(reference=[{"metric": "x"}]), "reference[0].value"),
    (lambda r: r.update(colour="blue"), "colour"),
])
def test_decoder_config_errors_name_the_key(edit, key, tmp_path):
    assert f": {key}:" in _bad(tmp_path, edit)


def test_decoder_tech_needs_the_digital_unit_entries(tmp_path):
    tech = yaml.safe_load((REPO_ROOT / "configs" / "tech" / "isaac-32nm.yaml").read_text())
    del tech["int8_mult_energy_pj"]
    (tmp_path / "tech.yaml").write_text(yaml.safe_dump(tech))
    msg = _bad(tmp_path, lambda r: r.update(tech=str(tmp_path / "tech.yaml")))
    assert "int8_mult_energy_pj" in msg and "tech.yaml" in msg


def test_the_moe_part_is_the_layer_experiment_it_contains():
    exp = load_experiment(SMALL)
    moe = exp.moe_experiment()
    assert moe.kind == "moe_layer" and moe.workload.n_generate == exp.workload.n_generate - 1
    assert moe.workload.go_cache and moe.workload.no_cache == "model"
    assert dataclasses.asdict(moe.tile) == dataclasses.asdict(exp.tile)


@settings(max_examples=20, deadline=None)
@given(heads=st.sampled_from([(4, 4), (4, 2), (8, 1)]), lanes=st.sampled_from([4, 8]),
       units=st.integers(1, 4), n_prompt=st.integers(1, 12), step=st.integers(0, 6),
       mode=st.sampled_from(["none", "kv_go"]), center=st.booleans(), rope=st.booleans(),
       kv_cache_rows=st.one_of(st.none(), st.integers(0, 20)))
def test_attention_half_is_the_attention_block(heads, lanes, units, n_prompt, step, mode,
                                               center, rope, kv_cache_rows):
    """Where a step's query and K/V rows are the same window (the prompt, ``none``,
    ``kv_go``), the attention half of ``dense_cycles`` is ``AttentionBlock``'s tested
    formula (``tests/test_attention_block.py``) phase by phase."""
    d, hd = 64, 16
    sh = _Shapes(d=d, heads=heads[0], kv_heads=heads[1], head_dim=hd, vocab=100, lanes=lanes,
                 units=units, act_bits=8, mvm=20, center=center, rope=rope)
    mats = {"q": (d, heads[0] * hd), "k": (d, heads[1] * hd), "v": (d, heads[1] * hd),
            "o": (heads[0] * hd, d), "embedding": (64, d), "lm_head": (d, 100)}
    w = step_work(mode, step, n_prompt)
    # the K/V rows through DRAM the run prices for the step (none: no KV cache, no DRAM)
    exp = SimpleNamespace(layer=SimpleNamespace(kv_cache_rows=kv_cache_rows or 0))
    kv = _kv_traffic(exp, w, mode) if kv_cache_rows is not None else None
    got = dense_cycles(sh, mats, w, embedding=False, lm_head=False, kv=kv)
    block = T.attention_block_phases(
        w.q_rows, w.n_tokens - w.q_rows, d_model=d, n_heads=heads[0], n_kv_heads=heads[1],
        head_dim=hd, lanes=lanes, act_bits=8, center=center, mvm=20, rope=rope,
        n_attention_units=units,
        kv_cache_rows=kv_cache_rows if mode == "kv_go" else None)
    for phase in ("attn_norm", "qkv_projection", "rope", "kv_spill", "kv_fetch", "attention",
                  "o_projection"):
        assert got[phase] == block[phase], phase
    assert got["residual"] == block["residual"]
    assert got["moe_residual"] == \
        T.residual_cycles(w.moe_rows * (d // lanes)) + T.ATTENTION_BLOCK_PHASE_OVERHEAD


def test_step_timeline_queues_transfers_on_one_channel():
    """A KV+GO step on one DRAM channel: the new row's K/V write goes when the ``kv_spill``
    phase starts and the phase lasts until it is transferred; the earlier rows' read goes
    when ``kv_fetch`` starts and the phase lasts until they arrive; at the MoE phase the
    GO-cache read goes first and the spill submitted with it queues behind it; the last step
    drains the channel."""
    exp = load_experiment(SMALL)
    clock = exp.tech.clock_ns.value
    bw, lat = exp.dram.bandwidth_gbps.value, exp.dram.latency_ns.value
    row = kv_row_bytes(exp.model)
    work = step_work("kv_go", 3, exp.workload.n_prompt)
    cycles = dict.fromkeys(PHASES, 10)
    cycles["kv_spill"] = cycles["kv_fetch"] = 1    # shorter than the transfers: DRAM-bound
    kv = {"read_rows": work.n_tokens - 1, "write_rows": 1}
    go = {"read_rows": 2, "write_rows": 3, "row_bytes": 16}
    ch = DramChannel(bandwidth_gbps=bw, latency_ns=lat)
    tl = _step_timeline(exp, ch, 100.0, cycles, work, kv, go, last=True)
    kinds = [r.kind for r in ch.requests]
    assert kinds == ["kv_write", "kv_read", "go_cache_read", "go_cache_spill", "token_out"]
    write, read, go_read, spill, out = ch.requests
    before = PHASES[:PHASES.index("kv_spill")]
    assert math.isclose(write.arrival_ns, 100.0 + sum(cycles[p] for p in before) * clock)
    # kv_spill ends when the row is transferred; kv_fetch starts then, its read not queued
    assert math.isclose(read.arrival_ns, write.arrival_ns + row / bw)
    assert read.queue_ns == 0
    after = PHASES[PHASES.index("kv_fetch") + 1:PHASES.index("moe")]
    assert math.isclose(go_read.arrival_ns, read.done_ns + sum(cycles[p] for p in after)
                        * clock)
    assert math.isclose(spill.queue_ns, 2 * 16 / bw)        # behind the GO-cache read
    assert math.isclose(tl["dram"]["go_cache_spill"]["queue_ns"], spill.queue_ns)
    assert math.isclose(tl["end_ns"], max(r.done_ns for r in ch.requests))
    assert tl["end_ns"] - tl["start_ns"] > tl["compute_ns"]


@settings(max_examples=25, deadline=None)
@given(heads=st.sampled_from([(4, 4), (4, 2), (8, 1)]), lanes=st.sampled_from([4, 8]),
       units=st.integers(1, 4), n_prompt=st.integers(1, 12), step=st.integers(0, 6),
       route=st.one_of(st.none(), st.integers(1, 500)), n_jobs=st.integers(0, 40),
       compute=st.integers(0, 5000), settle=st.integers(0, 1), rope=st.booleans(),
       kv_cache_rows=st.one_of(st.none(), st.integers(0, 20)))
def test_a_kv_go_step_is_the_decoder_layer_formula(heads, lanes, units, n_prompt, step, route,
                                                    n_jobs, compute, settle, rope,
                                                    kv_cache_rows):
    """A KV+GO step (or the prompt) from the attention norm to the second residual, priced
    from a stand-alone MoE window's cycles, is ``DecoderLayer``'s window
    (``decoder_layer_cycles``, tested against its RTL in tests/test_decoder_layer.py)."""
    d, hd = 64, 16
    sh = _Shapes(d=d, heads=heads[0], kv_heads=heads[1], head_dim=hd, vocab=100, lanes=lanes,
                 units=units, act_bits=8, mvm=20, center=False, rope=rope)
    mats = {"q": (d, heads[0] * hd), "k": (d, heads[1] * hd), "v": (d, heads[1] * hd),
            "o": (heads[0] * hd, d), "embedding": (64, d), "lm_head": (d, 100)}
    w = step_work("kv_go", step, n_prompt)
    exp = SimpleNamespace(layer=SimpleNamespace(kv_cache_rows=kv_cache_rows or 0))
    kv = _kv_traffic(exp, w, "kv_go") if kv_cache_rows is not None else None
    got = dense_cycles(sh, mats, w, embedding=False, lm_head=False, kv=kv)
    timing = T.LayerTiming(blocks=d // lanes, group_latencies=(1,), queue_depth=2)
    window = timing.window_cycles(w.moe_rows, n_jobs, compute, route, settle)
    got["moe"] = moe_phase_cycles(window, w.moe_rows, d // lanes)
    want = T.decoder_layer_cycles(
        w.q_rows, w.n_tokens - w.q_rows, d_model=d, n_heads=heads[0], n_kv_heads=heads[1],
        head_dim=hd, lanes=lanes, act_bits=8, center=False, mvm=20, rope=rope,
        n_attention_units=units, route=route, n_jobs=n_jobs, compute=compute, settle=settle,
        kv_cache_rows=kv_cache_rows)
    layer = ("attn_norm", "qkv_projection", "rope", "kv_spill", "kv_fetch", "attention",
             "o_projection", "residual", "moe_norm", "moe", "moe_residual")
    assert sum(got[p] for p in layer) == want
