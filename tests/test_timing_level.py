"""The timing level (``--sim model``, ``moepim.sim.timing_run``) equals the RTL under Verilator,
field by field: every window's cycles and counters, the run's cycles, time, energy and area."""

import dataclasses
import math

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from moepim.models.grouping import GroupingError, make_groups
from moepim.sim.config import REPO_ROOT, load_experiment, load_model
from moepim.sim.layer_run import run_layer_experiment
from moepim.sim.timing_run import bit_ones

EXPERIMENTS = REPO_ROOT / "configs" / "experiments"
# counters of the energy that only an RTL run measures (SAIF toggles)
RTL_ONLY_ENERGY = ("digital_switching",)
# reduced layers whose synthesis tests/test_moe_layer.py asserts (so Yosys runs on them anyway)
SYNTHESISED = ("layer-small", "layer-swiglu-small", "layer-mlpgate-small")


def _no_gaps(exp, **workload):
    """The timing level's domain: no input gaps, no back-pressure."""
    return dataclasses.replace(exp, workload=dataclasses.replace(
        exp.workload, input_gaps=0.0, backpressure=0.0, **workload))


def assert_same_report(model: dict, rtl: dict):
    assert model["sim"] == "model" and model["golden_match"] is None
    assert model["values_simulated"] is False and rtl["values_simulated"] is True
    assert rtl["golden_match"] and rtl["cycles_match_formula"]
    assert len(model["windows"]) == len(rtl["windows"])
    for i, (a, b) in enumerate(zip(model["windows"], rtl["windows"])):
        for key in ("cycles", "compute_cycles", "route_cycles", "timestamps", "tokens_loaded",
                    "jobs", "tokens"):
            assert a.get(key) == b.get(key), (i, key, a.get(key), b.get(key))
        assert a["counters"] == b["counters"], (i, a["counters"], b["counters"])
    for key in ("cycles", "time_ns", "phases", "per_group", "decode", "dram"):
        assert model[key] == rtl[key], key
    e_m, e_r = model["energy_pj"]["breakdown"], rtl["energy_pj"]["breakdown"]
    for key, value in e_r.items():
        if key not in RTL_ONLY_ENERGY:
            assert e_m[key] == pytest.approx(value, rel=1e-12), key
    assert model["area_mm2"] == rtl["area_mm2"]
    assert model["go_cache_exact"] == rtl["go_cache_exact"]
    if rtl.get("go_cache_comparison"):
        a, b = model["go_cache_comparison"], rtl["go_cache_comparison"]
        assert a["with_go_cache"]["cycles"] == b["with_go_cache"]["cycles"]
        assert a["without_cache"]["cycles"] == b["without_cache"]["cycles"]


def _both(exp, tmp_path, synthesize=True):
    rtl = run_layer_experiment(exp, sim="verilator", out_folder=tmp_path / "rtl",
                               synthesize=synthesize)
    model = run_layer_experiment(exp, sim="model", out_folder=tmp_path / "model",
                                 synthesize=synthesize)
    return model, rtl




@pytest.mark.slow
@pytest.mark.xdist_group("layer-verilator")
@pytest.mark.parametrize("name", ["layer-small", "layer-small-differential",
                                  "layer-swiglu-small", "layer-shared-small",
                                  "layer-mlpgate-small", "layer-switch-small"])
def test_timing_level_equals_verilator_on_the_reduced_layers(tmp_path, name):
    """Expert choice with the GO cache and simulated no-cache steps (offset-encoded, and
    differential 2-bit cells with calibrated ADCs), SwiGLU, a shared expert with its sigmoid
    gate, LLaMA-MoE's MLP gate, Switch's capacity dropping."""
    for d in ("rtl", "model"):
        (tmp_path / d).mkdir()
    exp = _no_gaps(load_experiment(EXPERIMENTS / f"{name}.yaml"))
    # Yosys only for the designs other layer tests synthesise anyway (cached by design)
    synthesize = name in SYNTHESISED
    model, rtl = _both(exp, tmp_path, synthesize)
    assert_same_report(model, rtl)
    if synthesize:
        # the timing level took the synthesis the RTL run made: nothing left out of the area
        assert not model["area_mm2"]["not_included"]


@st.composite
def small_layers(draw):
    model = draw(st.sampled_from(["tiny-ec-256", "tiny-swiglu-256"]))
    cfg = load_model(REPO_ROOT / "configs" / "models" / "reduced" / f"{model}.yaml")
    grouping = draw(st.sampled_from(["U1", "U2", "S2", "U4", "S4"]))
    try:
        make_groups(grouping, cfg.n_experts, [1] * cfg.n_experts)
    except GroupingError:
        grouping = "U1"
    return {"model": model, "grouping": grouping,
            "policy": draw(st.sampled_from(["single_token", "compact", "reschedule"])),
            "lanes": draw(st.sampled_from([32, 64, 128])),
            "n_prompt": draw(st.integers(1, 6)), "n_generate": draw(st.integers(0, 2)),
            "go_cache": draw(st.booleans()),
            "no_cache": draw(st.sampled_from(["simulate", "off"])),
            "seed": draw(st.integers(0, 1000))}


@pytest.mark.slow
@pytest.mark.xdist_group("timing-property")
@settings(max_examples=3, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(p=small_layers())
# one token per window, one expert per group: one-entry group queues (registers, no settle)
@example(p={"model": "tiny-ec-256", "grouping": "U1", "policy": "single_token", "lanes": 32,
            "n_prompt": 1, "n_generate": 0, "go_cache": False, "no_cache": "simulate",
            "seed": 0})
def test_timing_level_equals_verilator_on_random_layers(tmp_path_factory, p):
    base = load_experiment(EXPERIMENTS / ("layer-small.yaml" if p["model"] == "tiny-ec-256"
                                          else "layer-swiglu-small.yaml"))
    exp = _no_gaps(base, grouping=p["grouping"], policy=p["policy"], n_prompt=p["n_prompt"],
                   n_generate=p["n_generate"], go_cache=p["go_cache"],
                   no_cache=p["no_cache"], seed=p["seed"])
    exp = dataclasses.replace(exp, layer=dataclasses.replace(exp.layer, lanes=p["lanes"],
                                                             switching_activity=False))
    tmp = tmp_path_factory.mktemp("timing")
    for d in ("rtl", "model"):
        (tmp / d).mkdir()
    # timing and counters only: Yosys's area of each random design is left out of both
    model, rtl = _both(exp, tmp, synthesize=False)
    assert_same_report(model, rtl)
    assert model["area_mm2"]["not_included"] == rtl["area_mm2"]["not_included"] != []


def test_bit_ones_by_hand():
    # 8-bit two's complement: 3 -> 00000011 (2), -1 -> 11111111 (8), -128 -> 10000000 (1)
    assert bit_ones([[3, -1, -128, 0]], 8).tolist() == [11]
    assert bit_ones([5, 6], 4).tolist() == 4
    assert math.isclose(float(bit_ones([[1] * 10], 8)[0]), 10)


def test_timing_level_refuses_tile_experiments(tmp_path, capsys):
    from moepim.sim.cli import main
    code = main(["run", str(EXPERIMENTS / "tile-small.yaml"), "--out", str(tmp_path / "t"),
                 "--sim", "model", "--quiet"])
    assert code == 2 and "--sim" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()
