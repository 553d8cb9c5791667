"""cocotb entry point for the benches of :mod:`moepim.testbenches.benches`.

``MOEPIM_BENCH`` names a JSON file: ``{"bench": name, "args": {...}, "ports": [...],
"preset": {...}, "result": path}``; inputs start at 0, or at their ``preset`` value (set
before the first clock edge: e.g. a matrix bank's ``bank_id``, which the macro reads then);
the result of the bench is written to ``result`` as JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge

from .benches import BENCHES
from .harness import CocotbIO

PERIOD_NS = 10          # the simulation clock (cycles are what the benches count)


@cocotb.test()
async def run_bench(dut):
    spec = json.loads(Path(os.environ["MOEPIM_BENCH"]).read_text())
    Clock(dut.clk, PERIOD_NS, unit="ns").start()
    preset = spec.get("preset", {})
    for port in spec["ports"]:
        if port["direction"] == "input" and port["name"] not in ("clk", "rst"):
            getattr(dut, port["name"]).value = preset.get(port["name"], 0)
    dut.rst.value = 1
    for _ in range(2):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    io = CocotbIO(dut, spec["ports"], period_ns=PERIOD_NS)
    result = await BENCHES[spec["bench"]](io, **spec["args"])
    Path(spec["result"]).write_text(json.dumps(result))
