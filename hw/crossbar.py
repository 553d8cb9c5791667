"""``CrossbarArray``: one resistive crossbar with its weight-programming port and analog core.

The array is a macro in a real chip; here it has two interchangeable cores behind one port
(:class:`CrossbarPort`), cycle- and bit-identical:

``core="logic"``
    Pure Amaranth: cells in registers, the column sums of the selected columns built from
    adders. Synthesizable reference; practical at small sizes only.
``core="macro"``
    A black-box ``Instance`` of ``moepim_xbar_macro``. Exported netlists keep it a black box;
    Verilator and Icarus simulate it with the behavioural model ``hw/verilog/moepim_xbar_macro.v``.
    Under Amaranth's simulator (``moepim.hw.params.AmaranthSimulation``, the platform) the
    macro is left out: its core signals are driven by a simulator process (the Python
    behavioural model in ``moepim.sim.amaranth_macro``), so Amaranth's simulator can run
    full-size arrays.

Core behaviour, per rising edge (the logic, the Verilog model and the Python model implement
exactly this):

* ``we``: row ``wrow`` of cells takes ``wdata`` (weight slices, encoded per
  ``weight_encoding``, see ``moepim.models.tile``).
* ``convert``: ``sums[a] <= line(a*columns_per_adc + col)`` for each ADC ``a``, using the
  plane held *before* this edge (sample-and-hold and column mux), where ``line(l)`` is
  ``sum_r plane[r] * cell[r][l]`` (``offset``), that minus the reference column's
  ``reference_cell * popcount(plane)`` (``reference_column``), or
  ``sum_r plane[r] * (cell[r][2l] - cell[r][2l+1])`` (``differential``): the subtraction is
  analog, before the ADC; the signed encodings give signed ``sums``.
* ``drive``: the held plane takes ``wl`` (the DACs drive one input bit plane).

So a conversion result is visible one cycle after ``convert``, and a new plane may be driven
in the same cycle as the last conversion of the previous plane.
"""

from __future__ import annotations

from amaranth import (
    Cat,
    ClockSignal,
    Elaboratable,
    Instance,
    Module,
    Mux,
    ResetSignal,
    Signal,
    signed,
    unsigned,
)
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from moepim.spec.checks import index_bits
from moepim.spec.tile import WEIGHT_ENCODINGS, TileSpec

from .params import CORES, check_core, check_counter_bits, check_tile, simulating, tree_sum

__all__ = ["CrossbarArray", "CrossbarPort", "weight_row_layout", "CORES"]

MACRO_NAME = "moepim_xbar_macro"


class CrossbarPort(wiring.Signature):
    """The analog-side port of a crossbar, seen from the peripherals that drive it.

    ``select``: this crossbar holds the shared peripherals (its weight port is then closed);
    ``drive``/``wl``: apply a word-line bit plane; ``convert``/``col``: sample the selected
    column of every ADC's column group; ``sums``: the sampled column sums, one per ADC.
    """

    def __init__(self, geometry: TileSpec):
        self.geometry = geometry
        super().__init__({
            "select": Out(1),
            "drive": Out(1),
            "wl": Out(geometry.n_rows),
            "convert": Out(1),
            "col": Out(index_bits(geometry.columns_per_adc)),
            "sums": In(data.ArrayLayout((signed if geometry.signed_sums else unsigned)(
                geometry.sum_bits), geometry.n_adcs)),
        })


def weight_row_layout(geometry: TileSpec, *, n_crossbars: int | None = None):
    """Payload of a weight write: one row of signed weights (and the target crossbar)."""
    fields = {
        "row": unsigned(index_bits(geometry.n_rows)),
        "w": data.ArrayLayout(signed(geometry.weight_bits), geometry.n_outputs),
    }
    if n_crossbars is not None:
        fields = {"xbar": unsigned(index_bits(n_crossbars)), **fields}
    return data.StructLayout(fields)


