"""``GateSoftmax``: the routers' integer softmax, bit-exact with ``models.quant.int_softmax``.

For one token: ``z = max - logit`` over the entries of ``mask``, table index
``min((z * index_mult) >> index_shift, 255)`` (round half up, as ``Requant.apply``),
``e = EXP_LUT[index]``, then ``p16 = min((e << 16) // sum(e), 2**16 - 1)`` for every masked
entry, 0 elsewhere. ``index_mult`` and ``index_shift`` are run-time inputs (they follow the
gate's quantisation scale), so one build serves any workload.

Sequence per token (cycle 0 = handshake): 1 cycle for the maximum (a comparator tree), one
table lookup per entry (``n_experts + 1`` cycles, pipelined), one cycle per entry to walk the
entries plus ``QUOTIENT_BITS + 1`` for each masked one (a restoring divider), then the result:
``latency(n_masked) = 2 * n_experts + 4 + n_masked * (QUOTIENT_BITS + 1)`` cycles to
``o_probs.valid``.
"""

from __future__ import annotations

import math

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .params import index_bits, need, need_positive

__all__ = ["GateSoftmax", "exp_table", "SCORE_BITS", "QUOTIENT_BITS"]

SCORE_BITS = 16                # Q0.16 probabilities
QUOTIENT_BITS = SCORE_BITS + 1  # e <= sum, so (e << 16) // sum <= 2**16
EXP_ENTRIES, EXP_STEPS_PER_UNIT = 256, 16


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

    def latency(self, n_masked: int) -> int:
        return 2 * self._n + 4 + n_masked * (QUOTIENT_BITS + 1)

    def elaborate(self, platform):
        m = Module()
        n = self._n
        table = exp_table()
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

        # restoring divider: q = (e << 16) // total, 17 quotient bits
        num = Signal(QUOTIENT_BITS)              # the numerator bits still to bring down
        rem = Signal(len(total) + 1)
        quo = Signal(QUOTIENT_BITS)
        step = Signal(range(QUOTIENT_BITS + 1))
        cur = Signal(range(n + 1))

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
                    m.d.sync += cur.eq(0)
                    m.next = "NEXT"
            with m.State("NEXT"):
                # find the next masked entry to divide
                with m.If(cur == n):
                    m.next = "OUT"
                with m.Else():
                    sel_mask = Signal()
                    sel_exp = Signal(SCORE_BITS + 1)
                    with m.Switch(cur):
                        for i in range(n):
                            with m.Case(i):
                                m.d.comb += [sel_mask.eq(mask[i]), sel_exp.eq(exps[i])]
                    with m.If(sel_mask):
                        # (e << 16) = e's top bits (first remainder) + 17 bits to bring down
                        m.d.sync += [num.eq(sel_exp << SCORE_BITS),
                                     rem.eq(sel_exp >> (QUOTIENT_BITS - SCORE_BITS)),
                                     quo.eq(0), step.eq(0)]
                        m.next = "DIV"
                    with m.Else():
                        with m.Switch(cur):
                            for i in range(n):
                                with m.Case(i):
                                    m.d.sync += probs[i].eq(0)
                        m.d.sync += cur.eq(cur + 1)
            with m.State("DIV"):
                with m.If(step < QUOTIENT_BITS):
                    bit = num[QUOTIENT_BITS - 1]                # next numerator bit
                    trial = Cat(bit, rem)                       # (rem << 1) | bit
                    ge = trial >= total
                    m.d.sync += [rem.eq(Mux(ge, trial - total, trial)), num.eq(num << 1),
                                 quo.eq(Cat(ge, quo)), step.eq(step + 1)]
                with m.Else():
                    limit = (1 << SCORE_BITS) - 1
                    with m.Switch(cur):
                        for i in range(n):
                            with m.Case(i):
                                m.d.sync += probs[i].eq(Mux(quo > limit, limit, quo))
                    m.d.sync += cur.eq(cur + 1)
                    m.next = "NEXT"
            with m.State("OUT"):
                m.d.comb += [self.o_probs.valid.eq(1),
                             self.o_probs.payload.p16.as_value().eq(Cat(*probs))]
                with m.If(self.o_probs.ready):
                    m.next = "IDLE"
        return m
