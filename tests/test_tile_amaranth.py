"""TileGroup in Amaranth's simulator against the golden model, with gaps and back-pressure."""

import gc

import numpy as np
import pytest
from amaranth.hdl import Fragment

from moepim.hw import CrossbarArray, PeripheralSet, TileGroup
from moepim.sim.tile_run import check_outputs, make_scenario, run_scenario
from moepim.spec.checks import ParameterError
from moepim.spec.tile import TileSpec

from .conftest import small_experiment as small

# constructors that reject their arguments leave half-built elaboratables behind
pytestmark = pytest.mark.filterwarnings("ignore:.*created but never used")


@pytest.mark.parametrize("core", ["logic", "macro"])
@pytest.mark.parametrize("arrival, backpressure", [("random", 0.3), ("simultaneous", 0.0)])
def test_amaranth_bit_exact_with_gaps_and_backpressure(core, arrival, backpressure):
    exp = small(core=core, arrival=arrival, backpressure=backpressure)
    sc = make_scenario(exp)
    run = run_scenario(exp, sc, "amaranth")
    check = check_outputs(exp, sc, run)
    assert check["golden_match"], check["mismatches"]
    if backpressure:
        assert check["latency_max"] > check["mvm_latency"]   # back-pressure really bit


@pytest.mark.parametrize("tile", [
    dict(n_rows=8, n_columns=12, bits_per_cell=1, weight_bits=3, input_bits=5, n_adcs=3,
         adc_bits=3, group_size=2),                       # saturating, truncating ADC
    dict(n_rows=5, n_columns=4, bits_per_cell=4, weight_bits=4, input_bits=2, n_adcs=4,
         adc_bits=7, adc_shift=0, group_size=1),          # one column per ADC, no sharing
    dict(n_rows=6, n_columns=8, bits_per_cell=2, weight_bits=8, input_bits=3, n_adcs=1,
         adc_bits=4, adc_shift=2, group_size=4),          # one ADC for all columns
])
def test_amaranth_odd_shapes(tile):
    exp = small(core="logic", n_mvms=9, **tile)
    sc = make_scenario(exp)
    run = run_scenario(exp, sc, "amaranth")
    check = check_outputs(exp, sc, run)
    assert check["golden_match"], check["mismatches"]


def test_simultaneous_requests_are_serialised_and_stalls_counted():
    exp = small(core="macro", group_size=2, n_mvms=2, arrival="simultaneous", backpressure=0.0)
    sc = make_scenario(exp)
    run = run_scenario(exp, sc, "amaranth")
    latency = exp.tile.spec().mvm_latency
    assert latency == exp.tile.input_bits * exp.tile.n_columns // exp.tile.n_adcs + 4
    assert sorted(run.accept.tolist()) == [0, latency]
    assert sorted(run.done.tolist()) == [latency, 2 * latency]
    stalls = run.counters["peripherals"]["stall_cycles"]
    assert sorted(stalls) == [0, latency]
    assert run.counters["peripherals"]["busy_cycles"] == 2 * latency
    assert check_outputs(exp, sc, run)["golden_match"]


def test_constructor_errors_name_the_argument():
    with pytest.raises(ParameterError, match="n_adcs=5"):
        TileSpec(n_rows=8, n_columns=8, n_adcs=5)
    with pytest.raises(ParameterError, match="weight_bits=6"):
        TileSpec(bits_per_cell=4, weight_bits=6)
    with pytest.raises(ParameterError, match="core='analog'"):
        CrossbarArray(tile=TileSpec(), core="analog")
    with pytest.raises(ParameterError, match="group_size=0"):
        TileGroup(tile=TileSpec(), group_size=0)
    with pytest.raises(ParameterError, match="group_size=0"):
        PeripheralSet(tile=TileSpec(), group_size=0)
    # the tile is one specification object, never loose keywords
    with pytest.raises(ParameterError, match="tile=.*TileSpec"):
        CrossbarArray(tile={"n_rows": 8})
    gc.collect()   # the half-built objects warn here, under this module's filter


def test_properties_mirror_constructor_arguments():
    t = TileGroup(tile=TileSpec(n_rows=16, n_columns=16, bits_per_cell=2, weight_bits=4,
                                input_bits=4, n_adcs=4, adc_bits=6), group_size=3, core="logic")
    assert (t.group_size, t.core, t.geometry.n_adcs, t.geometry.n_outputs) == (3, "logic", 4, 8)
    assert t.mvm_latency == 4 * 4 + 4
    assert np.all([xb.bits_per_cell == 2 for xb in t.crossbars])
    Fragment.get(t, None)   # and it elaborates


# signed-weight encodings and the calibrated ADC range: a truncating, saturating ADC (5 bits
# for 7-8-bit signed line sums) so that every window and clip path is exercised
ENCODED = [
    dict(weight_encoding="differential", adc_range="fixed", adc_bits=5),
    dict(weight_encoding="differential", adc_range="calibrated", adc_bits=4),
    dict(weight_encoding="reference_column", adc_range="fixed", adc_bits=5),
    dict(weight_encoding="reference_column", adc_range="calibrated", adc_bits=4),
]


@pytest.mark.parametrize("core", ["logic", "macro"])
@pytest.mark.parametrize("tile", ENCODED, ids=lambda t: f"{t['weight_encoding']}-{t['adc_range']}")
def test_amaranth_encodings_bit_exact(core, tile):
    exp = small(core=core, n_mvms=12, **tile)
    sc = make_scenario(exp)
    run = run_scenario(exp, sc, "amaranth")
    check = check_outputs(exp, sc, run)
    assert check["golden_match"], check["mismatches"]
    g = exp.tile.spec()
    # the encoding's line count sets the conversions and the latency
    assert run.counters["peripherals"]["adc_conversions"] == 12 * g.input_bits * g.n_lines
    assert check["mvm_latency"] == g.input_bits * g.n_lines // g.n_adcs + 4
    if tile["adc_range"] == "calibrated":
        assert sc.adc_shifts.shape == (exp.tile.group_size, g.slices_per_weight)


def test_encoding_geometry_and_errors():
    d = TileSpec(n_rows=16, n_columns=16, bits_per_cell=2, weight_bits=4, input_bits=4,
                     n_adcs=4, adc_bits=6, adc_shift=None, weight_encoding="differential")
    # 2 slices x 2 columns per weight: 4 outputs, 8 column pairs over 4 ADCs
    assert (d.n_outputs, d.n_lines, d.columns_per_adc, d.offset_correction) == (4, 8, 2, 0)
    assert d.sum_range == (-48, 48) and d.sum_bits == 7
    r = TileSpec(n_rows=16, n_columns=16, bits_per_cell=2, weight_bits=4, input_bits=4,
                     n_adcs=4, adc_bits=6, adc_shift=None, weight_encoding="reference_column")
    # cells u = w + 8 in 2 slices, minus the reference 2 per slice: 8 - 2 * (1 + 4) = -2
    assert (r.n_outputs, r.n_physical_columns, r.offset_correction) == (8, 17, -2)
    assert r.sum_range == (-32, 16)
    with pytest.raises(ParameterError, match="adc_range='calibrated'.*differential"):
        TileSpec(n_rows=16, n_columns=16, bits_per_cell=2, weight_bits=4, input_bits=4,
                     n_adcs=4, adc_bits=6, adc_shift=None, adc_range="calibrated")
    with pytest.raises(ParameterError, match="n_columns=14.*differential"):
        TileSpec(n_rows=16, n_columns=14, bits_per_cell=2, weight_bits=4, input_bits=4,
                     n_adcs=1, adc_bits=6, adc_shift=None, weight_encoding="differential")
