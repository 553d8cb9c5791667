"""``RopeUnit``: rotary position embedding on integer codes, bit-exact with
``moepim.models.decoder._rope_int``.

For a head vector ``t`` of ``head_dim`` codes at position ``p``, each pair
``(a, b) = (t_i, t_{i + head_dim/2})`` (the rotate_half convention) becomes::

    a' = clamp((a cos - b sin + 2**13) >> 14)      # ROPE_FRAC_BITS = 14: Q1.14 tables
    b' = clamp((a sin + b cos + 2**13) >> 14)

with ``cos, sin = rope_tables(cfg, n_positions)[:, p, i]`` and the symmetric clamp to
``+-(2**(act_bits-1) - 1)``.

**Beats.** A vector is ``beats = head_dim / (2 lanes)`` beats on ``i_vectors``; beat ``k``
carries ``position`` and ``lanes`` pairs: ``a[j] = t[k lanes + j]`` (first half) and
``b[j] = t[head_dim/2 + k lanes + j]`` (second half), ``j < lanes``. The pair index is implied:
a beat counter counts the beats taken modulo ``beats`` (the first beat after reset is beat 0 of
a vector; every vector must be sent whole). ``o_vectors`` carries the rotated ``a``, ``b`` of the
same beat, its ``position`` and ``last`` on the vector's final beat. ``position`` must be below
``n_positions``.

**Tables.** An on-chip memory (``amaranth.lib.memory.Memory``, ``n_positions * beats`` rows),
row ``p * beats + k`` holding the ``lanes`` ``(cos, sin)`` entries of position ``p``, beat
``k`` (``COEF_BITS``-bit signed Q1.14 each, lane ``j``'s ``cos`` at bits ``32 j``, its ``sin``
at ``32 j + 16``), written one row per cycle through ``lut_we``/``lut_addr``/``lut_data``
before use (:func:`table_rows` lays them out).

* **Latency**: ``moepim.spec.timing.rope_latency() = 3`` cycles from a beat's handshake to its
  ``o_vectors.valid`` (the table read, the four products per pair, the rounding sums and the
  clamp). ``V`` vectors without gaps or back-pressure: ``rope_cycles(V, head_dim, lanes) =
  V * beats + 3``.
* **Throughput**: one beat (``lanes`` pairs) per cycle: a vector every ``beats`` cycles.
* **Back-pressure**: a three-register pipeline, each stage loading when it is empty or the
  next one takes its beat (``ready_k = ~valid_k | ready_{k+1}``; the table's read port is
  enabled with stage 1's load, so its data holds while stage 1 is stalled): bubbles close up,
  and ``i_vectors.ready`` drops only when all stages hold beats and ``o_vectors.ready`` is low.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from moepim.spec import timing
from moepim.spec.checks import index_bits, need, need_positive
from moepim.spec.numerics import ROPE_FRAC_BITS

from .params import clamp_symmetric

__all__ = ["RopeUnit", "COEF_BITS", "table_rows"]

COEF_BITS = ROPE_FRAC_BITS + 2          # Q1.14 entries in [-2**14, 2**14], signed


def coef_layout():
    return data.StructLayout({"cos": signed(COEF_BITS), "sin": signed(COEF_BITS)})


def table_rows(cos, sin, *, lanes: int) -> list[tuple[int, list[int]]]:
    """The table rows of ``cos``, ``sin`` (positions x head_dim/2, as ``rope_tables``):
    ``(address, [cos_0, sin_0, cos_1, sin_1, ...])`` per row, the row's ``lanes`` entries
    interleaved (``COEF_BITS`` each, lane 0 lowest: pack with
    ``moepim.testbenches.bits.pack_array(values, COEF_BITS)``)."""
    rows = []
    for p, (c_row, s_row) in enumerate(zip(cos, sin)):
        beats = len(c_row) // lanes
        for k in range(beats):
            values = []
            for j in range(lanes):
                values += [int(c_row[k * lanes + j]), int(s_row[k * lanes + j])]
            rows.append((p * beats + k, values))
    return rows


class RopeUnit(wiring.Component):
    def __init__(self, *, head_dim: int, lanes: int, act_bits: int, n_positions: int):
        for name, value in (("head_dim", head_dim), ("lanes", lanes), ("act_bits", act_bits),
                            ("n_positions", n_positions)):
            need_positive(name, value)
        need(head_dim % 2 == 0, "head_dim", head_dim, "an even integer (pairs i, i + head_dim/2)")
        need((head_dim // 2) % lanes == 0, "lanes", lanes,
             f"a divisor of head_dim/2 = {head_dim // 2}")
        need(act_bits >= 2, "act_bits", act_bits, "an integer >= 2 (signed codes)")
        self._head_dim, self._lanes, self._act_bits = head_dim, lanes, act_bits
        self._n_positions = n_positions
        self._beats = timing.rope_beats(head_dim, lanes)
        codes = data.ArrayLayout(signed(act_bits), lanes)
        pos = unsigned(index_bits(n_positions))
        super().__init__({
            "lut_we": In(1),
            "lut_addr": In(unsigned(index_bits(self.table_depth))),
            "lut_data": In(data.ArrayLayout(coef_layout(), lanes)),
            "i_vectors": In(stream.Signature(data.StructLayout({
                "position": pos, "a": codes, "b": codes}))),
            "o_vectors": Out(stream.Signature(data.StructLayout({
                "position": pos, "a": codes, "b": codes, "last": 1}))),
        })

    head_dim = property(lambda self: self._head_dim)
    lanes = property(lambda self: self._lanes)
    act_bits = property(lambda self: self._act_bits)
    n_positions = property(lambda self: self._n_positions)
    beats = property(lambda self: self._beats)
    table_depth = property(lambda self: self._n_positions * self._beats)

    def latency(self) -> int:
        """Cycles from a beat's handshake to its ``o_vectors.valid``."""
        return timing.rope_latency()

    def elaborate(self, platform):
        m = Module()
        lanes, beats, ab = self._lanes, self._beats, self._act_bits
        inp, out = self.i_vectors, self.o_vectors

        # the cos/sin table and its write port
        m.submodules.table = table = memory.Memory(
            shape=data.ArrayLayout(coef_layout(), lanes), depth=self.table_depth, init=[])
        wp = table.write_port()
        m.d.comb += [wp.en.eq(self.lut_we), wp.addr.eq(self.lut_addr),
                     wp.data.eq(self.lut_data)]
        rp = table.read_port()

        # the pipeline's handshakes: a stage loads when empty or when its beat moves on
        valid1, valid2 = Signal(), Signal()
        ready3 = ~out.valid | out.ready
        ready2 = ~valid2 | ready3
        ready1 = ~valid1 | ready2
        m.d.comb += inp.ready.eq(ready1)

        # the beat counter: the pair index of the beat on offer
        beat = Signal(range(beats))
        with m.If(inp.valid & ready1):
            m.d.sync += beat.eq(Mux(beat == beats - 1, 0, beat + 1))

        # stage 1: the table row read (its data valid while stage 1 holds the beat), codes
        a1 = Signal(data.ArrayLayout(signed(ab), lanes))
        b1 = Signal(data.ArrayLayout(signed(ab), lanes))
        pos1, last1 = Signal.like(inp.payload.position), Signal()
        m.d.comb += [rp.en.eq(ready1), rp.addr.eq(inp.payload.position * beats + beat)]
        with m.If(ready1):
            m.d.sync += valid1.eq(inp.valid)
            with m.If(inp.valid):
                m.d.sync += [a1.eq(inp.payload.a), b1.eq(inp.payload.b),
                             pos1.eq(inp.payload.position), last1.eq(beat == beats - 1)]

        # stage 2: the four products of each pair
        prod = signed(ab + COEF_BITS)
        ac = [Signal(prod, name=f"ac{j}") for j in range(lanes)]
        bs = [Signal(prod, name=f"bs{j}") for j in range(lanes)]
        as_ = [Signal(prod, name=f"as{j}") for j in range(lanes)]
        bc = [Signal(prod, name=f"bc{j}") for j in range(lanes)]
        pos2, last2 = Signal.like(pos1), Signal()
        with m.If(ready2):
            m.d.sync += valid2.eq(valid1)
            with m.If(valid1):
                m.d.sync += [pos2.eq(pos1), last2.eq(last1)]
                for j in range(lanes):
                    c, s = rp.data[j].cos, rp.data[j].sin
                    m.d.sync += [ac[j].eq(a1[j] * c), bs[j].eq(b1[j] * s),
                                 as_[j].eq(a1[j] * s), bc[j].eq(b1[j] * c)]

        # stage 3: the rounding sums, shifted and clamped, into the output register
        rnd = 1 << (ROPE_FRAC_BITS - 1)
        with m.If(ready3):
            m.d.sync += out.valid.eq(valid2)
            with m.If(valid2):
                m.d.sync += [out.payload.position.eq(pos2), out.payload.last.eq(last2)]
                for j in range(lanes):
                    m.d.sync += [
                        out.payload.a[j].eq(clamp_symmetric(
                            (ac[j] - bs[j] + rnd) >> ROPE_FRAC_BITS, ab)),
                        out.payload.b[j].eq(clamp_symmetric(
                            (as_[j] + bc[j] + rnd) >> ROPE_FRAC_BITS, ab))]
        return m
