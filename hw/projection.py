"""``ProjectionUnit``: one dense ``n_in x n_out`` matrix of the decoder layer on crossbars.

The decoder's Q/K/V/O projections, the embedding and the LM head are dense matrices: each is
ONE :class:`~moepim.hw.matrix_bank.MatrixBank` with a single slot (``n_slots = 1``:
``ceil(n_in / n_rows) x ceil(n_out / n_outputs)`` crossbars, one peripheral set each), fed by a
stream of token rows and followed by the digital reduction, ``lanes`` elements per cycle:

* partial-sum adders: the row tiles' partial outputs of one column summed (an adder tree, as
  :class:`~moepim.hw.expert_engine.ExpertEngine`);
* ``requant=True``: requantisation ``(v * mult + 2**(shift-1)) >> shift`` (``shift`` 0: no
  rounding) clamped to ``+-(2**(act_bits-1) - 1)``
  (:func:`~moepim.hw.expert_engine.requantize`, exactly ``Requant(mult, shift).apply`` then
  the symmetric clamp of ``moepim.models.quant``), with the run-time ``mult``/``shift``
  inputs (held while rows are in flight); ``requant=False`` (the LM head's logits): the raw
  accumulator, ``acc_bits = output_bits + ceil(log2(row_tiles))`` signed bits.

Streams (``lanes`` values per beat, element ``b * lanes + i`` in lane ``i`` of beat ``b``):

* ``i_rows``: ``IB = ceil(n_in / lanes)`` beats per token row (the unit counts them; the
  input's ``last`` is not used). Lanes of the final beat beyond ``n_in`` are ignored (the bank
  drops inputs past ``n_in``).
* ``o_rows``: ``OB = ceil(n_out / lanes)`` beats per row, ``last`` on its final beat; lanes
  of the final beat beyond ``n_out`` are 0.

The beats are written straight into the bank's held input vector; once a whole row is held,
one MVM (``start``), ``L = mvm_latency`` cycles, then the ``OB`` output blocks are read
(``rd_addr`` -> ``rd_data`` the next cycle), reduced and registered on ``o_rows``. The bank's
input vector is sampled at the ``start`` edge, so the next row's beats are taken from the
``start`` cycle on (input overlaps the MVM and the read-out); its output buffer is replaced at
``start``, so the next row's MVM starts at the earliest in the cycle the previous row's last
output block enters the output register.

Sequence of one row (cycle 0 = its first input handshake, no input gaps, nothing ahead)::

    0 .. IB-1         input beats into the bank's input vector
    IB                start the MVM (the next row's first beat may be taken here)
    IB+L              bank done: read block 0
    IB+L+1+k          block k reduced into the output register (k = 0 .. OB-1)
    IB+L+2            first ``o_rows.valid``

so ``latency = IB + L + 2`` (``moepim.spec.timing.projection_latency``). Throughput: one MVM
start every ``P = max(IB, L + OB)`` cycles (``projection_interval``) with input offered every
cycle and no back-pressure; ``n`` rows take ``IB + L + OB + 2 + (n - 1) * P`` cycles from the
first input handshake to the cycle after the last output handshake (``projection_cycles``).

Back-pressure: the read-out advances only when the output register is empty or taken
(``o_rows.ready``); while it is stalled ``rd_addr`` re-reads the pending block, so nothing is
lost or repeated, and the next MVM waits for the read-out (the input vector still fills, then
``i_rows.ready`` drops). Input gaps only delay the MVM.

Counters: ``dac_drives`` (the bank's word-line pulses) and ``rows`` (rows whose last output
beat was handed over). ``bank_id`` (an input, constant during a run) names the bank's cell
image (``+MOEPIM_BANK<bank_id>=<file>``).
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from moepim.spec import timing
from moepim.spec.checks import ceil_div, need, need_positive
from moepim.spec.tile import TileSpec

from .expert_engine import SHIFT_BITS, requantize
from .matrix_bank import BANK_ID_BITS, MatrixBank
from .params import check_counter_bits, check_multiplier_bits, check_tile, tree_sum

__all__ = ["ProjectionUnit", "projection_row_layout"]


def projection_row_layout(*, bits: int, lanes: int):
    """One beat of a row: ``lanes`` signed ``bits``-bit values, ``last`` on the final beat."""
    return data.StructLayout({"codes": data.ArrayLayout(signed(bits), lanes), "last": 1})


class ProjectionUnit(wiring.Component):
    def __init__(self, *, tile: TileSpec, n_in: int, n_out: int, lanes: int,
                 multiplier_bits: int = 15, act_bits: int = 8, requant: bool = True,
                 counter_bits: int = 48):
        check_tile(tile)
        for name, value in (("n_in", n_in), ("n_out", n_out), ("lanes", lanes)):
            need_positive(name, value)
        check_multiplier_bits(multiplier_bits)
        need(isinstance(act_bits, int) and not isinstance(act_bits, bool)
             and 2 <= act_bits <= 16, "act_bits", act_bits, "an integer from 2 to 16")
        need(isinstance(requant, bool), "requant", requant,
             "True (requantised codes) or False (raw accumulators)")
        check_counter_bits(counter_bits)
        self._bank = MatrixBank(tile=tile, n_in=n_in, n_out=n_out, n_slots=1, lanes=lanes,
                                counter_bits=counter_bits)
        # elaborated with the unit; a unit built for its properties alone never elaborates it
        self._bank._MustUse__silence = True
        self._tile, self._n_in, self._n_out, self._lanes = tile, n_in, n_out, lanes
        self._multiplier_bits, self._act_bits, self._requant = multiplier_bits, act_bits, requant
        self._counter_bits = counter_bits
        rq = {}
        if requant:
            rq = {"mult": In(unsigned(multiplier_bits)), "shift": In(unsigned(SHIFT_BITS))}
        c = unsigned(counter_bits)
        super().__init__({
            "bank_id": In(BANK_ID_BITS),
            **rq,
            "i_rows": In(stream.Signature(projection_row_layout(bits=tile.input_bits,
                                                                lanes=lanes))),
            "o_rows": Out(stream.Signature(projection_row_layout(bits=self.out_bits,
                                                                 lanes=lanes))),
            "dac_drives": Out(c),
            "rows": Out(c),
        })

    tile = property(lambda self: self._tile)
    n_in = property(lambda self: self._n_in)
    n_out = property(lambda self: self._n_out)
    lanes = property(lambda self: self._lanes)
    multiplier_bits = property(lambda self: self._multiplier_bits)
    act_bits = property(lambda self: self._act_bits)
    requant = property(lambda self: self._requant)
    counter_bits = property(lambda self: self._counter_bits)
    bank = property(lambda self: self._bank)
    in_blocks = property(lambda self: ceil_div(self._n_in, self._lanes))
    out_blocks = property(lambda self: ceil_div(self._n_out, self._lanes))
    mvm_latency = property(lambda self: self._tile.mvm_latency)

    @staticmethod
    def raw_bits(tile: TileSpec, n_in: int) -> int:
        """Width of a column's sum over the row tiles of an ``n_in``-row matrix (the raw
        output), without building the unit."""
        return tile.output_bits + (ceil_div(n_in, tile.n_rows) - 1).bit_length()

    @property
    def acc_bits(self) -> int:
        """Width of a column's sum over the row tiles (the raw output)."""
        return self.raw_bits(self._tile, self._n_in)

    @property
    def out_bits(self) -> int:
        """Width of an output value: ``act_bits`` (requantised) or ``acc_bits`` (raw)."""
        return self._act_bits if self._requant else self.acc_bits

    @property
    def latency(self) -> int:
        """Cycles from a row's first input handshake to its first ``o_rows.valid``."""
        return timing.projection_latency(self.mvm_latency, self.in_blocks)

    @property
    def interval(self) -> int:
        """Cycles between MVM starts, input every cycle and no back-pressure."""
        return timing.projection_interval(self.mvm_latency, self.in_blocks, self.out_blocks)

    def elaborate(self, platform):
        m = Module()
        bank = self._bank
        m.submodules.bank = bank
        lanes, ib, ob = self._lanes, self.in_blocks, self.out_blocks
        inp, out = self.i_rows, self.o_rows
        start = Signal()
        last_take = Signal()     # the held row's last output block enters the output register

        # the bank: its cell image, its counter
        m.d.comb += [bank.bank_id.eq(self.bank_id), self.dac_drives.eq(bank.dac_drives)]

        # input: beats into the bank's input vector; a whole row held until its MVM starts
        beat = Signal(range(ib))
        full = Signal()
        take_in = Signal()
        m.d.comb += [inp.ready.eq(~full | start), take_in.eq(inp.valid & inp.ready),
                     bank.in_we.eq(take_in), bank.in_addr.eq(beat),
                     bank.in_data.eq(inp.payload.codes)]
        with m.If(start):
            m.d.sync += full.eq(0)
        with m.If(take_in):
            with m.If(beat == ib - 1):
                m.d.sync += [beat.eq(0), full.eq(1)]
            with m.Else():
                m.d.sync += beat.eq(beat + 1)

        # MVM: start once a row is held and the previous result is read out (or being taken)
        held = Signal()          # the bank's output buffer holds a row not yet read out
        m.d.comb += [start.eq(full & (~held | last_take)), bank.start.eq(start),
                     bank.slot.eq(0)]
        with m.If(last_take):
            m.d.sync += held.eq(0)
        with m.If(start):
            m.d.sync += held.eq(1)

        # reduction: partial sums over the row tiles, then requantisation or the raw sums
        values = []
        for i in range(lanes):
            psum = tree_sum(bank.rd_data[i][k] for k in range(bank.row_tiles))
            v = Signal(signed(self.out_bits), name=f"value{i}")
            if self._requant:
                m.d.comb += v.eq(requantize(psum, self.mult, self.shift, self._act_bits))
            else:
                m.d.comb += v.eq(psum)
            values.append(v)

        # read-out: block rd-1 in rd_data while reading; rd_addr re-reads it while stalled
        reading = Signal()
        rd = Signal(range(ob + 1))
        out_valid, out_last = Signal(), Signal()
        out_codes = Signal(data.ArrayLayout(signed(self.out_bits), lanes))
        advance = Signal()
        m.d.comb += [advance.eq(~out_valid | out.ready),
                     last_take.eq(reading & advance & (rd == ob)),
                     out.valid.eq(out_valid), out.payload.codes.eq(out_codes),
                     out.payload.last.eq(out_last)]
        with m.If(bank.done):
            m.d.comb += bank.rd_addr.eq(0)
        with m.Elif(reading):
            m.d.comb += bank.rd_addr.eq(Mux(advance & (rd < ob), rd, rd - 1))
        with m.If(advance):
            m.d.sync += [out_valid.eq(reading), out_last.eq(rd == ob)]
            m.d.sync += [out_codes[i].eq(values[i]) for i in range(lanes)]
            with m.If(reading):
                with m.If(rd == ob):
                    m.d.sync += reading.eq(0)
                with m.Else():
                    m.d.sync += rd.eq(rd + 1)
        with m.If(bank.done):
            m.d.sync += [reading.eq(1), rd.eq(1)]

        # counter: rows whose last output beat was handed over
        with m.If(out.valid & out.ready & out.payload.last):
            m.d.sync += self.rows.eq(self.rows + 1)
        return m
