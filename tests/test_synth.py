"""moepim synth: Yosys estimate of the digital logic, cached by export hash."""

import json
import time

import pytest

from moepim.hw import TileGeometry
from moepim.sim.cli import main
from moepim.sim.config import load_experiment

from .conftest import SMALL


@pytest.mark.xdist_group("yosys")
def test_synth_peripheral_set(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["synth", str(SMALL), "--top", "peripheral_set", "--out", str(out),
                 "--quiet"]) == 0
    r = json.loads((out / "synth.json").read_text())
    exp = load_experiment(SMALL)
    g = TileGeometry(**exp.tile.shape_kwargs())
    t = exp.tile
    # registers that cannot be optimised away: column accumulators and the event counters
    must = g.n_columns * g.acc_bits + (5 + t.group_size) * t.counter_bits
    assert r["flip_flops"] >= must
    assert r["transistors"] >= 16 * r["flip_flops"]
    assert r["area_um2"] == pytest.approx(r["transistors"] * exp.tech.transistor_area_um2.value)
    assert set(r["cells_by_type"]) <= {"$_DFF_P_", "$_NAND_", "$_NOR_", "$_NOT_"}
    assert "NAND2_X1" in r["source"] and (out / "synth.txt").read_text().startswith(
        "peripheral_set:")
    # cached by export hash: the second run does not call yosys
    t0 = time.monotonic()
    assert main(["synth", str(SMALL), "--top", "peripheral_set", "--out", str(tmp_path / "t"),
                 "--quiet"]) == 0
    assert time.monotonic() - t0 < 5
    assert json.loads((tmp_path / "t" / "synth.json").read_text()) == r


def test_synth_tile_group_keeps_the_macro_out(tmp_path):
    out = tmp_path / "g"
    assert main(["synth", str(SMALL), "--top", "tile_group", "--out", str(out), "--quiet"]) == 0
    r = json.loads((out / "synth.json").read_text())
    assert "moepim_xbar_macro" in r["cells_by_type"]          # a black box, not logic
    assert {"tile_group", "tile_group.peripherals", "tile_group.xbar0"} <= set(r["modules"])
