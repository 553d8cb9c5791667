"""``AttentionUnit``: one attention head of one query row over ``n_keys`` cached keys and
values, bit-exact with ``moepim.models.decoder.attend_int``.

For a query ``q`` (``head_dim`` codes) and the rows ``k_j``, ``v_j`` (``j < n_keys``, the KV
cache plus the current token: a causal row attends to every key up to its own position)::

    s_j  = q . k_j                                   exact integers
    p_j  = int_softmax(s, index_mult, index_shift)   Q0.16 (``moepim.hw.softmax``'s method)
    a    = clamp((sum_j p_j v_j + 2**15) >> 16)      at V's scale

The ``1/sqrt(head_dim)`` scale and the quantisation scales of Q and K are folded into the
softmax's table-index requantisation (``index_mult``, ``index_shift``: run-time inputs, so one
build serves any layer). Grouped KV heads need nothing here: the controller streams the K/V
rows of the query head's group.

Ports (``lanes`` codes per beat, ``B = head_dim / lanes`` beats per vector):
  * ``i_queries``: the query in ``B`` beats (``codes``); the first beat's ``n_keys``,
    ``index_mult`` and ``index_shift`` hold for the whole query;
  * ``i_keys``: ``n_keys`` K rows of ``B`` beats, taken only during the score phase;
  * ``i_values``: ``n_keys`` V rows of ``B`` beats, taken only during the weighted sum;
  * ``o_outputs``: the ``B`` beats of ``a``, ``last`` on the final one.

Sequence (``L = n_keys``; one handshake per cycle on every stream when offered):
  * SCORE: one K beat per cycle, ``lanes`` multipliers and an adder tree; the score of key
    ``j`` is written into the score buffer (an ``Sram`` of ``n_keys_max`` rows) on its last
    beat, and the running maximum kept: ``L * B`` cycles;
  * EXP: per key, the buffer read (1 cycle), the table index
    ``min(((max - s_j) * mult + half) >> shift, 255)`` and the exp table read (1 cycle), the
    entry written back and summed: ``L + 2`` cycles, pipelined;
  * RECIP: ``R = floor(2**33 / sum)``, one quotient bit per cycle: ``RECIP_BITS + 1`` cycles;
  * PROB: per key, ``p_j = min((e_j << 16) // sum, 2**16 - 1)`` exactly from ``R`` (one
    multiply and one compare, as ``GateSoftmax``) written back: ``L + 1`` cycles, then one
    cycle that reads ``p_0`` for the next phase;
  * SUM: one V beat per cycle, ``lanes`` multiply-accumulates into ``head_dim`` accumulators
    (a register file of ``B`` words, read asynchronously; the first row's products start
    the sums): ``L * B`` cycles;
  * OUT: ``B`` output beats (back-pressure holds the unit here).

Latency (``moepim.spec.timing.attention_latency``), from the handshake of the query's last
beat (cycle 0) to the first cycle ``o_outputs.valid`` is high, with K and V offered every
cycle: ``2 L B + 2 L + RECIP_BITS + 6``; ``n_keys`` from 1 to ``n_keys_max``. The unit takes
the next query after its last output beat.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from moepim.spec import timing
from moepim.spec.checks import index_bits, need, need_positive, signed_bits
from moepim.spec.numerics import EXP_ENTRIES, RECIP_BITS, RECIP_SHIFT, SCORE_BITS

from .expert_engine import SHIFT_BITS
from .params import check_multiplier_bits, tree_sum
from .softmax import exp_table
from .sram import Sram

__all__ = ["AttentionUnit"]


class AttentionUnit(wiring.Component):
    def __init__(self, *, head_dim: int, lanes: int, act_bits: int, n_keys_max: int,
                 multiplier_bits: int = 16):
        for name, value in (("head_dim", head_dim), ("lanes", lanes), ("act_bits", act_bits),
                            ("n_keys_max", n_keys_max)):
            need_positive(name, value)
        need(head_dim % lanes == 0, "lanes", lanes, f"a divisor of head_dim ({head_dim})")
        need(2 <= act_bits <= 16, "act_bits", act_bits, "an integer from 2 to 16")
        check_multiplier_bits(multiplier_bits)
        self._head_dim, self._lanes, self._act_bits = head_dim, lanes, act_bits
        self._n_keys_max, self._multiplier_bits = n_keys_max, multiplier_bits
        lim = (1 << (act_bits - 1)) - 1
        self._score_bits = signed_bits(-lim * lim * head_dim, lim * lim * head_dim)
        top = (1 << SCORE_BITS) - 1
        self._acc_bits = signed_bits(-top * lim * n_keys_max, top * lim * n_keys_max)
        codes = data.ArrayLayout(signed(act_bits), lanes)
        beat = data.StructLayout({"codes": codes})
        super().__init__({
            "i_queries": In(stream.Signature(data.StructLayout({
                "codes": codes, "n_keys": unsigned(index_bits(n_keys_max + 1)),
                "index_mult": unsigned(multiplier_bits),
                "index_shift": unsigned(SHIFT_BITS)}))),
            "i_keys": In(stream.Signature(beat)),
            "i_values": In(stream.Signature(beat)),
            "o_outputs": Out(stream.Signature(data.StructLayout({"codes": codes,
                                                                  "last": 1}))),
        })

    head_dim = property(lambda self: self._head_dim)
    lanes = property(lambda self: self._lanes)
    act_bits = property(lambda self: self._act_bits)
    n_keys_max = property(lambda self: self._n_keys_max)
    multiplier_bits = property(lambda self: self._multiplier_bits)
    score_bits = property(lambda self: self._score_bits)
    acc_bits = property(lambda self: self._acc_bits)

    @property
    def blocks(self) -> int:
        """Beats per vector (``head_dim / lanes``)."""
        return self._head_dim // self._lanes

    def latency(self, n_keys: int) -> int:
        """Cycles from the handshake of the query's last beat to ``o_outputs.valid``."""
        return timing.attention_latency(n_keys, self.blocks)

    def elaborate(self, platform):
        m = Module()
        nb, lanes, ab = self.blocks, self._lanes, self._act_bits
        lim = (1 << (ab - 1)) - 1
        q_in, k_in, v_in = self.i_queries, self.i_keys, self.i_values
        entry_bits = max(self._score_bits, SCORE_BITS + 1)
        m.submodules.buffer = buf = Sram(shape=signed(entry_bits + 1), depth=self._n_keys_max)
        m.submodules.exp_rom = rom = Memory(shape=unsigned(SCORE_BITS + 1),
                                            depth=EXP_ENTRIES, init=exp_table())
        rp = rom.read_port()

        # the query and the accumulators: register files of B words (asynchronous reads)
        word = data.ArrayLayout(signed(ab), lanes)
        acc_word = data.ArrayLayout(signed(self._acc_bits), lanes)
        m.submodules.query_file = qfile = Memory(shape=word, depth=nb, init=[])
        m.submodules.acc_file = afile = Memory(shape=acc_word, depth=nb, init=[])
        q_wr, q_rd = qfile.write_port(), qfile.read_port(domain="comb")
        a_wr, a_rd = afile.write_port(), afile.read_port(domain="comb")
        n_keys = Signal.like(q_in.payload.n_keys)
        mult = Signal.like(q_in.payload.index_mult)
        shift = Signal.like(q_in.payload.index_shift)
        beat = Signal(range(nb + 1))
        j = Signal(range(self._n_keys_max + 2))
        score = Signal(signed(self._score_bits))          # the current key's partial sum
        top = Signal(signed(self._score_bits))
        total = Signal(SCORE_BITS + 1 + index_bits(self._n_keys_max + 1))
        step = Signal(range(RECIP_BITS + 1))
        recip = Signal(RECIP_BITS)
        rem = Signal(len(total) + 1)
        look = Signal(2)                                  # EXP pipeline: reads in flight
        j_exp = Signal.like(j)                            # the key whose exp the ROM answers
        j_prob = Signal.like(j)                           # the key whose exp the buffer answers
        prob_valid = Signal()

        # the query's beat against a K or V beat: lanes products (the current beat's words)
        m.d.comb += [q_rd.addr.eq(beat), a_rd.addr.eq(beat), q_wr.addr.eq(beat),
                     a_wr.addr.eq(beat), q_wr.data.eq(q_in.payload.codes)]
        q_word = q_rd.data
        dot = tree_sum([q_word[i] * k_in.payload.codes[i] for i in range(lanes)])

        # table index of the entry the buffer answers: min(((top - s) * mult + half) >> shift,
        # 255) (round half up, as Requant.apply)
        z = Signal(self._score_bits + 1)
        m.d.comb += z.eq(top - buf.r_data[:self._score_bits].as_signed())
        prod = Signal(len(z) + self._multiplier_bits)
        m.d.comb += prod.eq(z * mult)
        half = Signal.like(prod)
        with m.If(shift != 0):
            m.d.comb += half.eq(Const(1, len(prod)) << (shift - 1).as_unsigned())
        rounded = Signal.like(prod)
        m.d.comb += rounded.eq((prod + half) >> shift)
        m.d.comb += rp.addr.eq(Mux(rounded > EXP_ENTRIES - 1, EXP_ENTRIES - 1, rounded))

        # p = (e << 16) // total from R = floor(2**33 / total): q0 = ((e << 16) R) >> 33 is the
        # quotient or one less (e << 16 <= 2**32); one multiply-compare picks which
        e_read = buf.r_data[:SCORE_BITS + 1]
        q0 = Signal(SCORE_BITS + 1)
        m.d.comb += q0.eq((e_read * recip) >> (RECIP_SHIFT - SCORE_BITS))
        quotient = Signal(SCORE_BITS + 1)
        m.d.comb += quotient.eq(Mux((q0 + 1) * total <= (e_read << SCORE_BITS), q0 + 1, q0))
        p_limit = (1 << SCORE_BITS) - 1
        prob = Mux(quotient > p_limit, p_limit, quotient)

        # the output beat: clamp((acc + 2**15) >> 16)
        out_codes = []
        for i in range(lanes):
            r = Signal(signed(self._acc_bits - SCORE_BITS + 1), name=f"out{i}")
            m.d.comb += r.eq((a_rd.data[i] + (1 << (SCORE_BITS - 1))) >> SCORE_BITS)
            out_codes.append(Mux(r > lim, lim, Mux(r < -lim, -lim, r)))

        with m.FSM(name="attention"):
            with m.State("QUERY"):
                # the query's beats; the first one's key count and index requantisation hold
                m.d.comb += q_in.ready.eq(1)
                with m.If(q_in.valid):
                    m.d.comb += q_wr.en.eq(1)
                    m.d.sync += beat.eq(beat + 1)
                    with m.If(beat == 0):
                        m.d.sync += [n_keys.eq(q_in.payload.n_keys),
                                     mult.eq(q_in.payload.index_mult),
                                     shift.eq(q_in.payload.index_shift)]
                    with m.If(beat == nb - 1):
                        m.d.sync += [beat.eq(0), j.eq(0), score.eq(0)]
                        m.next = "SCORE"
            with m.State("SCORE"):
                # one K beat per cycle; a key's score into the buffer on its last beat
                m.d.comb += k_in.ready.eq(1)
                with m.If(k_in.valid):
                    m.d.sync += [score.eq(score + dot), beat.eq(beat + 1)]
                    with m.If(beat == nb - 1):
                        s = score + dot
                        m.d.comb += [buf.w_en.eq(1), buf.w_addr.eq(j), buf.w_data.eq(s)]
                        m.d.sync += [beat.eq(0), score.eq(0), j.eq(j + 1)]
                        with m.If((j == 0) | (s > top)):
                            m.d.sync += top.eq(s)
                        with m.If(j + 1 == n_keys):
                            m.d.sync += [j.eq(0), total.eq(0), look.eq(0)]
                            m.next = "EXP"
            with m.State("EXP"):
                # read s_j; next cycle its table index; the cycle after, e_j written and summed
                m.d.comb += buf.r_addr.eq(j)
                m.d.sync += [look.eq(Cat(j < n_keys, look[0])), j_exp.eq(j_prob),
                             j_prob.eq(j)]
                with m.If(j < n_keys):
                    m.d.sync += j.eq(j + 1)
                with m.If(look[1]):
                    m.d.comb += [buf.w_en.eq(1), buf.w_addr.eq(j_exp), buf.w_data.eq(rp.data)]
                    m.d.sync += total.eq(total + rp.data)
                with m.If((j == n_keys) & ~look[0] & look[1]):
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
                    m.d.sync += [j.eq(0), prob_valid.eq(0)]
                    m.next = "PROB"
            with m.State("PROB"):
                # read e_j; next cycle p_j written back in its place
                m.d.comb += buf.r_addr.eq(Mux(j < n_keys, j, 0))
                m.d.sync += [prob_valid.eq(j < n_keys), j_prob.eq(j)]
                with m.If(j < n_keys):
                    m.d.sync += j.eq(j + 1)
                with m.If(prob_valid):
                    m.d.comb += [buf.w_en.eq(1), buf.w_addr.eq(j_prob), buf.w_data.eq(prob)]
                with m.If(j == n_keys):
                    m.d.sync += j.eq(0)
                    m.next = "PRIME"
            with m.State("PRIME"):
                # p_0 read for the weighted sum (not in the cycle of its write)
                m.d.comb += buf.r_addr.eq(0)
                m.d.sync += beat.eq(0)
                m.next = "SUM"
            with m.State("SUM"):
                # one V beat per cycle: acc += p_j v; the buffer reads p_j of the row a beat
                # belongs to (the next row's as the current row's last beat is taken)
                p_now = buf.r_data[:SCORE_BITS]
                m.d.comb += v_in.ready.eq(1)
                row_done = v_in.valid & (beat == nb - 1)
                m.d.comb += buf.r_addr.eq(j + row_done)
                with m.If(v_in.valid):
                    # the first row starts the sums (no clearing pass)
                    m.d.comb += a_wr.en.eq(1)
                    for i in range(lanes):
                        prior = Mux(j == 0, 0, a_rd.data[i])
                        m.d.comb += a_wr.data[i].eq(prior + p_now * v_in.payload.codes[i])
                    m.d.sync += beat.eq(beat + 1)
                    with m.If(beat == nb - 1):
                        m.d.sync += [beat.eq(0), j.eq(j + 1)]
                        with m.If(j + 1 == n_keys):
                            m.next = "OUT"
            with m.State("OUT"):
                # the output beats
                m.d.comb += [self.o_outputs.valid.eq(1),
                             self.o_outputs.payload.last.eq(beat == nb - 1)]
                for i in range(lanes):
                    m.d.comb += self.o_outputs.payload.codes[i].eq(out_codes[i])
                with m.If(self.o_outputs.ready):
                    m.d.sync += beat.eq(beat + 1)
                    with m.If(beat == nb - 1):
                        m.d.sync += beat.eq(0)
                        m.next = "QUERY"
        return m