def crossbar_counters_layout(counter_bits: int):
    return data.StructLayout({
        "activations": unsigned(counter_bits),   # bit planes evaluated (drives)
        "row_writes": unsigned(counter_bits),    # weight rows programmed
    })


class CrossbarArray(wiring.Component):
    """``n_rows`` x ``n_columns`` cells of ``bits_per_cell`` bits holding signed weights.

    Ports
    -----
    i_weights : stream of ``weight_row_layout``
        One row of ``n_outputs`` signed ``weight_bits`` weights per transfer, 1 transfer per
        cycle. Each weight is stored per ``weight_encoding`` (``offset``/``reference_column``:
        sign bit flipped; ``differential``: positive and negative parts in a column pair) and
        sliced over ``weight_bits // bits_per_cell`` adjacent lines, least significant slice
        first.
        ``ready`` is low while the crossbar holds the shared peripherals.
    analog : flipped :class:`CrossbarPort`
        Driven by a :class:`~moepim.hw.peripherals.PeripheralSet`.
    counters : ``activations``, ``row_writes``.
    """

    def __init__(self, *, tile: TileSpec, core="logic", counter_bits=48):
        check_tile(tile)
        check_core(core)
        check_counter_bits(counter_bits)
        self._geometry = tile
        self._core = core
        self._counter_bits = counter_bits
        g = self._geometry
        # core-side signals: the behavioural models (Verilog or Python) see exactly these
        self.core_we = Signal(name="core_we")
        self.core_wrow = Signal(index_bits(g.n_rows), name="core_wrow")
        self.core_wdata = Signal(g.n_columns * g.bits_per_cell, name="core_wdata")
        self.core_sums = Signal(g.n_adcs * g.sum_bits, name="core_sums")
        super().__init__({
            "i_weights": In(stream.Signature(weight_row_layout(g))),
            "analog": In(CrossbarPort(g)),
            "counters": Out(crossbar_counters_layout(counter_bits)),
        })

    geometry = property(lambda self: self._geometry)
    core = property(lambda self: self._core)
    counter_bits = property(lambda self: self._counter_bits)
    n_rows = property(lambda self: self._geometry.n_rows)
    n_columns = property(lambda self: self._geometry.n_columns)
    bits_per_cell = property(lambda self: self._geometry.bits_per_cell)
    weight_bits = property(lambda self: self._geometry.weight_bits)

    def elaborate(self, platform):
        m = Module()
        g = self._geometry

        # weight port: encode (offset: flip the sign bit; differential: positive and negative
        # parts) and slice into cells
        m.d.comb += self.i_weights.ready.eq(~self.analog.select)
        m.d.comb += [
            self.core_we.eq(self.i_weights.valid & self.i_weights.ready),
            self.core_wrow.eq(self.i_weights.payload.row),
        ]
        cells = []
        bpc = g.bits_per_cell
        for o in range(g.n_outputs):
            w = self.i_weights.payload.w[o]
            if g.weight_encoding == "differential":
                pos, neg = Signal(g.weight_bits, name=f"pos{o}"), Signal(g.weight_bits,
                                                                       name=f"neg{o}")
                m.d.comb += [pos.eq(Mux(w[-1], 0, w)), neg.eq(Mux(w[-1], -w, 0))]
                for j in range(g.slices_per_weight):
                    cells += [pos[j * bpc:(j + 1) * bpc], neg[j * bpc:(j + 1) * bpc]]
            else:
                u = Cat(w[:-1], ~w[-1])
                cells.extend(u[j * bpc:(j + 1) * bpc] for j in range(g.slices_per_weight))
        m.d.comb += self.core_wdata.eq(Cat(*cells))

        # analog core
        m.d.comb += self.analog.sums.as_value().eq(self.core_sums)
        if self._core == "logic":
            m.submodules.core = _LogicCore(self)
        elif not simulating(platform):
            m.submodules.core = Instance(
                MACRO_NAME,
                p_N_ROWS=g.n_rows, p_N_COLUMNS=g.n_columns, p_BITS_PER_CELL=g.bits_per_cell,
                p_N_ADCS=g.n_adcs, p_SUM_BITS=g.sum_bits,
                # the encoding as its index in WEIGHT_ENCODINGS (Verilog compares integers)
                **({} if g.weight_encoding == "offset" else
                   {"p_WEIGHT_ENCODING": WEIGHT_ENCODINGS.index(g.weight_encoding)}),
                p_ROW_BITS=index_bits(g.n_rows), p_COL_BITS=index_bits(g.columns_per_adc),
                i_clk=ClockSignal(), i_rst=ResetSignal(),
                i_we=self.core_we, i_wrow=self.core_wrow, i_wdata=self.core_wdata,
                i_drive=self.analog.drive, i_wl=self.analog.wl,
                i_convert=self.analog.convert, i_col=self.analog.col,
                o_sums=self.core_sums)
        # a macro under Amaranth's simulator: core_sums is driven by a simulator process

        # event counters
        with m.If(self.analog.drive):
            m.d.sync += self.counters.activations.eq(self.counters.activations + 1)
        with m.If(self.core_we):
            m.d.sync += self.counters.row_writes.eq(self.counters.row_writes + 1)
        return m


