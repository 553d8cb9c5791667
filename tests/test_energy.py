"""Energy and area against figures computed by hand for tiny configurations, in both
power-gating modes (``moepim.sim.layer_report``, ``moepim.sim.report``)."""

import dataclasses

import pytest

from moepim.sim.config import REPO_ROOT, load_experiment
from moepim.sim.layer_report import layer_area_mm2, layer_energy_pj, layer_geometry
from moepim.sim.report import tile_area_mm2, tile_energy_pj

SMALL_LAYER = REPO_ROOT / "configs" / "experiments" / "layer-small.yaml"
SMALL_TILE = REPO_ROOT / "configs" / "experiments" / "tile-small.yaml"

# the tech file's constants these hand computations use (a changed constant fails here first)
CELL_FJ, DAC_PJ, SHIFT_ADD_PJ = 1.83, 0.0039, 0.021
ADC8_TOTAL_PJ, ADC6_TOTAL_PJ, LEAK_SHARE, ADC_GSPS = 1.67, 1.20, 0.1, 1.2
SRAM_PJ_BIT, ADD_PJ, MULT_PJ = 0.156, 0.1, 3.1
DRAM_ACTIVE_W, DRAM_IDLE_W = 0.2467, 0.1297
CELL_UM2, DAC_UM2, SHIFT_ADD_UM2, ADC8_UM2, ADC6_UM2, SRAM_UM2_BIT = \
    0.001526, 0.166, 60, 1200, 627, 0.158


def test_tech_constants_are_the_ones_computed_with():
    t = load_experiment(SMALL_LAYER).tech
    assert (t.cell_read_energy_fj.value, t.dac_drive_energy_pj.value,
            t.shift_add_energy_pj.value) == (CELL_FJ, DAC_PJ, SHIFT_ADD_PJ)
    assert (t.adc_energy_pj[8].value, t.adc_energy_pj[6].value, t.adc_leakage_share.value,
            t.adc_sample_rate_gsps.value) == (ADC8_TOTAL_PJ, ADC6_TOTAL_PJ, LEAK_SHARE, ADC_GSPS)
    assert t.peripheral_wakeup_energy_pj.value == 0.0 and t.clock_ns.value == 1.0
    assert (t.sram_energy_pj_per_bit.value, t.int_add_energy_pj.value,
            t.int_mult_energy_pj.value) == (SRAM_PJ_BIT, ADD_PJ, MULT_PJ)
    assert (t.cell_area_um2.value, t.dac_area_um2.value, t.shift_add_area_um2.value,
            t.adc_area_um2[8].value, t.adc_area_um2[6].value,
            t.sram_area_um2_per_bit.value) == (CELL_UM2, DAC_UM2, SHIFT_ADD_UM2, ADC8_UM2,
                                               ADC6_UM2, SRAM_UM2_BIT)


def test_adc_pays_dynamic_and_leakage_once():
    """The source's 8-bit ADC: 2.0 mW at full rate, of which PUMA's 0.2 mW is leakage. A
    conversion every 1/1.2 ns costs the dynamic part; a powered ADC leaks the rest: together
    exactly the source's total power, not total + leakage."""
    from moepim.sim.layer_report import adc_split

    tech = load_experiment(SMALL_LAYER).tech
    dyn_pj, leak_mw = adc_split(tech, 8)
    assert dyn_pj == pytest.approx(1.67 * 0.9)                  # 1.503 pJ
    assert leak_mw == pytest.approx(1.67 * 0.1 * 1.2)           # 0.2004 mW (PUMA: 0.2)
    total_mw = dyn_pj * 1.2 + leak_mw                           # pJ x GS/s = mW
    assert total_mw == pytest.approx(1.67 * 1.2)                # 2.004 mW, the source's 2.0


def _layer(gating: str):
    exp = load_experiment(SMALL_LAYER)
    return dataclasses.replace(exp, layer=dataclasses.replace(exp.layer, power_gating=gating))


# tiny-ec-256 on 64x64 tiles of 8-bit cells (one column per weight, 8 ADCs of 8 bits, 8-bit
# inputs), S2: 4 groups of 2 experts.
#   up   256 x 96  -> ceil(256/64) = 4 row tiles x ceil(96/64) = 2 column tiles = 8 crossbars
#   down 96 x 256  -> 2 row tiles x 4 column tiles                            = 8 crossbars
#   per expert 16 crossbars = 16 peripheral sets per group's engine
#   gate 256 x 8   -> 4 x 1                                                    = 4 crossbars
#   peripheral sets 16 x 4 groups + 4 = 68; crossbars 16 x 8 experts + 4 = 132
#   mvm_latency = input_bits x columns per ADC + 4 = 8 x 64/8 + 4 = 68 cycles
EVENTS = {"jobs": 20, "shared_jobs": 0, "routed_tokens": 11, "dac_drives": 5000,
          "hw_routing": True, "buffer_bits": 40000, "go_cache_bits": 600,
          "output_values": 11 * 256, "dram_bytes": 0, "dram_busy_ns": 1000.0,
          "mvm_latency": 68, "net_toggles": None}
