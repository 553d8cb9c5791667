"""``ExpertEngine``: one group's expert datapath (2-matrix ReLU FFN), one job at a time.

A group's experts share their peripheral sets, so the group evaluates one (token, expert) job
per timestamp. The engine holds the group's two :class:`~moepim.hw.matrix_bank.MatrixBank`
s (``up``: ``d_model -> d_ff``, ``down``: ``d_ff -> d_model``) and the digital units between
and after them, ``lanes`` elements per cycle:

* partial-sum adders: the row tiles' partial outputs of one column are summed;
* requantisation ``(v * mult + round) >> shift`` with the job's multiplier and shift, clamped
  to ``+-(2**(act_bits-1) - 1)``; ReLU after ``up``;
* gate weighting: the ``down`` output times the job's gate weight (``gate_bits`` unsigned),
  the term the layer's combine unit accumulates.

Sequence of one job (cycle 0 = ``start``; ``L`` = ``mvm_latency``, ``B1`` = ``up``'s output
blocks)::

    0                 latch the job, start the up bank (its input was loaded by the layer)
    L                 up bank done: read block 0
    L+1 .. L+B1       block i: partial sums, requant, ReLU -> down bank input block i
    L+B1+1            start the down bank
    2L+B1+1           down bank done
    2L+B1+2           ``ready`` again: results readable on ``rd_addr``/``rd_data``

so ``job_latency = 2*L + B1 + 2``. ``bank_base`` (an input, constant during a run) names the
cell images: ``bank_base`` for ``up``, ``bank_base + 1`` for ``down``. While ``ready``, ``rd_data`` (one cycle after ``rd_addr``)
is the gate-weighted output block ``rd_addr`` of the last job.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .matrix_bank import BANK_ID_BITS, MatrixBank
from .params import check_counter_bits, index_bits, need, need_positive, signed_bits, tree_sum

__all__ = ["ExpertEngine", "engine_job_layout", "requantize", "SHIFT_BITS"]

SHIFT_BITS = 5          # requantisation shifts 0..31 (moepim.models.quant.Requant)


def engine_job_layout(*, group_size: int, gate_bits: int, multiplier_bits: int):
    """Operands of one job: the expert's slot in the group, its gate weight and the expert's
    two requantisation multipliers and shifts."""
    return data.StructLayout({
        "slot": unsigned(index_bits(group_size)),
        "gate": unsigned(gate_bits),
        "up_mult": unsigned(multiplier_bits), "up_shift": unsigned(SHIFT_BITS),
        "down_mult": unsigned(multiplier_bits), "down_shift": unsigned(SHIFT_BITS),
    })


def requantize(value, mult, shift, act_bits):
    """``clamp((value * mult + 2**(shift-1)) >> shift)`` (``shift`` 0: no rounding), exactly
    ``Requant.apply`` followed by the symmetric clamp of ``moepim.models.quant``. Rounding
    uses ``floor((x + 2**(s-1)) / 2**s) == (floor(x / 2**(s-1)) + 1) >> 1``, so no shifter
    is wider than the product."""
    lim = (1 << (act_bits - 1)) - 1
    prod = value * mult
    rounded = Mux(shift == 0, prod, ((prod >> (shift - 1)[:len(shift)]) + 1) >> 1)
    return Mux(rounded > lim, lim, Mux(rounded < -lim, -lim, rounded))


class ExpertEngine(wiring.Component):
    def __init__(self, *, d_model: int, d_ff: int, group_size: int, lanes: int,
                 gate_bits: int = 8, multiplier_bits: int = 15,
                 n_rows=256, n_columns=256, bits_per_cell=8, weight_bits=8, input_bits=8,
                 n_adcs=32, adc_bits=16, adc_shift=None, counter_bits=48):
        for name, value in (("d_model", d_model), ("d_ff", d_ff), ("lanes", lanes),
                            ("gate_bits", gate_bits), ("multiplier_bits", multiplier_bits)):
            need_positive(name, value)
        need(multiplier_bits <= 31, "multiplier_bits", multiplier_bits, "at most 31")
        check_counter_bits(counter_bits)
        tile = dict(n_rows=n_rows, n_columns=n_columns, bits_per_cell=bits_per_cell,
                    weight_bits=weight_bits, input_bits=input_bits, n_adcs=n_adcs,
                    adc_bits=adc_bits, adc_shift=adc_shift, counter_bits=counter_bits)
        self._up = MatrixBank(n_in=d_model, n_out=d_ff, n_slots=group_size, lanes=lanes,
                              **tile)
        self._down = MatrixBank(n_in=d_ff, n_out=d_model, n_slots=group_size, lanes=lanes,
                                **tile)
        # elaborated with the engine; a layer built for its parameters (cached build, one
        # exported block) never elaborates the others: not a forgotten submodule
        for bank in (self._up, self._down):
            bank._MustUse__silence = True
        self._d_model, self._d_ff, self._lanes = d_model, d_ff, lanes
        self._gate_bits, self._act_bits = gate_bits, input_bits
        self._multiplier_bits = multiplier_bits
        lim = (1 << (input_bits - 1)) - 1
        self._out_bits = signed_bits(-lim * ((1 << gate_bits) - 1), lim * ((1 << gate_bits) - 1))
        c = unsigned(counter_bits)
        super().__init__({
            "bank_base": In(BANK_ID_BITS),
            "in_we": In(1),
            "in_addr": In(index_bits(self._up.in_blocks)),
            "in_data": In(data.ArrayLayout(signed(input_bits), lanes)),
            "start": In(1),
            "job": In(engine_job_layout(group_size=group_size, gate_bits=gate_bits,
                                        multiplier_bits=multiplier_bits)),
            "ready": Out(1),
            "rd_addr": In(index_bits(self._down.out_blocks)),
            "rd_data": Out(data.ArrayLayout(signed(self._out_bits), lanes)),
            "counters": Out(data.StructLayout({
                "jobs": c, "busy_cycles": c, "up_dac_drives": c, "down_dac_drives": c})),
        })

    up = property(lambda self: self._up)
    down = property(lambda self: self._down)
    lanes = property(lambda self: self._lanes)
    out_bits = property(lambda self: self._out_bits)

    @property
    def job_latency(self) -> int:
        return 2 * self._up.mvm_latency + self._up.out_blocks + 2

    def elaborate(self, platform):
        m = Module()
        up, down = self._up, self._down
        m.submodules.up = up
        m.submodules.down = down
        lanes, ab = self._lanes, self._act_bits
        job = Signal.like(self.job)
        cnt = self.counters

        # cell images: bank_base (up) and bank_base + 1 (down)
        m.d.comb += [up.bank_id.eq(self.bank_base), down.bank_id.eq(self.bank_base + 1)]
        # token input: written by the layer straight into the up bank
        m.d.comb += [up.in_we.eq(self.in_we), up.in_addr.eq(self.in_addr),
                     up.in_data.eq(self.in_data),
                     cnt.up_dac_drives.eq(up.dac_drives), cnt.down_dac_drives.eq(down.dac_drives)]

        # between the banks: partial sums, requantisation, ReLU, lanes per cycle
        blk = Signal(range(up.out_blocks + 1))
        hidden = [Signal(signed(ab), name=f"hidden{i}") for i in range(lanes)]
        for i in range(lanes):
            psum = tree_sum(up.rd_data[i][k] for k in range(up.row_tiles))
            q = requantize(psum, job.up_mult, job.up_shift, ab)
            m.d.comb += hidden[i].eq(Mux(q > 0, q, 0))
        m.d.comb += [down.in_data[i].eq(hidden[i]) for i in range(lanes)]

        # after the down bank: partial sums, requantisation, gate weight
        m.d.comb += down.rd_addr.eq(self.rd_addr)
        for i in range(lanes):
            psum = tree_sum(down.rd_data[i][k] for k in range(down.row_tiles))
            q = requantize(psum, job.down_mult, job.down_shift, ab)
            m.d.comb += self.rd_data[i].eq(q * job.gate)

        with m.FSM(name="engine"):
            with m.State("IDLE"):
                m.d.comb += self.ready.eq(1)
                with m.If(self.start):
                    m.d.sync += [job.eq(self.job), cnt.jobs.eq(cnt.jobs + 1)]
                    m.d.comb += [up.start.eq(1), up.slot.eq(self.job.slot)]
                    m.next = "UP"
            with m.State("UP"):
                with m.If(up.done):
                    m.d.comb += up.rd_addr.eq(0)
                    m.d.sync += blk.eq(1)
                    m.next = "BETWEEN"
            with m.State("BETWEEN"):
                m.d.comb += [up.rd_addr.eq(blk), down.in_we.eq(1), down.in_addr.eq(blk - 1)]
                m.d.sync += blk.eq(blk + 1)
                with m.If(blk == up.out_blocks):
                    m.next = "START_DOWN"
            with m.State("START_DOWN"):
                m.d.comb += [down.start.eq(1), down.slot.eq(job.slot)]
                m.next = "DOWN"
            with m.State("DOWN"):
                with m.If(down.done):
                    m.next = "IDLE"
        with m.If(~self.ready):
            m.d.sync += cnt.busy_cycles.eq(cnt.busy_cycles + 1)
        return m
