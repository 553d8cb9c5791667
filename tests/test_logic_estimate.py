"""The timing level's resource estimate of the layer's digital logic and memories
(``moepim.sim.logic_estimate``, coefficients in ``configs/hw/logic-estimate.yaml``)."""

import dataclasses

import pytest
import yaml

from moepim.sim.config import REPO_ROOT, ConfigError, load_experiment
from moepim.sim.digital import component_area
from moepim.sim.layer_run import run_layer_experiment
from moepim.sim.logic_estimate import (
    COEFFICIENTS_FILE,
    FEATURES,
    design_component,
    estimate_layer_logic,
    layer_features,
    load_coefficients,
)

EXPERIMENTS = REPO_ROOT / "configs" / "experiments"
FIT = yaml.safe_load(COEFFICIENTS_FILE.read_text())
# the estimate must stay this close to Yosys on a design the fit never saw: five times the
# fit's own largest residual
UNSEEN_TOLERANCE = 5 * FIT["max_relative_error"]


@pytest.mark.parametrize("row", FIT["fit_designs"], ids=lambda r: r["design"])
def test_the_fit_designs_features_and_memories_are_today_s(tmp_path, row):
    """The recorded fit still describes the RTL objects: same features, the memory count
    within 1 % of the synthesis it was fitted on, the estimate within the stated error."""
    exp, dut = design_component(REPO_ROOT / row["base"], row["overrides"], tmp_path)
    feats = layer_features(dut)
    assert {k: feats[k] for k in FEATURES} == {k: row[k] for k in FEATURES}
    assert feats["memory_bits"] == pytest.approx(row["memory_bits"], rel=0.01)
    est = estimate_layer_logic(dut, exp.tech)
    assert abs(est["transistors"] / row["transistors"] - 1) <= FIT["max_relative_error"] + 1e-3
    assert est["flow"] == "estimate" and est["method"].startswith("resource estimate")


@pytest.mark.slow
def test_estimate_against_yosys_on_a_design_outside_the_fit(tmp_path):
    """SwiGLU with one expert per group and 32 lanes: a grouping and width the fit has not
    seen together."""
    exp, dut = design_component(EXPERIMENTS / "layer-swiglu-small.yaml",
                                {"workload.grouping": "U2", "layer.lanes": 32}, tmp_path)
    est = estimate_layer_logic(dut, exp.tech)
    synth = component_area(dut, "moe_layer", exp.tech, sim="icarus")
    assert est["transistors"] == pytest.approx(synth["transistors"], rel=UNSEEN_TOLERANCE)
    assert est["memory_bits"] == pytest.approx(synth["memory_bits"], rel=0.01)


@pytest.mark.slow
def test_timing_level_prices_an_unsynthesised_design_by_the_estimate(tmp_path):
    """With an empty cache nothing was synthesised: the area has the estimate's digital logic
    and memories, says so, and leaves nothing out."""
    exp = load_experiment(EXPERIMENTS / "layer-swiglu-small.yaml")
    exp = dataclasses.replace(exp, workload=dataclasses.replace(
        exp.workload, input_gaps=0.0, backpressure=0.0))
    (tmp_path / "out").mkdir()
    report = run_layer_experiment(exp, sim="model", out_folder=tmp_path / "out",
                                  build_root=tmp_path / "root", plots=False)
    area = report["area_mm2"]
    assert area["not_included"] == []
    assert area["digital_logic"]["flow"] == "estimate"
    assert "resource estimate" in area["digital_logic"]["method"]
    _, dut = design_component(EXPERIMENTS / "layer-swiglu-small.yaml", {}, tmp_path / "d")
    est = estimate_layer_logic(dut, exp.tech)
    assert area["breakdown"]["digital_logic"] == pytest.approx(est["logic_area_mm2"])
    assert area["sram_bits"]["layer_memories"] == est["memory_bits"] > 0


def test_bad_coefficients_file_names_the_key(tmp_path):
    bad = dict(FIT, transistors_per_unit={**FIT["transistors_per_unit"], "engines": -1})
    path = tmp_path / "logic-estimate.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="transistors_per_unit.engines"):
        load_coefficients(path)
    path.write_text(yaml.safe_dump(dict(FIT, source="")))
    with pytest.raises(ConfigError, match="source"):
        load_coefficients(path)


def test_check_prints_the_estimate_of_a_layer(capsys):
    """``moepim check`` on a layer: the estimate the timing level would use, built from the
    same component as the run's."""
    from moepim.sim.cli import main

    path = EXPERIMENTS / "layer-swiglu-small.yaml"
    assert main(["check", str(path)]) == 0
    printed = yaml.safe_load(capsys.readouterr().out.rsplit("\n", 2)[0])
    got = printed["estimate"]["digital_logic_estimate"]
    row = next(r for r in FIT["fit_designs"] if r["design"] == "layer-swiglu-small")
    # the fit design's synthesis, within the fit's error
    assert abs(got["transistors"] / row["transistors"] - 1) <= FIT["max_relative_error"] + 1e-3
    assert got["memory_bits"] == row["memory_bits_counted"]
    assert got["logic_area_mm2"] > 0 and got["memory_area_mm2"] > 0
