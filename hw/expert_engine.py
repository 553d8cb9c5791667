"""``ExpertEngine``: one group's expert datapath (2-matrix ReLU or SwiGLU FFN), one job at a time.

A group's experts share their peripheral sets, so the group evaluates one (token, expert) job
per timestamp. The engine holds the group's :class:`~moepim.hw.matrix_bank.MatrixBank` s,
``up`` (``d_model -> d_ff``), ``down`` (``d_ff -> d_model``) and, for SwiGLU, ``gate_proj``
(``d_model -> d_ff``, its own crossbars and peripheral sets, evaluated in parallel with
``up``), and the digital units between and after them, ``lanes`` elements per cycle:

* partial-sum adders: the row tiles' partial outputs of one column are summed;
* requantisation ``(v * mult + round) >> shift`` with the job's multiplier and shift, clamped
  to ``+-(2**(act_bits-1) - 1)``;
* activation between the matrices: ReLU (``ffn="relu"``), or for ``ffn="swiglu"``
  ``h = requant_mul(silu(g) * u)`` with ``u``, ``g`` the requantised ``up`` and ``gate_proj``
  outputs and ``silu`` the expert's table (``2**act_bits`` entries per expert slot, a RAM
  written through ``lut_we``/``lut_addr``/``lut_data`` before the run: address
  ``slot * 2**act_bits + g + 2**(act_bits-1)``, as ``moepim.models.quant``'s tables);
* gate weighting: the ``down`` output times the job's gate weight (``gate_bits`` unsigned),
  the term the layer's combine unit accumulates.

Sequence of one job (cycle 0 = ``start``; ``L`` = ``mvm_latency``, ``B1`` = ``d_ff`` blocks)::

    0                 latch the job, start the up (and gate_proj) bank (input loaded by the layer)
    L                 banks done: read block 0
    L+1 .. L+B1       block i: partial sums, requant, activation -> down bank input block i
    L+B1+1            start the down bank
    2L+B1+1           down bank done
    2L+B1+2           ``ready`` again: results readable on ``rd_addr``/``rd_data``

so ``job_latency = 2*L + B1 + 2`` for both FFN kinds. ``bank_base`` (an input, constant during
a run) names the cell images: ``bank_base + k`` for the ``k``-th name of ``bank_names``
(``up``, ``down``, then ``gate_proj``). While ``ready``, ``rd_data`` (one cycle after
``rd_addr``) is the gate-weighted output block ``rd_addr`` of the last job.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from moepim.spec import timing
from moepim.spec.checks import index_bits, need, need_positive, signed_bits
from moepim.spec.tile import TileSpec

from .matrix_bank import BANK_ID_BITS, MatrixBank
from .params import (
    check_counter_bits,
    check_group_size,
    check_multiplier_bits,
    check_tile,
    clamp_symmetric,
    requantize_unclamped,
    tree_sum,
)

__all__ = ["ExpertEngine", "engine_job_layout", "requantize", "SHIFT_BITS", "FFN_BANKS"]

SHIFT_BITS = 5          # requantisation shifts 0..31 (moepim.models.quant.Requant)
# the banks of each FFN kind, in bank-id order (``bank_base + k``)
FFN_BANKS = {"relu": ("up", "down"), "swiglu": ("up", "down", "gate_proj")}
# requantisations of each FFN kind (job operands ``<name>_mult``/``<name>_shift``)
FFN_REQUANTS = {"relu": ("up", "down"), "swiglu": ("up", "down", "gate_proj", "mul")}


def _check_ffn(ffn):
    need(ffn in FFN_BANKS, "ffn", ffn, f"one of {', '.join(FFN_BANKS)}")


def engine_job_layout(*, group_size: int, gate_bits: int, multiplier_bits: int,
                      ffn: str = "relu"):
    """Operands of one job: the expert's slot in the group, its gate weight and the expert's
    requantisation multipliers and shifts (``up``, ``down``; SwiGLU adds ``gate_proj`` and
    ``mul``, the product ``silu(g) * u``)."""
    _check_ffn(ffn)
    fields = {"slot": unsigned(index_bits(group_size)), "gate": unsigned(gate_bits)}
    for name in FFN_REQUANTS[ffn]:
        fields[f"{name}_mult"] = unsigned(multiplier_bits)
        fields[f"{name}_shift"] = unsigned(SHIFT_BITS)
    return data.StructLayout(fields)


def requantize(value, mult, shift, act_bits):
    """``clamp((value * mult + 2**(shift-1)) >> shift)`` (``shift`` 0: no rounding), exactly
    ``Requant.apply`` followed by the symmetric clamp of ``moepim.models.quant``."""
    return clamp_symmetric(requantize_unclamped(value, mult, shift), act_bits)


class ExpertEngine(wiring.Component):
    def __init__(self, *, d_model: int, d_ff: int, group_size: int, lanes: int,
                 tile: TileSpec, gate_bits: int = 8, multiplier_bits: int = 15,
                 ffn: str = "relu", counter_bits=48):
        for name, value in (("d_model", d_model), ("d_ff", d_ff), ("lanes", lanes),
                            ("gate_bits", gate_bits)):
            need_positive(name, value)
        check_group_size(group_size)
        check_multiplier_bits(multiplier_bits)
        _check_ffn(ffn)
        check_tile(tile)
        check_counter_bits(counter_bits)
        input_bits = tile.input_bits
        shapes = {"up": (d_model, d_ff), "down": (d_ff, d_model), "gate_proj": (d_model, d_ff)}
        self._banks = {name: MatrixBank(n_in=shapes[name][0], n_out=shapes[name][1],
                                        n_slots=group_size, lanes=lanes,
                                        tile=tile, counter_bits=counter_bits)
                       for name in FFN_BANKS[ffn]}
        self._up, self._down = self._banks["up"], self._banks["down"]
        # elaborated with the engine; a layer built for its parameters (cached build, one
        # exported block) never elaborates the others: not a forgotten submodule
        for bank in self._banks.values():
            bank._MustUse__silence = True
        self._ffn, self._group_size = ffn, group_size
        self._d_model, self._d_ff, self._lanes = d_model, d_ff, lanes
        self._gate_bits, self._act_bits = gate_bits, input_bits
        self._multiplier_bits = multiplier_bits
        lim = (1 << (input_bits - 1)) - 1
        self._out_bits = signed_bits(-lim * ((1 << gate_bits) - 1), lim * ((1 << gate_bits) - 1))
        c = unsigned(counter_bits)
        lut = {}
        if ffn == "swiglu":
            lut = {"lut_we": In(1), "lut_addr": In(index_bits(self.lut_depth)),
                   "lut_data": In(signed(input_bits))}
        super().__init__({
            "bank_base": In(BANK_ID_BITS),
            **lut,
            "in_we": In(1),
            "in_addr": In(index_bits(self._up.in_blocks)),
            "in_data": In(data.ArrayLayout(signed(input_bits), lanes)),
            "start": In(1),
            "job": In(engine_job_layout(group_size=group_size, gate_bits=gate_bits,
                                        multiplier_bits=multiplier_bits, ffn=ffn)),
            "ready": Out(1),
            "rd_addr": In(index_bits(self._down.out_blocks)),
            "rd_data": Out(data.ArrayLayout(signed(self._out_bits), lanes)),
            "counters": Out(data.StructLayout({
                "jobs": c, "busy_cycles": c, "dac_drives": c})),
        })

    up = property(lambda self: self._up)
    down = property(lambda self: self._down)
    ffn = property(lambda self: self._ffn)
    d_ff = property(lambda self: self._d_ff)
    group_size = property(lambda self: self._group_size)
    bank_names = property(lambda self: FFN_BANKS[self._ffn])
    banks = property(lambda self: dict(self._banks))
    lut_depth = property(lambda self: self._group_size << self._act_bits)
    lanes = property(lambda self: self._lanes)
    out_bits = property(lambda self: self._out_bits)

    @property
    def job_latency(self) -> int:
        return timing.job_latency(self._up.mvm_latency, self._up.out_blocks)

    def elaborate(self, platform):
        m = Module()
        banks = self._banks
        up, down = self._up, self._down
        for name, bank in banks.items():
            m.submodules[name] = bank
        firsts = [b for name, b in banks.items() if name != "down"]    # fed by the token
        lanes, ab = self._lanes, self._act_bits
        job = Signal.like(self.job)
        cnt = self.counters

        # cell images: bank_base + k for the k-th bank name
        m.d.comb += [banks[name].bank_id.eq(self.bank_base + k)
                     for k, name in enumerate(self.bank_names)]
        # token input: written by the layer straight into the first banks
        for b in firsts:
            m.d.comb += [b.in_we.eq(self.in_we), b.in_addr.eq(self.in_addr),
                         b.in_data.eq(self.in_data)]
        m.d.comb += cnt.dac_drives.eq(tree_sum(b.dac_drives for b in banks.values()))

        # between the banks: partial sums, requantisation, activation, lanes per cycle
        blk = Signal(range(up.out_blocks + 1))
        hidden = [Signal(signed(ab), name=f"hidden{i}") for i in range(lanes)]
        if self._ffn == "swiglu":
            gp = banks["gate_proj"]
            m.submodules.silu = lut = memory.Memory(shape=signed(ab), depth=self.lut_depth,
                                                    init=[])
            wp = lut.write_port()
            m.d.comb += [wp.en.eq(self.lut_we), wp.addr.eq(self.lut_addr),
                         wp.data.eq(self.lut_data)]
        for i in range(lanes):
            psum = tree_sum(up.rd_data[i][k] for k in range(up.row_tiles))
            u = requantize(psum, job.up_mult, job.up_shift, ab)
            if self._ffn == "swiglu":
                g = requantize(tree_sum(gp.rd_data[i][k] for k in range(gp.row_tiles)),
                               job.gate_proj_mult, job.gate_proj_shift, ab)
                rp = lut.read_port(domain="comb")
                m.d.comb += rp.addr.eq(Cat((g + (1 << (ab - 1)))[:ab], job.slot))
                m.d.comb += hidden[i].eq(requantize(rp.data * u, job.mul_mult,
                                                    job.mul_shift, ab))
            else:
                m.d.comb += hidden[i].eq(Mux(u > 0, u, 0))
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
                    m.d.comb += [b.start.eq(1) for b in firsts]
                    m.d.comb += [b.slot.eq(self.job.slot) for b in firsts]
                    m.next = "UP"
            with m.State("UP"):
                with m.If(up.done):
                    m.d.comb += [b.rd_addr.eq(0) for b in firsts]
                    m.d.sync += blk.eq(1)
                    m.next = "BETWEEN"
            with m.State("BETWEEN"):
                m.d.comb += [b.rd_addr.eq(blk) for b in firsts]
                m.d.comb += [down.in_we.eq(1), down.in_addr.eq(blk - 1)]
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
