"""``ResidualUnit``: the decoder layer's residual adds, bit-exact with
``moepim.models.decoder.decoder_forward_int``.

Per lane, ``sum = clamp(requant(a, a_mult, a_shift) + requant(b, b_mult, b_shift))`` where
``requant(v, mult, shift) = (v * mult + 2**(shift-1)) >> shift`` (shift 0: ``v * mult``), as
``moepim.models.quant.Requant.apply``, NOT clamped per operand; only the sum is clamped,
symmetric to ``+-(2**(act_bits-1) - 1)``. The layer's two adds:

* ``x1 = clamp(requant["res1.x"](x) + o)``: ``a`` the layer input codes, ``b`` the O
  projection's already requantised (unclamped) accumulator, ``b_mult = 1``, ``b_shift = 0``;
* ``y = clamp(requant["res2.x1"](x1) + requant["res2.moe"](moe))``.

``a`` is ``a_bits`` wide (activation codes), ``b`` is ``b_bits`` wide (may be an accumulator);
``a_mult``/``a_shift``/``b_mult``/``b_shift`` are run-time inputs, held by the parent while
beats flow (they are sampled when a beat is taken).

Streams: ``i_pairs`` (``a``, ``b``: ``lanes`` lanes each, ``last``) in, ``o_sums``
(``codes``, ``last`` passed through) out.

* **Latency**: ``moepim.spec.timing.residual_latency() = 2`` cycles from a beat's
  ``i_pairs`` handshake to its ``o_sums.valid`` (1: both requantisations, 1: the sum and the
  clamp); ``n`` beats without gaps or back-pressure take ``residual_cycles(n) = n + 2``.
* **Throughput**: one beat per cycle.
* **Back-pressure**: a two-register pipeline, each stage loading when it is empty or the next
  one takes its beat (``ready_k = ~valid_k | ready_{k+1}``): bubbles close up, and
  ``i_pairs.ready`` drops only when both registers hold beats and ``o_sums.ready`` is low.
  ``o_sums.valid`` does not depend on ``o_sums.ready``.
"""

from __future__ import annotations

from amaranth import Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from moepim.spec.checks import need, need_positive

from .expert_engine import SHIFT_BITS
from .params import check_multiplier_bits, clamp_symmetric, requantize_unclamped

__all__ = ["ResidualUnit"]


class ResidualUnit(wiring.Component):
    def __init__(self, *, lanes: int, a_bits: int, b_bits: int, act_bits: int,
                 multiplier_bits: int = 15):
        for name, value in (("lanes", lanes), ("a_bits", a_bits), ("b_bits", b_bits),
                            ("act_bits", act_bits)):
            need_positive(name, value)
        need(act_bits >= 2, "act_bits", act_bits, "an integer >= 2 (signed codes)")
        check_multiplier_bits(multiplier_bits)
        self._lanes, self._a_bits, self._b_bits = lanes, a_bits, b_bits
        self._act_bits, self._multiplier_bits = act_bits, multiplier_bits
        mult, shift = In(unsigned(multiplier_bits)), In(unsigned(SHIFT_BITS))
        super().__init__({
            "a_mult": mult, "a_shift": shift, "b_mult": mult, "b_shift": shift,
            "i_pairs": In(stream.Signature(data.StructLayout({
                "a": data.ArrayLayout(signed(a_bits), lanes),
                "b": data.ArrayLayout(signed(b_bits), lanes),
                "last": 1}))),
            "o_sums": Out(stream.Signature(data.StructLayout({
                "codes": data.ArrayLayout(signed(act_bits), lanes),
                "last": 1}))),
        })

    lanes = property(lambda self: self._lanes)
    a_bits = property(lambda self: self._a_bits)
    b_bits = property(lambda self: self._b_bits)
    act_bits = property(lambda self: self._act_bits)
    multiplier_bits = property(lambda self: self._multiplier_bits)

    def elaborate(self, platform):
        m = Module()
        lanes, mb = self._lanes, self._multiplier_bits
        inp, out = self.i_pairs, self.o_sums

        # the pipeline's handshakes: a stage loads when empty or when its beat moves on
        valid1 = Signal()
        ready2 = ~out.valid | out.ready
        ready1 = ~valid1 | ready2
        m.d.comb += inp.ready.eq(ready1)

        # stage 1: both operands requantised (unclamped), registered with ``last``
        ra = [Signal(signed(self._a_bits + mb + 1), name=f"ra{i}") for i in range(lanes)]
        rb = [Signal(signed(self._b_bits + mb + 1), name=f"rb{i}") for i in range(lanes)]
        last1 = Signal()
        with m.If(ready1):
            m.d.sync += valid1.eq(inp.valid)
            with m.If(inp.valid):
                m.d.sync += last1.eq(inp.payload.last)
                for i in range(lanes):
                    m.d.sync += [
                        ra[i].eq(requantize_unclamped(inp.payload.a[i], self.a_mult,
                                                      self.a_shift)),
                        rb[i].eq(requantize_unclamped(inp.payload.b[i], self.b_mult,
                                                      self.b_shift))]

        # stage 2: the sum, clamped to the activation codes, into the output register
        with m.If(ready2):
            m.d.sync += out.valid.eq(valid1)
            with m.If(valid1):
                m.d.sync += out.payload.last.eq(last1)
                for i in range(lanes):
                    m.d.sync += out.payload.codes[i].eq(
                        clamp_symmetric(ra[i] + rb[i], self._act_bits))
        return m