class _LogicCore(Elaboratable):
    """Cells in flip-flops; the column sums of the selected columns from adder chains."""

    def __init__(self, xbar: CrossbarArray):
        self.xbar = xbar

    def elaborate(self, platform):
        m = Module()
        xb, g = self.xbar, self.xbar.geometry
        row_layout = data.ArrayLayout(unsigned(g.bits_per_cell), g.n_columns)
        rows = [Signal(row_layout, name=f"cells_row{r}") for r in range(g.n_rows)]
        plane = Signal(g.n_rows)

        with m.If(xb.core_we):
            with m.Switch(xb.core_wrow):
                for r in range(g.n_rows):
                    with m.Case(r):
                        m.d.sync += rows[r].as_value().eq(xb.core_wdata)

        cpa = g.columns_per_adc
        cpl = g.columns_per_line
        sums = []
        ref = None
        if g.weight_encoding == "reference_column":
            # the reference column: mid-scale cells on every row
            ref = Signal(range(g.n_rows * g.reference_cell + 1), name="refsum")
            m.d.comb += ref.eq(tree_sum(plane[r] for r in range(g.n_rows)) * g.reference_cell)

        def column_sum(col, name):
            terms = [rows[r][col] & plane[r].replicate(g.bits_per_cell)
                     for r in range(g.n_rows)]
            total = Signal(g.column_sum_bits, name=name)
            m.d.comb += total.eq(tree_sum(terms))
            return total

        for a in range(g.n_adcs):
            line = a * cpa + xb.analog.col if cpa > 1 else a
            if g.weight_encoding == "differential":
                pos = column_sum(line * cpl if cpa > 1 else a * cpl, f"possum{a}")
                neg = column_sum(line * cpl + 1 if cpa > 1 else a * cpl + 1, f"negsum{a}")
                total = Signal(signed(g.sum_bits), name=f"linesum{a}")
                m.d.comb += total.eq(pos - neg)
            elif ref is not None:
                col = column_sum(line, f"colsum{a}")
                total = Signal(signed(g.sum_bits), name=f"linesum{a}")
                m.d.comb += total.eq(col - ref)
            else:
                total = column_sum(line, f"colsum{a}")
            sums.append(total)
        sums_q = Signal(g.n_adcs * g.sum_bits)
        with m.If(xb.analog.convert):
            m.d.sync += sums_q.eq(Cat(*sums))
        m.d.comb += xb.core_sums.eq(sums_q)

        with m.If(xb.analog.drive):
            m.d.sync += plane.eq(xb.analog.wl)
        return m
