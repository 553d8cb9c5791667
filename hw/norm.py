"""``NormUnit``: the decoder layer's integer RMSNorm / LayerNorm, bit-exact with
``moepim.models.decoder.int_norm``.

Per row ``x`` of ``d = d_model`` signed ``act_bits`` codes, arriving ``lanes`` codes per beat
on ``i_rows`` (``B = d_model / lanes`` beats; the unit counts them, the input's ``last`` is not
used; ``o_rows`` sets ``last`` on a row's final beat):

* ``c = x - mean`` with ``mean = floor((2 * sum(x) + d) / (2 * d))`` (``center``, LayerNorm),
  ``c = x`` (RMSNorm);
* ``ms = sum(c * c) // d + eps``, from the one pass's sums: ``sum(c * c) = Q - mean * (2 * S
  - d * mean)`` (``S = sum(x)``, ``Q = sum(x * x)``, exact). Both divisions by the constants
  ``2d`` and ``d`` are a multiplication by a rounded-up reciprocal and a shift, exact for every
  numerator the sums can reach (:func:`const_divider`);
* ``r = isqrt(ms << 2 * NORM_FRAC_BITS)``, digit by digit, one result bit per cycle
  (``ROOT_BITS = act_bits + 1 + NORM_FRAC_BITS`` bits: ``ms < 2**(2 * act_bits + 1)``);
* ``inv = 2**NORM_RECIP_BITS // max(r, 1)``, a restoring divider, one quotient bit per cycle
  (``NORM_RECIP_BITS + 1`` bits);
* per element ``y = clamp(((c * gamma * inv * mult + 2**(shift-1)) >> shift) + beta)``
  (``shift`` 0: no rounding; clamp to ``+-(2**(act_bits-1) - 1)``), as ``Requant(mult,
  shift).apply`` then ``+ beta`` (LayerNorm) then the clamp; ``inv * mult`` is formed once per
  row.

The row is buffered on chip (a memory of ``B`` words of ``lanes`` codes) between the statistics
pass and the output pass. ``gamma`` (and, LayerNorm, ``beta``), signed ``act_bits``, are a
memory of ``B`` words written through ``param_we``/``param_addr``/``param_data`` (word ``a``:
elements ``a * lanes .. a * lanes + lanes - 1``) before the rows. ``eps`` (unsigned,
``2 * act_bits`` bits), ``mult`` and ``shift`` (``NORM_SHIFT_BITS``: the norm's shifts reach
~40) are held while rows are in flight.

Sequence of one row (cycle 0 = its first input handshake, no input gaps)::

    0 .. B-1          input beats: written to the buffer, S and Q accumulated
    B                 the mean (LayerNorm only; RMSNorm goes on at once)
    B+c               ms (c = 1 for LayerNorm, 0 for RMSNorm)
    B+c+1 ..          ROOT_BITS cycles of square root, NORM_RECIP_BITS + 1 of reciprocal
    then              inv * mult, the read of buffer word 0; one cycle later word 0's
                      outputs are registered

so ``latency = B + c + ROOT_BITS + NORM_RECIP_BITS + 4`` cycles to the first ``o_rows.valid``
(``moepim.spec.timing.norm_latency``), then one beat per cycle. Throughput: one row at a
time; ``i_rows.ready`` is high only while the unit collects a row, so the next row's first
beat is taken the cycle after the last output beat is: ``latency + B`` cycles per row without
gaps or back-pressure.

Back-pressure: the output pass (buffer read, arithmetic, output register) advances only when
the output register is empty or taken (``o_rows.ready``), so a stalled ``o_rows`` holds the
beat and the buffer read; nothing is lost or repeated. Input gaps only delay the statistics
pass.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from moepim.spec import timing
from moepim.spec.checks import index_bits, need, need_positive
from moepim.spec.numerics import NORM_FRAC_BITS, NORM_RECIP_BITS

from .params import check_multiplier_bits, requantize_unclamped, tree_sum

__all__ = ["NormUnit", "norm_row_layout", "norm_param_layout", "const_divider",
           "NORM_SHIFT_BITS"]

NORM_SHIFT_BITS = 6     # requantisation shifts 0..63 (the norm's are ~40: inv is ~2**17)


def norm_row_layout(*, act_bits: int, lanes: int):
    """One beat of a row: ``lanes`` codes, ``last`` on the row's final beat."""
    return data.StructLayout({"codes": data.ArrayLayout(signed(act_bits), lanes), "last": 1})


def norm_param_layout(*, act_bits: int, lanes: int, center: bool):
    """One word of the parameter memory: ``lanes`` gains (and biases, LayerNorm)."""
    fields = {"gamma": data.ArrayLayout(signed(act_bits), lanes)}
    if center:
        fields["beta"] = data.ArrayLayout(signed(act_bits), lanes)
    return data.StructLayout(fields)


