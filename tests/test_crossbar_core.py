"""CrossbarArray alone: its analog port behaves as documented, with either core.

The logic core (Amaranth) and the macro's Python behavioural model run the same random
stimulus, cycle by cycle; every sampled ``sums`` must equal the column sums computed with numpy
from the programmed (offset-encoded, sliced) cells and the held plane. The Verilog macro model
is checked against the logic core in ``test_tile_cocotb``.
"""

import numpy as np
import pytest

from moepim.hw import CrossbarArray
from moepim.models.tile import encode_cells, line_sums
from moepim.sim.amaranth_macro import add_macro_model
from moepim.sim.block_run import amaranth_simulator
from moepim.spec.tile import TileSpec
from moepim.testbenches.bits import pack_array, unpack_array

SHAPE = dict(n_rows=6, n_columns=8, bits_per_cell=2, weight_bits=4, input_bits=3, n_adcs=2,
             adc_bits=5)


@pytest.mark.parametrize("encoding", ["offset", "differential", "reference_column"])
@pytest.mark.parametrize("core", ["logic", "macro"])
def test_analog_port_semantics(core, encoding):
    kw = dict(SHAPE, weight_encoding=encoding)
    xb = CrossbarArray(core=core, tile=TileSpec(**kw))
    shape = TileSpec(**kw)
    rng = np.random.default_rng(5)
    weights = rng.integers(-8, 8, size=(shape.n_rows, shape.n_outputs))
    cells = encode_cells(weights, shape)
    cpa = shape.columns_per_adc
    sim = amaranth_simulator(xb)
    if core == "macro":            # the macro's Python model under Amaranth's simulator
        add_macro_model(sim, xb)
    seen = []

    async def bench(ctx):
        for r in range(shape.n_rows):
            ctx.set(xb.i_weights.valid, 1)
            ctx.set(xb.i_weights.payload.row, r)
            ctx.set(xb.i_weights.payload.w.as_value(), pack_array(weights[r], 4))
            assert ctx.get(xb.i_weights.ready)
            await ctx.tick()
        ctx.set(xb.i_weights.valid, 0)
        held = np.zeros(shape.n_rows, dtype=np.int64)
        expect = None
        for _ in range(60):
            drive, convert = rng.integers(0, 2, size=2)
            wl = rng.integers(0, 2, size=shape.n_rows)
            col = int(rng.integers(0, cpa))
            ctx.set(xb.analog.drive, int(drive))
            ctx.set(xb.analog.wl, pack_array(wl, 1))
            ctx.set(xb.analog.convert, int(convert))
            ctx.set(xb.analog.col, col)
            await ctx.tick()
            got = unpack_array(ctx.get(xb.analog.sums.as_value()), shape.sum_bits,
                               shape.n_adcs, shape.signed_sums)
            if convert:   # sampled with the plane held before this edge
                # the lines (columns, pairs' differences, columns minus the reference)
                lines = line_sums(held @ cells, held, shape)
                expect = lines[np.arange(shape.n_adcs) * cpa + col]
            if expect is not None:
                np.testing.assert_array_equal(got, expect)
                seen.append(1)
            if drive:
                held = wl
        assert ctx.get(xb.counters.row_writes) == shape.n_rows

    sim.add_testbench(bench)
    sim.run()
    assert len(seen) > 40


def test_weight_port_closes_while_selected():
    xb = CrossbarArray(core="logic", tile=TileSpec(**SHAPE))
    sim = amaranth_simulator(xb)

    async def bench(ctx):
        ctx.set(xb.analog.select, 1)
        ctx.set(xb.i_weights.valid, 1)
        assert not ctx.get(xb.i_weights.ready)
        await ctx.tick()
        assert ctx.get(xb.counters.row_writes) == 0
        ctx.set(xb.analog.select, 0)
        assert ctx.get(xb.i_weights.ready)
        await ctx.tick()
        assert ctx.get(xb.counters.row_writes) == 1

    sim.add_testbench(bench)
    sim.run()
