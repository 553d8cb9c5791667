"""The analog datapath's accuracy: the accurate default tile against the paper's, on a reduced
MoE layer (golden model only), the report's accuracy block, and a reduced layer on the
accurate datapath end to end under Verilator (bit-exact, calibrated windows from the bank
file)."""

import dataclasses
import json

import numpy as np
import pytest

from moepim.models.pim import CrossbarMatmul
from moepim.models.workload import datapath_accuracy, make_workload
from moepim.sim.config import REPO_ROOT, ConfigError, load_experiment, load_model
from moepim.sim.layer_run import LOW_SNR_DB, run_layer_experiment
from moepim.spec.tile import TileSpec

EXP = REPO_ROOT / "configs" / "experiments"
TINY = REPO_ROOT / "configs" / "models" / "reduced" / "tiny-ec-256.yaml"


def _accuracy(experiment, n_prompt=16):
    tile = load_experiment(EXP / experiment).tile
    wl = make_workload(load_model(TINY), n_prompt=n_prompt, seed=5,
                       matmul=CrossbarMatmul(tile.spec()))
    return tile, datapath_accuracy(wl)


def test_default_tile_is_accurate_and_the_paper_tile_is_not():
    tile, acc = _accuracy("default.yaml")
    assert (tile.weight_encoding, tile.adc_range, tile.n_rows, tile.n_columns,
            tile.n_adcs) == ("reference_column", "calibrated", 256, 256, 32)
    assert acc["relative_l2_error_vs_exact_integer"] < 0.01
    assert acc["snr_db"] > 40
    assert acc["routing_agreement"] >= 0.99
    paper, bad = _accuracy("paper/default.yaml")
    assert (paper.weight_encoding, paper.bits_per_cell, paper.adc_range) == ("offset", 8,
                                                                            "fixed")
    assert bad["relative_l2_error_vs_exact_integer"] > 0.5
    assert bad["snr_db"] < LOW_SNR_DB


def test_calibration_cache_gives_the_fitted_windows_and_refits_a_damaged_entry(tmp_path):
    """A second calibration of the same layer on the same tile reads the windows back (same
    shifts, same golden outputs); a damaged entry is fitted again and rewritten."""
    shape = TileSpec(**load_experiment(EXP / "default.yaml").tile.shape_kwargs())
    cfg = load_model(TINY)

    def run(**kw):
        mm = CrossbarMatmul(shape)
        wl = make_workload(cfg, n_prompt=8, seed=3, matmul=mm, calibration_cache=tmp_path, **kw)
        return wl, {name: mm.shift_for(t) for name, t in wl.quant.tensors.items()
                    if name.endswith(".weight")}

    fitted, shifts = run()
    (entry,) = tmp_path.glob("*.json")
    fit_text = entry.read_text()
    cached, shifts2 = run()
    assert shifts2 == shifts and np.array_equal(cached.y_q, fitted.y_q)
    # the cached file is what the next run used: change it, the windows change with it
    name = sorted(shifts)[0]
    data = json.loads(fit_text)
    data[name] = [k + 1 for k in data[name]]
    entry.write_text(json.dumps(data))
    assert run()[1][name] == tuple(data[name])
    for damage in ("{not json", json.dumps({name: [-1] * len(shifts[name])}), "[]"):
        entry.write_text(damage)
        assert run()[1] == shifts
        assert json.loads(entry.read_text()) == json.loads(fit_text)
    # a different seed draws different weights: a different entry
    mm = CrossbarMatmul(shape)
    make_workload(cfg, n_prompt=8, seed=4, matmul=mm, calibration_cache=tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_datapath_accuracy_by_hand():
    """An exact datapath: zero error, infinite SNR, full agreement."""
    wl = make_workload(load_model(TINY), n_prompt=8, seed=2)
    acc = datapath_accuracy(wl)
    assert acc == {"relative_l2_error_vs_exact_integer": 0.0, "snr_db": float("inf"),
                   "routing_agreement": 1.0}
    # halve every output: error 1/2, SNR 20 log10(2) = 6.02 dB
    half = dataclasses.replace(wl, y_q=wl.y_q // 2 * 1)
    exact = wl.y_q.astype(float)
    want = np.linalg.norm(half.y_q - exact) / np.linalg.norm(exact)
    assert datapath_accuracy(half)["relative_l2_error_vs_exact_integer"] == pytest.approx(want)


def test_offset_with_a_calibrated_range_is_refused_with_the_key(tmp_path):
    src = (REPO_ROOT / "configs" / "hw" / "tile-64.yaml").read_text()
    (tmp_path / "tile.yaml").write_text(src + "adc_range: calibrated\n")
    exp = (EXP / "layer-small.yaml").read_text().replace(
        "../hw/tile-64.yaml", str(tmp_path / "tile.yaml")).replace("../", str(EXP.parent) + "/")
    (tmp_path / "exp.yaml").write_text(exp)
    with pytest.raises(ConfigError, match="adc_range.*calibrated.*offset"):
        load_experiment(tmp_path / "exp.yaml")


@pytest.mark.xdist_group("layer-verilator")
def test_small_layer_with_the_defaults_reference_column_is_bit_exact_under_verilator(tmp_path):
    exp = load_experiment(EXP / "layer-small-reference.yaml")
    report = run_layer_experiment(exp, sim="verilator", out_folder=tmp_path,
                                  synthesize=False)
    assert report["golden_match"], report["mismatches"][:5]
    assert report["cycles_match_formula"]
    acc = report["accuracy"]
    assert acc["relative_l2_error_vs_exact_integer"] < 0.01 and acc["routing_agreement"] >= 0.99
    # 2-bit slices of 8-bit weights, one column each: 16 outputs per 64-column crossbar, and
    # one reference column more per crossbar in the array area
    assert exp.tile.spec().n_outputs == 16


@pytest.mark.xdist_group("layer-verilator")
def test_small_layer_on_the_accurate_datapath_is_bit_exact_under_verilator(tmp_path):
    exp = load_experiment(EXP / "layer-small-differential.yaml")
    report = run_layer_experiment(exp, sim="verilator", out_folder=tmp_path,
                                  synthesize=False)
    assert report["golden_match"], report["mismatches"][:5]
    assert report["cycles_match_formula"]
    assert all(w["routes_match"] for w in report["windows"])
    acc = report["accuracy"]
    # exact on this layer: no noise, snr_db null
    assert acc["relative_l2_error_vs_exact_integer"] == 0 and acc["snr_db"] is None
    assert acc["routing_agreement"] == 1.0
    assert acc["low_snr_threshold_db"] == LOW_SNR_DB
    # differential 2-bit cells of 8-bit weights: 8 columns per weight, 8 outputs per 64-column
    # crossbar; the report's crossbar count follows
    g = exp.tile.spec()
    assert g.n_outputs == 8
    m = exp.model
    per_expert = (-(-m.d_model // 64)) * (-(-m.d_ff // 8)) + (-(-m.d_ff // 64)) * (
        -(-m.d_model // 8))
    assert report["area_mm2"]["crossbars"] == per_expert * m.n_experts + (
        -(-m.d_model // 64)) * (-(-m.n_experts // 8))
