"""``GateSoftmax``: the routers' integer softmax, bit-exact with ``models.quant.int_softmax``.

For one token: ``z = max - logit`` over the entries of ``mask``, table index
``min((z * index_mult) >> index_shift, 255)`` (round half up, as ``Requant.apply``),
``e = EXP_LUT[index]``, then ``p16 = min((e << 16) // sum(e), 2**16 - 1)`` for every masked
entry, 0 elsewhere. ``index_mult`` and ``index_shift`` are run-time inputs (they follow the
gate's quantisation scale), so one build serves any workload.

Division: one per token, not per entry. A restoring divider computes the reciprocal
``R = floor(2**33 / sum)`` (``RECIP_BITS`` = 18 quotient bits: the masked maximum's entry is
``EXP_LUT[0] = 2**16``, so ``sum >= 2**16``); then each entry's ``q0 = ((e << 16) * R) >> 33``
is the exact quotient or one less (``e << 16 < 2**33``), and ``(q0 + 1) * sum <= e << 16``
decides which: two multipliers, one entry per cycle, the exact ``(e << 16) // sum``.

Sequence per token (cycle 0 = handshake): 1 cycle for the maximum (a comparator tree), one
table lookup per entry (``n_experts + 1`` cycles, pipelined), ``RECIP_BITS + 1`` cycles for the
reciprocal, one cycle per entry for the quotients, then the result:
``latency = 2 * n_experts + 4 + RECIP_BITS + 1`` cycles to ``o_probs.valid``, whatever the
mask.
"""

from __future__ import annotations

import math

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from moepim.spec import timing
from moepim.spec.checks import index_bits, need, need_positive
from moepim.spec.numerics import (
    EXP_ENTRIES,
    EXP_STEPS_PER_UNIT,
    RECIP_BITS,
    RECIP_SHIFT,
    SCORE_BITS,
)

__all__ = ["GateSoftmax", "exp_table"]



def exp_table() -> list[int]:
    """``round(2**16 * exp(-j / 16))`` for ``j = 0..255`` (the model's ``EXP_LUT``)."""
    return [round((1 << SCORE_BITS) * math.exp(-j / EXP_STEPS_PER_UNIT))
            for j in range(EXP_ENTRIES)]


