"""``MatrixBank``: one weight matrix of every expert of a group, tiled over crossbars.

A ``n_in x n_out`` matrix needs ``row_tiles = ceil(n_in / n_rows)`` by
``col_tiles = ceil(n_out / n_outputs)`` crossbars per expert. Tile position ``(rt, ct)`` holds
one crossbar per expert slot of the group (``n_slots`` = group size) and ONE peripheral set
shared by them (crossbar-level multiplexing): a job evaluates one slot at a time, and all tile
positions work in parallel, each exactly as a :class:`~moepim.hw.PeripheralSet` MVM
(``mvm_latency`` cycles, the arithmetic of ``moepim.models.tile``).

The crossbars and their peripheral sets are one analog/mixed-signal macro, a black-box
``Instance`` of ``moepim_matrix_bank`` (behavioural model ``hw/verilog/moepim_matrix_bank.v``):
replicating hundreds of peripheral sets as RTL would make a full-size layer unbuildable, and
the digital reduction that follows (partial-sum adders) is RTL in the expert engine. Cells are
loaded at the first clock edge from a binary image (``+MOEPIM_BANK<bank_id>=<file>``), never
elaborated into logic, so one build serves every workload (with ``adc_range="calibrated"``
the image also carries each slot's ADC window, a shift per weight slice:
``moepim.models.pim.bank_file_words``); ``bank_id`` is an input the parent
ties to a constant, so identical banks (and engines) are one Verilog module.

Under Amaranth's simulator (``moepim.hw.params.AmaranthSimulation``, the platform), which
cannot run the Verilog model, the macro is left out: the bank's outputs are then driven by a
simulator process (``moepim.sim.amaranth_macro.add_bank_model``).

Ports (all registered at the macro):

* ``bank_id``: which cell image this bank loads (constant during a run).
* ``in_we``/``in_addr``/``in_data``: write ``lanes`` inputs of the held input vector.
* ``start``/``slot``: one MVM of expert slot ``slot``; ``done`` is high ``mvm_latency``
  cycles later; ``busy`` in between. ``start`` while busy is ignored.
* ``rd_addr`` -> ``rd_data`` (next cycle): ``lanes`` outputs, each as ``row_tiles`` partial
  sums (one per row tile) of ``output_bits`` signed bits.
* ``dac_drives``: word-line pulses so far (one per '1' input bit per tile position).
"""

from __future__ import annotations

from amaranth import ClockSignal, Instance, Module, ResetSignal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from moepim.spec.checks import ceil_div, index_bits, need, need_positive
from moepim.spec.tile import ADC_RANGES, WEIGHT_ENCODINGS, TileSpec

from .params import check_counter_bits, check_tile, simulating

__all__ = ["MatrixBank", "MATRIX_MACRO_NAME", "BANK_ID_BITS", "ceil_div"]

MATRIX_MACRO_NAME = "moepim_matrix_bank"
BANK_ID_BITS = 16       # width of the macro's bank_id input


class MatrixBank(wiring.Component):
    def __init__(self, *, tile: TileSpec, n_in: int, n_out: int, n_slots: int, lanes: int,
                 counter_bits=48):
        check_tile(tile)
        for name, value in (("n_in", n_in), ("n_out", n_out), ("n_slots", n_slots),
                            ("lanes", lanes)):
            need_positive(name, value)
        need(tile.bits_per_cell <= 8, "bits_per_cell", tile.bits_per_cell,
             "at most 8 (a cell image holds one byte per cell)")
        check_counter_bits(counter_bits)
        g = tile
        self._geometry = g
        self._n_in, self._n_out, self._n_slots, self._lanes = n_in, n_out, n_slots, lanes
        self._counter_bits = counter_bits
        self._row_tiles = ceil_div(n_in, g.n_rows)
        self._col_tiles = ceil_div(n_out, g.n_outputs)
        super().__init__({
            "bank_id": In(BANK_ID_BITS),
            "in_we": In(1),
            "in_addr": In(index_bits(self.in_blocks)),
            "in_data": In(data.ArrayLayout(signed(g.input_bits), lanes)),
            "start": In(1),
            "slot": In(index_bits(n_slots)),
            "busy": Out(1),
            "done": Out(1),
            "rd_addr": In(index_bits(self.out_blocks)),
            "rd_data": Out(data.ArrayLayout(
                data.ArrayLayout(signed(g.output_bits), self._row_tiles), lanes)),
            "dac_drives": Out(unsigned(counter_bits)),
        })

    geometry = property(lambda self: self._geometry)
    n_in = property(lambda self: self._n_in)
    n_out = property(lambda self: self._n_out)
    n_slots = property(lambda self: self._n_slots)
    lanes = property(lambda self: self._lanes)
    row_tiles = property(lambda self: self._row_tiles)
    col_tiles = property(lambda self: self._col_tiles)
    in_blocks = property(lambda self: ceil_div(self._n_in, self._lanes))
    out_blocks = property(lambda self: ceil_div(self._n_out, self._lanes))
    mvm_latency = property(lambda self: self._geometry.mvm_latency)

    @property
    def n_crossbars(self) -> int:
        return self._n_slots * self._row_tiles * self._col_tiles

    @property
    def n_peripheral_sets(self) -> int:
        return self._row_tiles * self._col_tiles

    @property
    def n_cells(self) -> int:
        return self.n_crossbars * self._geometry.n_rows * self._geometry.n_columns

    def elaborate(self, platform):
        m = Module()
        g = self._geometry
        if simulating(platform):
            return m                        # outputs driven by the simulator's bank model
        m.submodules.macro = Instance(
            MATRIX_MACRO_NAME,
            p_N_ROWS=g.n_rows, p_N_COLUMNS=g.n_columns, p_BITS_PER_CELL=g.bits_per_cell,
            # encoding and range as their indices in WEIGHT_ENCODINGS / ADC_RANGES
            **({} if g.weight_encoding == "offset" else
               {"p_WEIGHT_ENCODING": WEIGHT_ENCODINGS.index(g.weight_encoding)}),
            **({"p_ADC_RANGE": ADC_RANGES.index(g.adc_range)} if g.calibrated else {}),
            p_WEIGHT_BITS=g.weight_bits, p_INPUT_BITS=g.input_bits, p_ADC_BITS=g.adc_bits,
            p_ADC_SHIFT=g.resolved_adc_shift, p_ROW_TILES=self._row_tiles,
            p_COL_TILES=self._col_tiles, p_N_SLOTS=self._n_slots, p_N_IN=self._n_in,
            p_N_OUT=self._n_out, p_LANES=self._lanes, p_OUT_BITS=g.output_bits,
            p_LATENCY=g.mvm_latency,
            p_SLOT_BITS=index_bits(self._n_slots), p_IN_ADDR_BITS=index_bits(self.in_blocks),
            p_OUT_ADDR_BITS=index_bits(self.out_blocks), p_COUNTER_BITS=self._counter_bits,
            i_clk=ClockSignal(), i_rst=ResetSignal(), i_bank_id=self.bank_id,
            i_in_we=self.in_we, i_in_addr=self.in_addr, i_in_data=self.in_data.as_value(),
            i_start=self.start, i_slot=self.slot, o_busy=self.busy, o_done=self.done,
            i_rd_addr=self.rd_addr, o_rd_data=self.rd_data.as_value(),
            o_dac_drives=self.dac_drives)
        return m