TIME_NS = 10000.0


def _hand_dynamic() -> dict:
    adc_dyn = ADC8_TOTAL_PJ * (1 - LEAK_SHARE)                 # 1.503 pJ per conversion
    expert_mvms = 20 * 16                                      # jobs x crossbars per expert
    gate_mvms = 11 * 4                                         # routed tokens x gate crossbars
    cells = 8 * 64 * 64                                        # bit planes x rows x columns
    conversions = 8 * 64                                       # bit planes x columns
    # per job: adds = (4 - 1) x 96 (up's row tiles) + (2 - 1) x 256 (down's) + 256 (combine)
    #          mults = 96 (up requant) + 256 (down requant) + 256 (gate weight)
    adds, mults = 20 * (3 * 96 + 1 * 256 + 256), 20 * (96 + 256 + 256) + 11 * 256
    return {
        "crossbar": expert_mvms * cells * CELL_FJ * 1e-3,                 # 19,188.94 pJ
        "dac": 5000 * DAC_PJ,                                            # 19.5 pJ
        "adc": expert_mvms * conversions * adc_dyn,                      # 246,251.52 pJ
        "shift_add": expert_mvms * conversions * SHIFT_ADD_PJ,           # 3,440.64 pJ
        "router": gate_mvms * (cells * CELL_FJ * 1e-3 + conversions * adc_dyn
                               + conversions * SHIFT_ADD_PJ),
        "digital_arithmetic": adds * ADD_PJ + mults * MULT_PJ,           # 48,025.6 pJ
        "buffers": 40000 * SRAM_PJ_BIT,                                  # 6,240 pJ
        "go_cache": 600 * SRAM_PJ_BIT,                                   # 93.6 pJ
        "wakeup": 0.0,
    }


def _hand_dram() -> float:
    # active power x busy time + idle power x the rest; W x ns = nJ -> x 1e3 pJ
    return (DRAM_ACTIVE_W * 1000 + DRAM_IDLE_W * (10000 - 1000)) * 1e3  # 1,414,000 pJ


LEAK_MW = ADC8_TOTAL_PJ * LEAK_SHARE * ADC_GSPS                  # 0.2004 mW per powered ADC


@pytest.mark.parametrize("gating, leakage_pj", [
    # idle: (320 expert + 44 gate tile MVMs) x 68 cycles x 1 ns x 8 ADCs x 0.2004 mW
    ("idle", (20 * 16 + 11 * 4) * 68 * 1.0 * 8 * LEAK_MW),          # 39,682.41 pJ
    # none: 68 peripheral sets x 10,000 ns x 8 ADCs x 0.2004 mW
    ("none", 68 * 10000.0 * 8 * LEAK_MW),                           # 1,090,176 pJ
])
def test_layer_energy_by_hand(gating, leakage_pj):
    exp = _layer(gating)
    geo = layer_geometry(exp.model, exp.tile, 4, 2)
    assert (geo["crossbars_per_expert"], geo["gate_crossbars"], geo["peripheral_sets"]) == \
        (16, 4, 68)
    e = layer_energy_pj(exp, geo, dict(EVENTS), TIME_NS)
    expected = {**_hand_dynamic(), "dram": _hand_dram(), "leakage": leakage_pj}
    assert set(e["breakdown"]) == set(expected)
    for key, value in expected.items():
        assert e["breakdown"][key] == pytest.approx(value, rel=1e-12), key
    dynamic = sum(_hand_dynamic().values())
    assert e["groups"]["dynamic"] == pytest.approx(dynamic, rel=1e-12)
    assert e["groups"]["leakage"] == pytest.approx(leakage_pj, rel=1e-12)
    assert e["groups"]["dram"] == pytest.approx(1_414_000.0, rel=1e-12)
    assert e["total"] == pytest.approx(dynamic + leakage_pj + 1_414_000.0, rel=1e-12)
    assert e["power_gating"]["mode"] == gating


