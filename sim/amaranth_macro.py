"""Python behavioural models of the analog macros for Amaranth's simulator: the crossbar
(``add_macro_model``) and the matrix bank (``add_bank_model``).

A ``CrossbarArray(core="python")`` leaves its core signals undriven; :func:`add_macro_model`
adds a simulator process that plays ``moepim_xbar_macro`` (see ``hw/verilog``): per rising edge
it samples ``we``/``wrow``/``wdata``, ``convert``/``col`` and ``drive``/``wl`` and updates the
cells, the sampled sums and the held plane exactly as the Verilog model does. Column sums are
numpy dot products, so full-size 256x256 arrays run at Amaranth-simulator speed.
"""

from __future__ import annotations

import numpy as np

from moepim.testbenches.bits import pack_array, unpack_array

__all__ = ["add_macro_model", "add_bank_model", "bank_results"]


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


def bank_results(cells: np.ndarray, x: np.ndarray, g, row_tiles: int, col_tiles: int
                 ) -> tuple[np.ndarray, int]:
    """One MVM of ``moepim_matrix_bank`` on one expert slot's ``cells`` (row tile, column
    tile, row, column): per output and row tile the partial sum (offset corrected), and the
    word-line pulses. The arithmetic of ``moepim.models.tile.tile_mvm``, tile by tile."""
    ib, spw = g.input_bits, g.slices_per_weight
    n_outs = g.n_columns // spw
    shift, top = g.resolved_adc_shift, (1 << g.adc_bits) - 1
    xu = x & ((1 << ib) - 1)
    planes = ((xu[None, :] >> np.arange(ib)[:, None]) & 1).astype(np.float64)   # (IB, pad)
    pw = np.array([1 << b for b in range(ib - 1)] + [-(1 << (ib - 1))], dtype=np.int64)
    slice_w = np.array([1 << (j * g.bits_per_cell) for j in range(spw)], dtype=np.int64)
    out = np.zeros((col_tiles * n_outs, row_tiles), dtype=np.int64)
    half = 1 << (g.weight_bits - 1)
    for rt in range(row_tiles):
        p = planes[:, rt * g.n_rows:(rt + 1) * g.n_rows]
        c = cells[rt].transpose(1, 0, 2).reshape(g.n_rows, -1).astype(np.float64)
        sums = np.rint(p @ c).astype(np.int64)                     # (IB, ct*C), exact
        conv = np.minimum(sums >> shift, top) << shift
        col = pw @ conv                                            # (ct*C,)
        acc = col.reshape(col_tiles * n_outs, spw) @ slice_w
        out[:, rt] = acc - half * int(x[rt * g.n_rows:(rt + 1) * g.n_rows].sum())
    ones = int(sum(bin(int(v)).count("1") for v in xu)) * col_tiles
    return out, ones


def add_bank_model(sim, bank, image: np.ndarray) -> None:
    """Play ``moepim_matrix_bank`` (``hw/verilog``) for a ``MatrixBank(core="python")`` in
    Amaranth's simulator, edge for edge as the Verilog model, with the cell ``image`` of
    ``moepim.models.pim.bank_image``."""
    g = bank.geometry
    rt_n, ct_n = bank.row_tiles, bank.col_tiles
    cells = np.asarray(image, dtype=np.uint8).reshape(bank.n_slots, rt_n, ct_n, g.n_rows,
                                                      g.n_columns)
    lanes, latency, out_bits = bank.lanes, bank.mvm_latency, g.output_bits
    n_outs_pad = ct_n * (g.n_columns // g.slices_per_weight)
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
                    results, ones = bank_results(cells[slot], x, g, rt_n, ct_n)
                    dac = (dac + ones) & ((1 << len(bank.dac_drives)) - 1)
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
