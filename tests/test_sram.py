"""``moepim.hw.sram.Sram``, the buffers' one-write one-read-port RAM: one seeded scenario (with
reads of the row being written, and reads held while ``r_en`` is low) run on a golden model,
on Amaranth's simulator (an ``amaranth.lib.memory`` memory, under its platform) and on the
macro's Verilog model under Icarus (the exported ``Instance``, ``hw/verilog/moepim_sram.v``);
every cycle's ``r_data`` is compared."""

import subprocess

import numpy as np
import pytest
from amaranth import unsigned

from moepim.hw.sram import SRAM_MACRO_NAME, Sram
from moepim.sim.block_run import amaranth_simulator
from moepim.sim.config import REPO_ROOT

from .conftest import need_icarus

WIDTH, DEPTH, CYCLES = 12, 13, 200          # a depth that is not a power of two


def _scenario(seed=3):
    """Per cycle ``(w_en, w_addr, w_data, r_en, r_addr)``; a quarter of the reads hit the row
    written in the same cycle."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(CYCLES):
        w_addr = int(rng.integers(0, DEPTH))
        r_addr = w_addr if rng.random() < 0.25 else int(rng.integers(0, DEPTH))
        out.append((int(rng.random() < 0.6), w_addr, int(rng.integers(0, 1 << WIDTH)),
                    int(rng.random() < 0.7), r_addr))
    return out


def _golden(scenario) -> list[int]:
    """``r_data`` after each cycle's edge: the row before the edge's write (non-transparent),
    held while ``r_en`` is low; rows start at zero."""
    rows, r_data, out = [0] * DEPTH, 0, []
    for w_en, w_addr, w_data, r_en, r_addr in scenario:
        if r_en:
            r_data = rows[r_addr]
        if w_en:
            rows[w_addr] = w_data
        out.append(r_data)
    return out


def test_golden_model_by_hand():
    # write 5 to row 1 while reading it (old 0), then read it (5), then hold with r_en low
    assert _golden([(1, 1, 5, 1, 1), (0, 0, 0, 1, 1), (1, 1, 7, 0, 0), (0, 0, 0, 1, 1)]) == \
        [0, 5, 5, 7]


def test_sram_memory_core_on_amaranth():
    scenario = _scenario()
    sram = Sram(shape=unsigned(WIDTH), depth=DEPTH)
    sim = amaranth_simulator(sram)          # its memory under Amaranth's simulator
    got = []

    async def bench(ctx):
        for w_en, w_addr, w_data, r_en, r_addr in scenario:
            ctx.set(sram.w_en, w_en)
            ctx.set(sram.w_addr, w_addr)
            ctx.set(sram.w_data, w_data)
            ctx.set(sram.r_en, r_en)
            ctx.set(sram.r_addr, r_addr)
            await ctx.tick()
            got.append(ctx.get(sram.r_data))

    sim.add_testbench(bench)
    sim.run()
    assert got == _golden(scenario)
    assert sram.bits == WIDTH * DEPTH


def test_sram_macro_model_on_icarus(tmp_path):
    need_icarus()
    scenario = _scenario()
    addr = (DEPTH - 1).bit_length()
    drive = "\n".join(
        f"    w_en = {a}; w_addr = {b}; w_data = {c}; r_en = {d}; r_addr = {e};\n"
        "    @(posedge clk); #1 $display(\"%0d\", r_data);"
        for a, b, c, d, e in scenario)
    bench = tmp_path / "bench.v"
    bench.write_text(f"""`timescale 1ns/1ps
module bench;
    reg clk = 0;
    always #5 clk = ~clk;
    reg w_en = 0, r_en = 0;
    reg [{addr - 1}:0] w_addr = 0, r_addr = 0;
    reg [{WIDTH - 1}:0] w_data = 0;
    wire [{WIDTH - 1}:0] r_data;
    {SRAM_MACRO_NAME} #(.WIDTH({WIDTH}), .DEPTH({DEPTH}), .ADDR_BITS({addr})) dut (
        .clk(clk), .w_en(w_en), .w_addr(w_addr), .w_data(w_data), .r_en(r_en),
        .r_addr(r_addr), .r_data(r_data));
    initial begin
{drive}
        $finish;
    end
endmodule
""")
    model = REPO_ROOT / "hw" / "verilog" / f"{SRAM_MACRO_NAME}.v"
    exe = tmp_path / "bench.vvp"
    subprocess.run(["iverilog", "-g2012", "-o", str(exe), str(bench), str(model)], check=True,
                   capture_output=True, text=True)
    run = subprocess.run(["vvp", "-n", str(exe)], check=True, capture_output=True, text=True)
    got = [int(x) for x in run.stdout.split() if x.isdigit()]
    assert got == _golden(scenario)


# a constructor that refuses its arguments leaves a half-made component behind
@pytest.mark.filterwarnings("ignore:.*created but never used")
def test_sram_refuses_bad_parameters():
    with pytest.raises(ValueError, match="depth"):
        Sram(shape=unsigned(8), depth=0)
