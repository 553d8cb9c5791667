"""moepim synth: Yosys estimate of the digital logic, cached by export hash."""

import json
import time

import pytest

from moepim.sim.build import compact_zero_init
from moepim.sim.cli import main
from moepim.sim.config import REPO_ROOT, load_experiment

from .conftest import SMALL


@pytest.mark.xdist_group("yosys")
def test_synth_peripheral_set(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["synth", str(SMALL), "--top", "peripheral_set", "--out", str(out),
                 "--quiet"]) == 0
    r = json.loads((out / "synth.json").read_text())
    exp = load_experiment(SMALL)
    g = exp.tile.spec()
    t = exp.tile
    # registers that cannot be optimised away: column accumulators and the event counters
    must = g.n_columns * g.acc_bits + (5 + t.group_size) * t.counter_bits
    assert r["flip_flops"] >= must
    assert r["transistors"] >= 16 * r["flip_flops"]
    assert r["area_um2"] == pytest.approx(r["transistors"] * exp.tech.transistor_area_um2.value)
    assert all(k.startswith("$_") for k in r["cells_by_type"])      # gates and flip-flops
    assert r["flow"] == "gates" and r["memory_bits"] == 0
    assert "NAND2_X1" in r["source"] and (out / "synth.txt").read_text().startswith(
        "peripheral_set:")
    # cached by export hash: the second run does not call yosys
    t0 = time.monotonic()
    assert main(["synth", str(SMALL), "--top", "peripheral_set", "--out", str(tmp_path / "t"),
                 "--quiet"]) == 0
    assert time.monotonic() - t0 < 5
    assert json.loads((tmp_path / "t" / "synth.json").read_text()) == r


@pytest.mark.xdist_group("yosys")
def test_abc_flow_maps_to_nand_nor_not_and_needs_fewer_transistors(tmp_path):
    runs = {}
    for flow in ("gates", "abc"):
        out = tmp_path / flow
        assert main(["synth", str(SMALL), "--top", "peripheral_set", "--out", str(out),
                     "--flow", flow, "--quiet"]) == 0
        runs[flow] = json.loads((out / "synth.json").read_text())
    assert set(runs["abc"]["cells_by_type"]) <= {"$_DFF_P_", "$_NAND_", "$_NOR_", "$_NOT_"}
    assert runs["abc"]["flip_flops"] == runs["gates"]["flip_flops"]
    assert runs["abc"]["transistors"] < runs["gates"]["transistors"]


def test_synth_tile_group_keeps_the_macro_out(tmp_path):
    out = tmp_path / "g"
    assert main(["synth", str(SMALL), "--top", "tile_group", "--out", str(out), "--quiet"]) == 0
    r = json.loads((out / "synth.json").read_text())
    assert "moepim_xbar_macro" in r["cells_by_type"]          # a black box, not logic
    assert {"tile_group", "tile_group.peripherals", "tile_group.xbar0"} <= set(r["modules"])


@pytest.mark.xdist_group("yosys")
def test_synth_prices_memories_as_sram_not_logic(tmp_path):
    """The GO cache's score SRAM leaves the netlist as a memory: width x depth bits at the tech
    file's SRAM density, listed by name; the logic area is the rest."""
    cfg = REPO_ROOT / "configs" / "experiments" / "gocache-small.yaml"
    out = tmp_path / "c"
    assert main(["synth", str(cfg), "--top", "go_cache", "--out", str(out), "--quiet"]) == 0
    r = json.loads((out / "synth.json").read_text())
    exp = load_experiment(cfg)
    rows = exp.workload.n_prompt + exp.workload.n_generate
    sram = [x for x in r["memories"] if x["name"] == "sram"]
    assert len(sram) == 1
    assert sram[0]["width"] == exp.model.n_experts * 16 and sram[0]["depth"] == rows
    assert r["memory_bits"] == sum(x["bits"] * x["instances"] for x in r["memories"])
    assert r["memory_bits"] >= rows * exp.model.n_experts * 16
    sram_um2 = exp.tech.sram_area_um2_per_bit.value
    assert r["memory_area_mm2"] == pytest.approx(r["memory_bits"] * sram_um2 * 1e-6)
    assert r["area_mm2"] == pytest.approx(r["logic_area_mm2"] + r["memory_area_mm2"])
    assert not any("mem" in k for k in r["cells_by_type"])         # no memory cells as logic
    assert "go_cache.sram" in (out / "synth.txt").read_text()


def test_zero_memory_init_becomes_a_loop():
    rows = "".join(f"    \\mem$1 [{i}] = 8'h00;\n" for i in range(4))
    text = f"module m;\n  reg [7:0] \\mem$1 [3:0];\n  initial begin\n{rows}  end\nendmodule\n"
    out = compact_zero_init(text)
    assert "for (i = 0; i < 4; i = i + 1) \\mem$1 [i] = 8'h0;" in out
    assert "initial begin : \\mem$1__zero \n" in out and "[3] = " not in out
    # anything but rows 0..n-1 set to zero, in order, is left as written
    nonzero = text.replace("[2] = 8'h00", "[2] = 8'h05")
    assert compact_zero_init(nonzero) == nonzero
    shuffled = text.replace("[1] = ", "[9] = ")
    assert compact_zero_init(shuffled) == shuffled