def const_divider(divisor: int, n_bits: int) -> tuple[int, int]:
    """``(mult, k)`` with ``n // divisor == (n * mult) >> k`` for every ``0 <= n <
    2**n_bits``: ``k = n_bits + ceil(log2(divisor))``, ``mult = ceil(2**k / divisor)``. The
    rounding error ``e = mult * divisor - 2**k < divisor <= 2**(k - n_bits)`` adds less than
    ``n * e / 2**k < 1`` to ``n mod divisor`` (at most ``divisor - 1``): the floor is kept."""
    k = n_bits + (divisor - 1).bit_length()
    mult = -(-(1 << k) // divisor)
    assert mult * divisor - (1 << k) < 1 << (k - n_bits)
    return mult, k


class NormUnit(wiring.Component):
    def __init__(self, *, d_model: int, lanes: int, act_bits: int = 8, center: bool = False,
                 multiplier_bits: int = 15):
        need_positive("d_model", d_model)
        need_positive("lanes", lanes)
        need(d_model % lanes == 0, "lanes", lanes, f"a divisor of d_model={d_model}")
        need(isinstance(act_bits, int) and not isinstance(act_bits, bool)
             and 2 <= act_bits <= 16, "act_bits", act_bits, "an integer from 2 to 16")
        need(isinstance(center, bool), "center", center,
             "True (LayerNorm) or False (RMSNorm)")
        check_multiplier_bits(multiplier_bits)
        self._d, self._lanes, self._act_bits = d_model, lanes, act_bits
        self._center, self._multiplier_bits = center, multiplier_bits
        row = stream.Signature(norm_row_layout(act_bits=act_bits, lanes=lanes))
        super().__init__({
            "i_rows": In(row),
            "o_rows": Out(row),
            "param_we": In(1),
            "param_addr": In(index_bits(self.beats)),
            "param_data": In(norm_param_layout(act_bits=act_bits, lanes=lanes,
                                               center=center)),
            "eps": In(unsigned(self.eps_bits)),
            "mult": In(unsigned(multiplier_bits)),
            "shift": In(unsigned(NORM_SHIFT_BITS)),
        })

    d_model = property(lambda self: self._d)
    lanes = property(lambda self: self._lanes)
    act_bits = property(lambda self: self._act_bits)
    center = property(lambda self: self._center)
    multiplier_bits = property(lambda self: self._multiplier_bits)
    beats = property(lambda self: self._d // self._lanes)
    eps_bits = property(lambda self: 2 * self._act_bits)
    root_bits = property(lambda self: self._act_bits + 1 + NORM_FRAC_BITS)

    @property
    def latency(self) -> int:
        """Cycles from a row's first input handshake to its first ``o_rows.valid``."""
        return timing.norm_latency(self._d, self._lanes, self._act_bits, self._center)

    def elaborate(self, platform):
        m = Module()
        d, lanes, ab, n_beats = self._d, self._lanes, self._act_bits, self.beats
        center = self._center
        rb = self.root_bits
        lim = (1 << (ab - 1)) - 1
        half = 1 << (ab - 1)
        inp, out = self.i_rows, self.o_rows

        m.submodules.row_buf = row_buf = memory.Memory(
            shape=data.ArrayLayout(signed(ab), lanes), depth=n_beats, init=[])
        m.submodules.params = params = memory.Memory(
            shape=norm_param_layout(act_bits=ab, lanes=lanes, center=center), depth=n_beats,
            init=[])
        row_wp, row_rp = row_buf.write_port(), row_buf.read_port()
        par_wp, par_rp = params.write_port(), params.read_port()

        # parameters: written by the host, any time no row is in its output pass
        m.d.comb += [par_wp.en.eq(self.param_we), par_wp.addr.eq(self.param_addr),
                     par_wp.data.eq(self.param_data)]

        # statistics: S = sum(x), Q = sum(x * x), one beat per handshake
        s_max, q_max = d * half, d * half * half
        sum_x = Signal(signed(s_max.bit_length() + 1))
        sum_q = Signal(unsigned(q_max.bit_length()))
        beat = Signal(range(n_beats + 1))
        codes = inp.payload.codes
        m.d.comb += [row_wp.addr.eq(beat), row_wp.data.eq(codes)]

        # the mean: floor((2S + d) / (2d)) = floor(num / (2d)) - half, num = 2S + d + 2d*half
        mean = Signal(signed(ab + 1))
        num_bits = (4 * d * half).bit_length()
        num = Signal(unsigned(num_bits))
        m.d.comb += num.eq(2 * sum_x + d + 2 * d * half)
        mean_mult, mean_k = const_divider(2 * d, num_bits)

        # ms = sum(c * c) // d + eps, sum(c * c) = Q - mean * (2S - d * mean)
        sq_bits = (d * (2 * half - 1) ** 2).bit_length()
        sq = Signal(unsigned(sq_bits))
        m.d.comb += sq.eq(sum_q - mean * (2 * sum_x - d * mean))
        ms_mult, ms_k = const_divider(d, sq_bits)
        ms = Signal(unsigned(2 * ab + 1))
        m.d.comb += ms.eq(((sq * ms_mult) >> ms_k) + self.eps)

        # square root of ms << 2F: the radicand's bit pairs from the top, one root bit each
        rad = Signal(2 * rb)
        root = Signal(rb)
        rem = Signal(rb + 2)
        step = Signal(range(max(rb, NORM_RECIP_BITS + 1) + 1))
        rem4 = Cat(rad[-2:], rem)                        # rem << 2 | next pair
        trial = Cat(Const(1, 2), root)                   # root << 2 | 1
        root_ge = rem4 >= trial

        # reciprocal 2**NORM_RECIP_BITS // max(r, 1): the dividend is a 1 then zeros
        inv = Signal(NORM_RECIP_BITS + 1)
        drem = Signal(rb + 1)
        divisor = Signal(rb)
        m.d.comb += divisor.eq(Mux(root == 0, 1, root))
        dtrial = Cat(step == 0, drem)                   # drem << 1 | dividend bit
        div_ge = dtrial >= divisor

        # output pass: word rd read, its outputs registered when the register is free
        scale = Signal(unsigned(NORM_RECIP_BITS + 1 + self._multiplier_bits))
        rd = Signal(range(n_beats + 1))
        pend = Signal()                                  # row_rp/par_rp hold word rd - 1
        out_valid, out_last = Signal(), Signal()
        out_codes = Signal(data.ArrayLayout(signed(ab), lanes))
        advance = Signal()
        m.d.comb += [advance.eq(~out_valid | out.ready),
                     out.valid.eq(out_valid), out.payload.codes.eq(out_codes),
                     out.payload.last.eq(out_last)]
        ys = []
        for i in range(lanes):
            c = row_rp.data[i] - mean
            y = requantize_unclamped(c * par_rp.data.gamma[i], scale, self.shift)
            if center:
                y = y + par_rp.data.beta[i]
            yc = Signal(signed(ab), name=f"y{i}")
            m.d.comb += yc.eq(Mux(y > lim, lim, Mux(y < -lim, -lim, y)))
            ys.append(yc)
        m.d.comb += [row_rp.addr.eq(rd), par_rp.addr.eq(rd)]

        with m.FSM(name="norm"):
            with m.State("IN"):
                # collect a row: buffer it, accumulate S and Q
                m.d.comb += [inp.ready.eq(1), row_wp.en.eq(inp.valid)]
                with m.If(inp.valid):
                    m.d.sync += [
                        sum_x.eq(sum_x + tree_sum(codes[i] for i in range(lanes))),
                        sum_q.eq(sum_q + tree_sum(codes[i] * codes[i] for i in range(lanes))),
                        beat.eq(beat + 1)]
                    with m.If(beat == n_beats - 1):
                        m.next = "MEAN" if center else "MS"
            if center:
                with m.State("MEAN"):
                    # the rounded mean (a constant division)
                    m.d.sync += mean.eq(((num * mean_mult) >> mean_k) - half)
                    m.next = "MS"
            with m.State("MS"):
                # the mean square plus eps, as the square root's radicand
                m.d.sync += [rad.eq(ms << (2 * NORM_FRAC_BITS)), root.eq(0), rem.eq(0),
                             step.eq(0)]
                m.next = "SQRT"
            with m.State("SQRT"):
                # one root bit per cycle
                m.d.sync += [rad.eq(rad << 2), rem.eq(Mux(root_ge, rem4 - trial, rem4)),
                             root.eq(Cat(root_ge, root)), step.eq(step + 1)]
                with m.If(step == rb - 1):
                    m.d.sync += [step.eq(0), drem.eq(0), inv.eq(0)]
                    m.next = "RECIP"
            with m.State("RECIP"):
                # one quotient bit per cycle
                m.d.sync += [drem.eq(Mux(div_ge, dtrial - divisor, dtrial)),
                             inv.eq(Cat(div_ge, inv)), step.eq(step + 1)]
                with m.If(step == NORM_RECIP_BITS):
                    m.next = "SCALE"
            with m.State("SCALE"):
                # inv * mult for the row; read word 0
                m.d.sync += [scale.eq(inv * self.mult), rd.eq(1), pend.eq(1)]
                m.d.comb += [row_rp.addr.eq(0), par_rp.addr.eq(0)]
                m.next = "OUT"
            with m.State("OUT"):
                # one word per cycle while the output register is free or taken
                m.d.comb += [row_rp.en.eq(advance), par_rp.en.eq(advance)]
                with m.If(advance):
                    m.d.sync += [out_valid.eq(pend), out_last.eq(pend & (rd == n_beats)),
                                 pend.eq(rd < n_beats)]
                    m.d.sync += [out_codes[i].eq(ys[i]) for i in range(lanes)]
                    with m.If(rd < n_beats):
                        m.d.sync += rd.eq(rd + 1)
                with m.If(out_valid & out.ready & out_last):
                    m.d.sync += [out_valid.eq(0), beat.eq(0), sum_x.eq(0), sum_q.eq(0),
                                 mean.eq(0)]
                    m.next = "IN"
        return m