class GateSoftmax(wiring.Component):
    def __init__(self, *, n_experts: int, logit_bits: int, mult_bits: int = 16,
                 shift_bits: int = 6):
        need_positive("n_experts", n_experts)
        need(n_experts <= 256, "n_experts", n_experts, "an integer from 1 to 256")
        need(isinstance(logit_bits, int) and 2 <= logit_bits <= 48, "logit_bits", logit_bits,
             "an integer from 2 to 48")
        self._n, self._logit_bits = n_experts, logit_bits
        self._mult_bits, self._shift_bits = mult_bits, shift_bits
        super().__init__({
            "i_logits": In(stream.Signature(data.StructLayout({
                "logits": data.ArrayLayout(signed(logit_bits), n_experts),
                "mask": n_experts,
                "index_mult": unsigned(mult_bits),
                "index_shift": unsigned(shift_bits)}))),
            "o_probs": Out(stream.Signature(data.StructLayout({
                "p16": data.ArrayLayout(unsigned(SCORE_BITS), n_experts)}))),
        })

    n_experts = property(lambda self: self._n)

    def latency(self, n_masked: int | None = None) -> int:
        """Cycles from the handshake to ``o_probs.valid`` (any mask: one division per
        token, not per entry)."""
        return timing.softmax_latency(self._n)

    def elaborate(self, platform):
        m = Module()
        n = self._n
        table = exp_table()
        assert table[0] == 1 << SCORE_BITS      # the maximum's entry: the sum is >= 2**16
        m.submodules.exp_rom = rom = Memory(shape=unsigned(SCORE_BITS + 1), depth=EXP_ENTRIES,
                                            init=table)
        rp = rom.read_port()
        inp = self.i_logits.payload
        logits = Signal.like(inp.logits)
        mask = Signal(n)
        mult = Signal.like(inp.index_mult)
        shift = Signal.like(inp.index_shift)
        top = Signal(signed(self._logit_bits))
        exps = [Signal(SCORE_BITS + 1, name=f"exp{j}") for j in range(n)]
        total = Signal(SCORE_BITS + 1 + index_bits(n + 1))
        probs = [Signal(SCORE_BITS, name=f"p{j}") for j in range(n)]
        j = Signal(range(n + 1))
        j_d = Signal(range(n + 1))
        looked = Signal()                         # rp.data holds the entry j_d's exp

        # maximum over the masked entries (comparator tree)
        def tree_max(items):
            while len(items) > 1:
                nxt = []
                for a in range(0, len(items) - 1, 2):
                    (va, ma), (vb, mb) = items[a], items[a + 1]
                    take_b = mb & (~ma | (vb > va))
                    nxt.append((Mux(take_b, vb, va), ma | mb))
                if len(items) % 2:
                    nxt.append(items[-1])
                items = nxt
            return items[0][0]
        best = Signal(signed(self._logit_bits))
        m.d.comb += best.eq(tree_max([(logits[i], mask[i]) for i in range(n)]))

        # table index of entry j: min(((top - l) * mult + half) >> shift, 255)
        z = Signal(self._logit_bits + 1)
        sel_logit = Signal(signed(self._logit_bits))
        with m.Switch(j):
            for i in range(n):
                with m.Case(i):
                    m.d.comb += sel_logit.eq(logits[i])
        m.d.comb += z.eq(top - sel_logit)
        prod = Signal(len(z) + self._mult_bits + 1)
        m.d.comb += prod.eq(z * mult)
        half = Signal.like(prod)
        with m.If(shift != 0):
            m.d.comb += half.eq(Const(1, len(prod)) << (shift - 1).as_unsigned())
        rounded = Signal.like(prod)
        m.d.comb += rounded.eq((prod + half) >> shift)
        m.d.comb += rp.addr.eq(Mux(rounded > EXP_ENTRIES - 1, EXP_ENTRIES - 1, rounded))

        # the reciprocal R = floor(2**RECIP_SHIFT / total), RECIP_BITS quotient bits of a
        # restoring divider: the masked maximum's entry is 2**16 (table index 0), so
        # total >= 2**16 and R < 2**RECIP_BITS; the first remainder is 2**RECIP_SHIFT's bits
        # above the ones brought down (all zeros)
        recip = Signal(RECIP_BITS)
        rem = Signal(len(total) + 1)
        step = Signal(range(RECIP_BITS + 1))
        cur = Signal(range(n + 1))

        # entry cur's quotient (e << 16) // total from R: q0 = ((e << 16) * R) >> RECIP_SHIFT
        # is q or q - 1 (as e << 16 < 2**RECIP_SHIFT); one multiply-compare picks which
        sel_mask = Signal()
        sel_exp = Signal(SCORE_BITS + 1)
        with m.Switch(cur):
            for i in range(n):
                with m.Case(i):
                    m.d.comb += [sel_mask.eq(mask[i]), sel_exp.eq(exps[i])]
        q0 = Signal(SCORE_BITS + 1)
        m.d.comb += q0.eq((sel_exp * recip) >> (RECIP_SHIFT - SCORE_BITS))
        quotient = Signal(SCORE_BITS + 1)
        m.d.comb += quotient.eq(Mux((q0 + 1) * total <= (sel_exp << SCORE_BITS), q0 + 1, q0))
        limit = (1 << SCORE_BITS) - 1

        with m.FSM(name="softmax"):
            with m.State("IDLE"):
                m.d.comb += self.i_logits.ready.eq(1)
                with m.If(self.i_logits.valid):
                    m.d.sync += [logits.eq(inp.logits), mask.eq(inp.mask), mult.eq(inp.index_mult),
                                 shift.eq(inp.index_shift), total.eq(0), j.eq(0), looked.eq(0)]
                    m.next = "MAX"
            with m.State("MAX"):
                m.d.sync += top.eq(best)
                m.next = "EXP"
            with m.State("EXP"):
                # look entry j up; the ROM answers next cycle (entry j_d)
                m.d.sync += [looked.eq(j < n), j_d.eq(j)]
                with m.If(j < n):
                    m.d.sync += j.eq(j + 1)
                with m.If(looked):
                    with m.Switch(j_d):
                        for i in range(n):
                            with m.Case(i):
                                with m.If(mask[i]):
                                    m.d.sync += [exps[i].eq(rp.data),
                                                 total.eq(total + rp.data)]
                                with m.Else():
                                    m.d.sync += exps[i].eq(0)
                with m.If((j == n) & looked & (j_d == n - 1)):
                    m.d.sync += [rem.eq(1 << (RECIP_SHIFT - RECIP_BITS)), recip.eq(0),
                                 step.eq(0)]
                    m.next = "RECIP"
            with m.State("RECIP"):
                # one quotient bit per cycle (the numerator's remaining bits are zeros)
                with m.If(step < RECIP_BITS):
                    trial = Cat(Const(0, 1), rem)               # rem << 1
                    ge = trial >= total
                    m.d.sync += [rem.eq(Mux(ge, trial - total, trial)),
                                 recip.eq(Cat(ge, recip)), step.eq(step + 1)]
                with m.Else():
                    m.d.sync += cur.eq(0)
                    m.next = "QUOTIENTS"
            with m.State("QUOTIENTS"):
                # one entry per cycle
                with m.If(cur == n):
                    m.next = "OUT"
                with m.Else():
                    with m.Switch(cur):
                        for i in range(n):
                            with m.Case(i):
                                m.d.sync += probs[i].eq(Mux(
                                    sel_mask, Mux(quotient > limit, limit, quotient), 0))
                    m.d.sync += cur.eq(cur + 1)
            with m.State("OUT"):
                m.d.comb += [self.o_probs.valid.eq(1),
                             self.o_probs.payload.p16.as_value().eq(Cat(*probs))]
                with m.If(self.o_probs.ready):
                    m.next = "IDLE"
        return m