def test_idle_gating_leaks_less_than_none_and_only_over_mvms():
    exp_idle, exp_none = _layer("idle"), _layer("none")
    geo = layer_geometry(exp_idle.model, exp_idle.tile, 4, 2)
    idle = layer_energy_pj(exp_idle, geo, dict(EVENTS), TIME_NS)
    # a longer run (DRAM stalls) costs idle-gated ADCs nothing more, ungated ones in proportion
    idle_long = layer_energy_pj(exp_idle, geo, dict(EVENTS), 2 * TIME_NS)
    none = layer_energy_pj(exp_none, geo, dict(EVENTS), TIME_NS)
    none_long = layer_energy_pj(exp_none, geo, dict(EVENTS), 2 * TIME_NS)
    assert idle_long["breakdown"]["leakage"] == idle["breakdown"]["leakage"]
    assert none_long["breakdown"]["leakage"] == pytest.approx(2 * none["breakdown"]["leakage"])
    assert idle["groups"]["dynamic"] == none["groups"]["dynamic"]


def test_layer_area_by_hand():
    exp = _layer("idle")
    geo = layer_geometry(exp.model, exp.tile, 4, 2)
    synth = {"memory_bits": 1000, "logic_area_mm2": 0.002, "flow": "gates", "cells": {},
             "flip_flops": 0, "transistors": 0, "memories": [], "method": "", "source": "",
             "transistor_area_um2": 0.1, "excluded": []}
    a = layer_area_mm2(exp, geo, 500, synth)
    hand_um2 = {
        "arrays": 132 * 64 * 64 * CELL_UM2,        # 132 crossbars of 64 x 64 cells
        "adcs": 68 * 8 * ADC8_UM2,                  # 68 peripheral sets x 8 ADCs
        "dacs": 68 * 64 * DAC_UM2,                  # one 1-bit DAC per row per set
        "shift_adds": 68 * 8 * SHIFT_ADD_UM2,       # one per ADC
        "digital_logic": 0.002e6,
        "sram": (1000 + 500) * SRAM_UM2_BIT,        # layer memories + GO cache
    }
    assert a["breakdown"] == pytest.approx({k: v * 1e-6 for k, v in hand_um2.items()},
                                           rel=1e-12)
    assert a["total"] == pytest.approx(sum(hand_um2.values()) * 1e-6, rel=1e-12)
    assert (a["crossbars"], a["peripheral_sets"]) == (132, 68)


# tile-small: 16 x 16 cells of 2 bits, 4-bit weights (2 columns each), 4-bit inputs, 4 ADCs of
# 6 bits (4 columns each), 3 crossbars sharing the set; mvm_latency = 4 x 4 + 4 = 20 cycles.
TILE_COUNTERS = {"peripherals": {"mvms": 24, "dac_drives": 700, "adc_conversions": 24 * 4 * 16,
                                 "shift_adds": 24 * 4 * 16, "busy_cycles": 24 * 20,
                                 "stall_cycles": [0, 0, 0]},
                 "crossbars": [{"activations": 32, "row_writes": 16}] * 3}


@pytest.mark.parametrize("gating, powered_cycles", [("idle", 24 * 20), ("none", 1000)])
def test_tile_energy_by_hand(gating, powered_cycles):
    exp = load_experiment(SMALL_TILE)
    e = tile_energy_pj(exp.tile, exp.tech, TILE_COUNTERS, None, cycles=1000,
                       power_gating=gating)
    adc6_dyn = ADC6_TOTAL_PJ * (1 - LEAK_SHARE)                 # 1.08 pJ
    leak6_mw = ADC6_TOTAL_PJ * LEAK_SHARE * ADC_GSPS            # 0.144 mW
    hand = {
        "crossbar": 3 * 32 * (16 * 16) * CELL_FJ * 1e-3,         # 96 plane evaluations
        "dac": 700 * DAC_PJ,
        "adc": 24 * 4 * 16 * adc6_dyn,                          # 1536 conversions
        "shift_add": 24 * 4 * 16 * SHIFT_ADD_PJ,
        "leakage": powered_cycles * 1.0 * 4 * leak6_mw,         # cycles x ns x ADCs x mW
        "wakeup": 0.0,
    }
    assert e["breakdown"] == pytest.approx(hand, rel=1e-12)
    assert e["groups"]["leakage"] == pytest.approx(hand["leakage"], rel=1e-12)
    assert e["total"] == pytest.approx(sum(hand.values()), rel=1e-12)


def test_tile_area_by_hand():
    exp = load_experiment(SMALL_TILE)
    a = tile_area_mm2(exp.tile, exp.tech)
    hand_um2 = {"arrays": 3 * 16 * 16 * CELL_UM2, "adcs": 4 * ADC6_UM2,
                "dacs": 16 * DAC_UM2, "shift_adds": 4 * SHIFT_ADD_UM2}
    assert a["breakdown"] == pytest.approx({k: v * 1e-6 for k, v in hand_um2.items()},
                                           rel=1e-12)
