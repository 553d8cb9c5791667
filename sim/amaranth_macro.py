"""Python behavioural models of the analog macros for Amaranth's simulator: the crossbar
(``add_macro_model``) and the matrix bank (``add_bank_model``).

Elaborated for Amaranth's simulator (``moepim.hw.params.AmaranthSimulation``), a
``CrossbarArray(core="macro")`` leaves its core signals undriven; :func:`add_macro_model`
adds a simulator process that plays ``moepim_xbar_macro`` (see ``hw/verilog``): per rising edge
it samples ``we``/``wrow``/``wdata``, ``convert``/``col`` and ``drive``/``wl`` and updates the
cells, the sampled sums and the held plane exactly as the Verilog model does. Column sums are
numpy dot products, so full-size 256x256 arrays run at Amaranth-simulator speed.
"""

from __future__ import annotations

import numpy as np

from moepim.models.pim import row_tile_outputs, split_bank_image
from moepim.spec.tile import TileSpec
from moepim.testbenches.bits import pack_array, unpack_array

__all__ = ["add_macro_model", "add_bank_model"]


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
                lines = (np.arange(g.n_adcs) * cpa + col) * g.columns_per_line
                sums = plane @ cells[:, lines]
                if g.weight_encoding == "differential":
                    sums = sums - plane @ cells[:, lines + 1]
                elif g.weight_encoding == "reference_column":
                    sums = sums - g.reference_cell * int(plane.sum())
                ctx.set(xbar.core_sums, pack_array(sums & ((1 << g.sum_bits) - 1), g.sum_bits))
            if drive:
                plane = unpack_array(wl, 1, g.n_rows, False)

    sim.add_process(process)


def add_bank_model(sim, bank, image: np.ndarray) -> None:
    """Play ``moepim_matrix_bank`` (``hw/verilog``) for a ``MatrixBank`` (elaborated for it: its outputs undriven) in
    Amaranth's simulator, edge for edge as the Verilog model, with the cell ``image`` of
    ``moepim.models.pim.bank_image``."""
    g = bank.geometry
    shape = TileSpec(n_rows=g.n_rows, n_columns=g.n_columns, bits_per_cell=g.bits_per_cell,
                      weight_bits=g.weight_bits, input_bits=g.input_bits, n_adcs=g.n_adcs,
                      adc_bits=g.adc_bits, adc_shift=g.resolved_adc_shift,
                      weight_encoding=g.weight_encoding, adc_range=g.adc_range)
    rt_n, ct_n = bank.row_tiles, bank.col_tiles
    image, windows = split_bank_image(image, bank.n_slots, shape)
    cells = np.asarray(image, dtype=np.uint8).reshape(bank.n_slots, rt_n, ct_n, g.n_rows,
                                                      g.n_columns)
    bit_mask = (1 << g.input_bits) - 1
    lanes, latency, out_bits = bank.lanes, bank.mvm_latency, g.output_bits
    n_outs_pad = ct_n * g.n_outputs
    mask = (1 << out_bits) - 1

    async def process(ctx):
        x = np.zeros(rt_n * g.n_rows, dtype=np.int64)
        results = np.zeros((n_outs_pad, rt_n), dtype=np.int64)
        busy = done = count = dac = 0
        async for _, rst, in_we, in_addr, in_data, start, slot, rd_addr in ctx.tick().sample(
                bank.in_we, bank.in_addr, bank.in_data.as_value(), bank.start, bank.slot,
                bank.rd_addr):
            if rst:
                busy = done = count = dac = 0
            else:
                done = 0
                if start and not busy:
                    # per output and row tile, the partial sum; one word-line pulse per
                    # '1' input bit per tile position
                    results = row_tile_outputs(
                        x[None], cells[slot], shape,
                        None if windows is None else tuple(windows[slot]))[0].T
                    ones = sum(bin(int(v)).count("1") for v in x & bit_mask)
                    dac = (dac + ones * ct_n) & ((1 << len(bank.dac_drives)) - 1)
                    busy, count = 1, 1
                elif busy:
                    if count == latency - 1:
                        busy, done = 0, 1
                    count += 1
            if in_we:
                vals = unpack_array(in_data, g.input_bits, lanes, True)
                lo = in_addr * lanes
                n = max(0, min(lanes, bank.n_in - lo))
                x[lo:lo + n] = vals[:n]
            lo = rd_addr * lanes
            block = np.zeros((lanes, rt_n), dtype=np.int64)
            n = max(0, min(lanes, bank.n_out - lo))
            block[:n] = results[lo:lo + n]
            ctx.set(bank.rd_data.as_value(), pack_array(block.reshape(-1) & mask, out_bits))
            ctx.set(bank.busy, busy)
            ctx.set(bank.done, done)
            ctx.set(bank.dac_drives, dac)

    sim.add_process(process)
