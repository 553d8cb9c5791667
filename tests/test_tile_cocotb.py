"""TileGroup as exported Verilog under cocotb (Verilator and Icarus): same scenarios, same
cycles as Amaranth's simulator, bit-exact against the golden model; the two analog cores are
equivalent; the full-size tile is bit-exact under Verilator."""

import numpy as np
import pytest

from moepim.sim.tile_run import check_outputs, make_scenario, run_scenario

from .conftest import need_icarus, small_experiment


def _same_run(a, b):
    np.testing.assert_array_equal(a.y, b.y)
    np.testing.assert_array_equal(a.accept, b.accept)
    np.testing.assert_array_equal(a.done, b.done)
    assert a.cycles == b.cycles
    assert a.counters == b.counters


@pytest.mark.xdist_group("verilator-small")
@pytest.mark.parametrize("sim", ["verilator", "icarus"])
def test_cocotb_matches_golden_and_amaranth(sim):
    if sim == "icarus":
        need_icarus()
    exp = small_experiment()          # random gaps, 30 % back-pressure, 3 crossbars
    sc = make_scenario(exp)
    run = run_scenario(exp, sc, sim)
    check = check_outputs(exp, sc, run)
    assert check["golden_match"], check["mismatches"]
    assert check["latency_max"] > check["mvm_latency"]
    _same_run(run, run_scenario(exp, sc, "amaranth"))


@pytest.mark.xdist_group("verilator-small")
def test_logic_and_macro_cores_are_cycle_and_bit_identical():
    runs = {}
    for core in ("logic", "macro"):
        exp = small_experiment(core=core, seed=11, n_mvms=18)
        sc = make_scenario(exp)
        runs[core] = run_scenario(exp, sc, "verilator")
        assert check_outputs(exp, sc, runs[core])["golden_match"]
    _same_run(runs["logic"], runs["macro"])


@pytest.mark.slow
def test_full_size_tile_is_bit_exact_and_serialises_a_shared_pair():
    """256x256, 8-bit weights and inputs, group_size 2: two simultaneous requests."""
    exp = small_experiment(n_rows=256, n_columns=256, bits_per_cell=8, weight_bits=8,
                           input_bits=8, n_adcs=32, adc_bits=8, adc_shift=None, group_size=2,
                           core="macro", n_mvms=2, arrival="simultaneous", backpressure=0.0,
                           seed=2026)
    sc = make_scenario(exp)
    run = run_scenario(exp, sc, "verilator")
    check = check_outputs(exp, sc, run)
    assert check["golden_match"], check["mismatches"]
    latency = exp.tile.spec().mvm_latency
    assert latency == 8 * (256 // 32) + 4
    assert sorted(run.accept.tolist()) == [0, latency]
    assert sorted(run.done.tolist()) == [latency, 2 * latency]
    assert sorted(run.counters["peripherals"]["stall_cycles"]) == [0, latency]
    assert run.y.shape == (2, 256)
    assert np.abs(run.y).max() > 0


@pytest.mark.xdist_group("verilator-small")
@pytest.mark.parametrize("sim", ["verilator", "icarus"])
@pytest.mark.parametrize("tile", [
    dict(weight_encoding="differential", adc_range="calibrated", adc_bits=4),
    dict(weight_encoding="reference_column", adc_range="calibrated", adc_bits=4),
    dict(weight_encoding="differential", adc_range="fixed", adc_bits=5),
], ids=lambda t: f"{t['weight_encoding']}-{t['adc_range']}")
def test_cocotb_encodings_match_golden_and_amaranth(sim, tile):
    """Each signed encoding (and the run-time calibrated ADC window) on the macro's
    behavioural Verilog: bit-exact, and cycle-identical with Amaranth's simulator."""
    if sim == "icarus":
        need_icarus()
    exp = small_experiment(n_mvms=12, **tile)
    sc = make_scenario(exp)
    run = run_scenario(exp, sc, sim)
    check = check_outputs(exp, sc, run)
    assert check["golden_match"], check["mismatches"]
    _same_run(run, run_scenario(exp, sc, "amaranth"))
