"""Python behavioural model of the crossbar macro for Amaranth's simulator.

A ``CrossbarArray(core="python")`` leaves its core signals undriven; :func:`add_macro_model`
adds a simulator process that plays ``moepim_xbar_macro`` (see ``hw/verilog``): per rising edge
it samples ``we``/``wrow``/``wdata``, ``convert``/``col`` and ``drive``/``wl`` and updates the
cells, the sampled sums and the held plane exactly as the Verilog model does. Column sums are
numpy dot products, so full-size 256x256 arrays run at Amaranth-simulator speed.
"""

from __future__ import annotations

import numpy as np

from moepim.testbenches.bits import pack_array, unpack_array

__all__ = ["add_macro_model"]


def add_macro_model(sim, xbar) -> None:
    g = xbar.geometry
    cells = np.zeros((g.n_rows, g.n_columns), dtype=np.int64)
    cpa = g.columns_per_adc
    port = xbar.analog

    async def process(ctx):
        plane = np.zeros(g.n_rows, dtype=np.int64)
        async for _, rst, we, wrow, wdata, convert, col, drive, wl in ctx.tick().sample(
                xbar.core_we, xbar.core_wrow, xbar.core_wdata, port.convert, port.col,
                port.drive, port.wl):
            if we:
                cells[wrow] = unpack_array(wdata, g.bits_per_cell, g.n_columns, False)
            if rst:
                plane[:] = 0
                ctx.set(xbar.core_sums, 0)
                continue
            if convert:
                columns = np.arange(g.n_adcs) * cpa + col
                ctx.set(xbar.core_sums, pack_array(plane @ cells[:, columns], g.sum_bits))
            if drive:
                plane = unpack_array(wl, 1, g.n_rows, False)

    sim.add_process(process)
