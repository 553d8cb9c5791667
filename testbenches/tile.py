"""cocotb testbench of ``TileGroup`` on the exported Verilog (Verilator or Icarus).

It reads a scenario written by ``moepim.sim.tile_run`` (``MOEPIM_SCENARIO``: a folder with
``spec.json`` and ``data.npz``), plays it, and writes ``result.json`` + ``result.npz`` there.
It checks nothing itself: the caller compares every output with the golden model, so the same
scenario gives comparable results under every simulator.

Scenario: weights are programmed row by row through ``i_weights``; then requester ``i`` issues
its MVMs in order, each after ``gaps[k]`` idle cycles, holding ``valid`` until accepted;
``o_results.ready`` follows ``ready_pattern[cycle % len]``. Cycle 0 is the first cycle after
weight programming.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge
from cocotb.utils import get_sim_time

from .bits import pack_fields, unpack_fields

PERIOD_NS = 10


class _Cycles:
    def __init__(self, t0):
        self.t0 = t0

    def now(self) -> int:
        return int(round((get_sim_time(unit="ns") - self.t0) / PERIOD_NS))


async def _program_weights(dut, spec, weights):
    fields = spec["fields"]["i_weights"]
    dut.i_weights__valid.value = 1
    for xbar in range(weights.shape[0]):
        for row in range(weights.shape[1]):
            dut.i_weights__payload.value = pack_fields(fields, xbar=xbar, row=row,
                                                       w=weights[xbar, row])
            while True:
                await ReadOnly()
                accepted = int(dut.i_weights__ready.value)
                await RisingEdge(dut.clk)
                if accepted:
                    break
    dut.i_weights__valid.value = 0


async def _requester(dut, i, spec, data, cycles, accept):
    valid = getattr(dut, f"i_requests__{i}__valid")
    ready = getattr(dut, f"i_requests__{i}__ready")
    payload = getattr(dut, f"i_requests__{i}__payload")
    fields = spec["fields"]["i_requests"]
    for k in np.flatnonzero(data["xbar"] == i):
        for _ in range(int(data["gaps"][k])):
            await RisingEdge(dut.clk)
        payload.value = pack_fields(fields, x=data["xs"][k])
        valid.value = 1
        while True:
            await ReadOnly()
            accepted = int(ready.value)
            when = cycles.now()
            await RisingEdge(dut.clk)
            if accepted:
                accept[k] = when
                break
        valid.value = 0


async def _monitor(dut, spec, data, cycles, results):
    fields = spec["fields"]["o_results"]
    pattern = data["ready_pattern"]
    n = len(data["xs"])
    while len(results) < n:
        now = cycles.now()
        dut.o_results__ready.value = int(pattern[now % len(pattern)])
        await ReadOnly()
        if int(dut.o_results__valid.value) and int(dut.o_results__ready.value):
            fields_v = unpack_fields(fields, int(dut.o_results__payload.value))
            results.append((fields_v["xbar"], fields_v["y"], now))
        await RisingEdge(dut.clk)
        if now > spec["timeout_cycles"]:
            raise TimeoutError(f"only {len(results)} of {n} results after {now} cycles")


@cocotb.test()
async def run_scenario(dut):
    folder = Path(os.environ["MOEPIM_SCENARIO"])
    spec = json.loads((folder / "spec.json").read_text())
    with np.load(folder / "data.npz") as npz:
        data = {k: npz[k] for k in npz.files}

    Clock(dut.clk, PERIOD_NS, unit="ns").start()
    dut.rst.value = 1
    dut.i_weights__valid.value = 0
    dut.o_results__ready.value = 0
    for i in range(spec["group_size"]):
        getattr(dut, f"i_requests__{i}__valid").value = 0
    for _ in range(2):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    t_load = get_sim_time(unit="ns")
    await _program_weights(dut, spec, data["weights"])
    cycles = _Cycles(get_sim_time(unit="ns"))
    load_cycles = int(round((cycles.t0 - t_load) / PERIOD_NS))

    n = len(data["xs"])
    wall0 = time.perf_counter()
    accept = np.full(n, -1, dtype=np.int64)
    results = []
    tasks = [cocotb.start_soon(_requester(dut, i, spec, data, cycles, accept))
             for i in range(spec["group_size"])]
    await _monitor(dut, spec, data, cycles, results)
    for t in tasks:
        await t
    total = cycles.now()
    mvm_wall_s = time.perf_counter() - wall0
    await ReadOnly()
    counters = int(dut.counters.value)

    # results of one crossbar come back in the order its requests were accepted
    order = {i: list(np.flatnonzero(data["xbar"] == i)) for i in range(spec["group_size"])}
    y = np.zeros((n, len(results[0][1])), dtype=np.int64)
    done = np.full(n, -1, dtype=np.int64)
    result_xbar = np.zeros(n, dtype=np.int64)
    for xbar, values, when in results:
        k = order[xbar].pop(0)
        y[k], done[k], result_xbar[k] = values, when, xbar
    np.savez(folder / "result.npz", y=y, accept=accept, done=done, xbar=result_xbar)
    (folder / "result.json").write_text(json.dumps({
        "cycles": total, "load_cycles": load_cycles, "counters": str(counters),
        "mvm_wall_s": mvm_wall_s}))
