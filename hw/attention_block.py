"""``AttentionBlock``: the attention half of a decoder layer as one design, composed of the
tested units, bit-exact with the attention half of ``moepim.models.decoder.decoder_forward_int``
(the KV cache on chip, or beyond ``kv_cache_rows`` positions in DRAM) and cycle-exact with ``moepim.spec.timing.attention_block_phases``.

For a window of ``T`` rows ``x`` at positions ``p0 .. p0 + T - 1`` (the KV store already holds
K and V of positions ``0 .. p0 - 1``, written by earlier windows)::

    h = norm(x)                                    NormUnit
    q, k, v = clamp(rq(h Wq)), clamp(rq(h Wk)), clamp(rq(h Wv))   three ProjectionUnits
    q, k = rope(q, pos), rope(k, pos)              two RopeUnits (``rope=True``)
    KV store[pos] = k, v                           on-chip Srams, a row per position
    a_h = attend(q_h, K_g, V_g), g = h // (n_heads / n_kv_heads), keys 0 .. pos
                                                   ``n_attention_units`` AttentionUnits
    x1 = clamp(rq_res1(x) + rq_o(a Wo))            ProjectionUnit (raw) + ResidualUnit

The O projection runs without requantisation (its raw accumulator); the ResidualUnit
requantises it unclamped (``b_mult``/``b_shift`` = ``o_mult``/``o_shift``), as the golden
``x1 = clamp(requant_res1(x) + requant_o(a @ Wo))``.

**Phases.** One after another over the whole window, each reading the previous one's buffer
(``Sram``s: ``x``, ``h``, ``Q``, the KV store, the attention output ``A``, the O accumulators):

1. ``norm``: the ``T * d_model / lanes`` input beats into the NormUnit (and the ``x`` buffer),
   its outputs into the ``h`` buffer;
2. ``qkv_projection``: the ``h`` rows broadcast to the Q, K and V ProjectionUnits (a beat is
   taken when all three are ready); Q into the Q buffer, K and V into the KV store at their
   positions;
3. ``rope`` (``rope=True``): the Q buffer's and the window's K rows through two RopeUnits at
   once, written back in place;
4. ``attention``: ``ceil(n_heads / n_attention_units)`` rounds; round ``rd`` gives unit ``u``
   the head ``rd * U + u`` (the last round may be partial: its units past ``n_heads - 1`` run
   idle, in lockstep, their outputs unused), for the rows in order, all units in lockstep on
   one K and one V read stream of the KV store (keys ``0 .. pos``): a read gives, for one
   (position, beat), the beat of every K/V head, and each unit takes its head's K/V group's
   (``g = h // (n_heads / n_kv_heads)``, any mix of groups in a round); outputs into the ``A``
   buffer;
5. ``o_projection``: the ``A`` rows through the O ProjectionUnit (raw accumulators) into the
   O buffer;
6. ``residual``: ``x`` and O beats (read together) through the ResidualUnit to ``o_rows``.

With ``kv_cache_rows = C`` (not ``None``), two KV DRAM phases run between ``rope`` (the
projections without RoPE) and ``attention``, each skipped when it moves nothing:

* ``kv_spill``: the window's new rows at positions ``max(p0, C) .. p0 + T - 1`` (K rotated)
  read from the store (a reader, as a buffer-fed phase) and written to DRAM, a word a cycle;
* ``kv_fetch``: the rows of positions ``C .. p0 - 1`` read back from DRAM, the read
  requests back to back from the phase's first cycle, each response written into the store
  as it comes; the phase ends the cycle after the last response.

**The KV cache in DRAM** (``kv_cache_rows = C``; ``None``, the default: every position on
chip, no DRAM port). The store stays the window's working buffer (``n_positions`` rows, so a
window's attention reads every key on chip); only positions ``0 .. C - 1`` are kept across
windows (the on-chip KV SRAM), positions ``>= C`` live in DRAM: written once by their window
(``kv_spill``), read back once by every later window (``kv_fetch``), overwriting the store's
rows. A DRAM word is one store word: one (position, K or V, beat) of every K/V head
(:attr:`kv_word_layout`: head ``g``'s ``lanes`` codes at elements ``g lanes ..``), a
position ``W = 2 head_dim / lanes`` words. Address map (:meth:`kv_dram_address`): word ``(p - C) W + b`` holds
K beat ``b`` of position ``p``, ``(p - C) W + head_dim / lanes + b`` its V beat ``b`` (``b``
the head-dim beat; with RoPE ``b = h hb + k``, half ``h``, word ``k``); positions in order,
each its K beats then its V beats, the order of both phases' requests. Counters
``kv_counters`` (cumulative): ``words_written``/``words_read`` (handshakes of writes and of
read responses) and ``rows_written``/``rows_read`` (positions completed).

Buffer layouts: a head vector is ``HB = head_dim / lanes`` words; with RoPE the Q buffer and the
K store are two memories each (the first and the second half of every head vector, ``hb =
HB / 2`` words each), so a RoPE beat reads its pair ``(t_i, t_{i + head_dim/2})`` in one cycle;
the Q and A buffers are one memory (pair) per attention unit. The KV store is banked by K/V
head: a K memory (pair) and a V memory per K/V head, row ``pos * hb + k`` (K) and ``pos * HB +
b`` (V), all banks read at the same address, so one read gives a store word of ``n_kv_heads *
lanes`` codes per (position, beat) for K and one for V; a write (a projection or RoPE output
beat of one K/V head) enables the one bank of its head, i.e. a write granularity of ``lanes``
codes.

**Cycles** (``attention_block_phases``; no input gaps, no back-pressure on ``o_rows``): the
``norm`` phase is ``norm_cycles(T)`` from the first ``i_rows`` handshake; each later phase
starts the cycle after the previous one's last output handshake and costs its units' formula
plus ``ATTENTION_BLOCK_PHASE_OVERHEAD = 1`` cycle (the buffer read before its first beat):
``qkv_projection`` ``max(projection_cycles(T, q), projection_cycles(T, kv))``, ``rope``
``max(rope_cycles(T H), rope_cycles(T G))``, ``attention`` ``ceil(H / U) * sum over rows
of attention_job_cycles(pos + 1)``, ``o_projection`` ``projection_cycles(T, o)``, ``residual``
``residual_cycles(T d_model / lanes)``, each ``+ 1``; with ``kv_cache_rows``, under a DRAM
that takes every request and answers a read the cycle after it (``DramResponder``'s; the
DRAM's own timing is modelled outside the RTL, ``moepim.models.dram``): ``kv_spill`` ``1 +
S W`` (``S`` rows written), ``kv_fetch`` ``F W + KV_DRAM_READ_LATENCY`` (``F`` rows read,
``KV_DRAM_READ_LATENCY = 1``), 0 when they move nothing. The window (first ``i_rows``
handshake to the cycle after the last ``o_rows`` handshake) is their sum.

**Ports.**

* ``i_windows`` (stream, taken while idle): ``n_rows`` (``1 .. max_rows``) and
  ``first_position`` (``p0``; ``p0 + n_rows <= n_positions``). The window's rows are taken
  from the next cycle on.
* ``i_rows``: the ``x`` codes, ``lanes`` per beat, ``d_model / lanes`` beats per row (the
  input's ``last`` is not used); ``o_rows``: the ``x1`` codes, ``last`` on a row's last beat.
* run-time constants, held during a window: ``norm_eps``/``norm_mult``/``norm_shift`` and the
  gains (and biases) written through ``norm_param_we``/``norm_param_addr``/``norm_param_data``
  (``NormUnit``'s parameter port); the RoPE table through ``rope_lut_we``/``rope_lut_addr``/
  ``rope_lut_data`` (both RopeUnits' tables, ``moepim.hw.rope.table_rows``); ``q_mult``/
  ``q_shift``, ``k_*``, ``v_*`` (the projections' requantisations, clamped), ``o_*`` (the O
  requantisation, unclamped, in the residual), ``res_mult``/``res_shift`` (``x``'s),
  ``index_mult``/``index_shift`` (the softmax table index).
* ``bank_base``: the Q, K, V and O banks' cell images are ``bank_base + 0 .. 3``.
* with ``kv_cache_rows``: ``o_kv_dram_req`` (stream: ``write``, ``addr``, ``data`` a KV
  word) and ``i_kv_dram_resp`` (stream: ``data``), the GO cache's protocol (reads answered
  in order, any latency; the phases wait for every handshake); ``kv_counters``
  (``counter_bits`` each).
* ``phase``: the running phase (:data:`PHASES`: 0 idle, then ``norm`` .. ``residual``,
  ``kv_spill``/``kv_fetch`` between ``rope`` and ``attention``).
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from moepim.spec import timing
from moepim.spec.checks import index_bits, need, need_positive
from moepim.spec.tile import TileSpec

from .attention import AttentionUnit
from .expert_engine import SHIFT_BITS
from .matrix_bank import BANK_ID_BITS
from .norm import NORM_SHIFT_BITS, NormUnit, norm_param_layout, norm_row_layout
from .params import check_counter_bits, check_multiplier_bits, check_tile
from .projection import ProjectionUnit
from .residual import ResidualUnit
from .rope import RopeUnit, coef_layout
from .sram import Sram, read_stream

__all__ = ["AttentionBlock", "PHASES", "KV_COUNTERS"]

PHASES = ("idle", "norm", "qkv_projection", "rope", "kv_spill", "kv_fetch", "attention",
          "o_projection", "residual")
IDLE, NORM, QKV, ROPE, SPILL, FETCH, ATTN, OPROJ, RES = range(len(PHASES))
# the KV DRAM counters (``kv_counters``, cumulative over windows)
KV_COUNTERS = ("words_written", "words_read", "rows_written", "rows_read")


def _step(m, counters):
    """Advance nested counters, innermost first (``(signal, count)``; the outermost counts on
    without wrapping); constant counts of 1 are skipped (the counter stays 0)."""
    counters = [(s, n) for s, n in counters[:-1] if not (isinstance(n, int) and n == 1)] \
        + [counters[-1]]
    sig, n = counters[0]
    if len(counters) == 1:
        m.d.sync += sig.eq(sig + 1)
        return
    with m.If(sig == n - 1):
        m.d.sync += sig.eq(0)
        _step(m, counters[1:])
    with m.Else():
        m.d.sync += sig.eq(sig + 1)


class AttentionBlock(wiring.Component):
    def __init__(self, *, tile: TileSpec, d_model: int, n_heads: int, n_kv_heads: int,
                 head_dim: int, lanes: int, act_bits: int = 8, multiplier_bits: int = 15,
                 n_positions: int, n_attention_units: int = 1, center: bool = False,
                 rope: bool = True, max_rows: int | None = None,
                 kv_cache_rows: int | None = None, counter_bits: int = 48):
        check_tile(tile)
        for name, value in (("d_model", d_model), ("n_heads", n_heads),
                            ("n_kv_heads", n_kv_heads), ("head_dim", head_dim),
                            ("lanes", lanes), ("n_positions", n_positions),
                            ("n_attention_units", n_attention_units)):
            need_positive(name, value)
        max_rows = n_positions if max_rows is None else max_rows
        need_positive("max_rows", max_rows)
        need(max_rows <= n_positions, "max_rows", max_rows, f"at most n_positions={n_positions}")
        need(isinstance(act_bits, int) and not isinstance(act_bits, bool)
             and 2 <= act_bits <= 16, "act_bits", act_bits, "an integer from 2 to 16")
        check_multiplier_bits(multiplier_bits)
        need(isinstance(center, bool), "center", center, "True (LayerNorm) or False (RMSNorm)")
        need(isinstance(rope, bool), "rope", rope, "True or False")
        need(d_model % lanes == 0, "lanes", lanes, f"a divisor of d_model={d_model}")
        need(head_dim % (2 * lanes if rope else lanes) == 0, "lanes", lanes,
             f"a divisor of head_dim{'/2' if rope else ''} (head_dim={head_dim})")
        need(n_heads % n_kv_heads == 0, "n_kv_heads", n_kv_heads,
             f"a divisor of n_heads={n_heads}")
        need(n_attention_units <= n_heads, "n_attention_units", n_attention_units,
             f"at most n_heads={n_heads}")
        need(tile.input_bits >= act_bits, "tile", tile,
             f"a tile with input_bits >= act_bits={act_bits} (the projections' inputs)")
        need(kv_cache_rows is None or (isinstance(kv_cache_rows, int)
                                       and not isinstance(kv_cache_rows, bool)
                                       and 0 <= kv_cache_rows < n_positions),
             "kv_cache_rows", kv_cache_rows,
             f"None (every position on chip) or an integer from 0 to n_positions - 1 = "
             f"{n_positions - 1}")
        check_counter_bits(counter_bits)
        self._kv_rows, self._counter_bits = kv_cache_rows, counter_bits
        self._tile, self._d, self._h, self._g, self._hd = tile, d_model, n_heads, n_kv_heads, \
            head_dim
        self._lanes, self._ab, self._mb = lanes, act_bits, multiplier_bits
        self._np, self._u, self._center, self._rope = n_positions, n_attention_units, center, \
            rope
        self._max_rows = max_rows

        def proj(n_in, n_out, requant):
            unit = ProjectionUnit(tile=tile, n_in=n_in, n_out=n_out, lanes=lanes,
                                  multiplier_bits=multiplier_bits, act_bits=act_bits,
                                  requant=requant)
            unit._MustUse__silence = True       # elaborated with the block
            return unit

        self._q = proj(d_model, n_heads * head_dim, True)
        self._k = proj(d_model, n_kv_heads * head_dim, True)
        self._v = proj(d_model, n_kv_heads * head_dim, True)
        self._o = proj(n_heads * head_dim, d_model, False)

        row = stream.Signature(norm_row_layout(act_bits=act_bits, lanes=lanes))
        rq = lambda: {"mult": In(unsigned(multiplier_bits)),                  # noqa: E731
                      "shift": In(unsigned(SHIFT_BITS))}
        ports = {
            "i_windows": In(stream.Signature(data.StructLayout({
                "n_rows": unsigned(index_bits(max_rows + 1)),
                "first_position": unsigned(index_bits(n_positions))}))),
            "i_rows": In(row),
            "o_rows": Out(row),
            "bank_base": In(BANK_ID_BITS),
            "norm_param_we": In(1),
            "norm_param_addr": In(index_bits(d_model // lanes)),
            "norm_param_data": In(norm_param_layout(act_bits=act_bits, lanes=lanes,
                                                    center=center)),
            "norm_eps": In(unsigned(2 * act_bits)),
            "norm_mult": In(unsigned(multiplier_bits)),
            "norm_shift": In(unsigned(NORM_SHIFT_BITS)),
        }
        if rope:
            ports.update({
                "rope_lut_we": In(1),
                "rope_lut_addr": In(unsigned(index_bits(n_positions * self.rope_beats))),
                "rope_lut_data": In(data.ArrayLayout(coef_layout(), lanes))})
        for name in ("q", "k", "v", "o", "res", "index"):
            ports[f"{name}_mult"] = rq()["mult"]
            ports[f"{name}_shift"] = rq()["shift"]
        if kv_cache_rows is not None:
            word = self.kv_word_layout
            c = unsigned(counter_bits)
            ports.update({
                "o_kv_dram_req": Out(stream.Signature(data.StructLayout({
                    "write": 1, "addr": unsigned(self.kv_dram_addr_bits), "data": word}))),
                "i_kv_dram_resp": In(stream.Signature(data.StructLayout({"data": word}))),
                "kv_counters": Out(data.StructLayout({name: c for name in KV_COUNTERS}))})
        ports["phase"] = Out(unsigned(index_bits(len(PHASES))))
        super().__init__(ports)

    tile = property(lambda self: self._tile)
    d_model = property(lambda self: self._d)
    n_heads = property(lambda self: self._h)
    n_kv_heads = property(lambda self: self._g)
    head_dim = property(lambda self: self._hd)
    lanes = property(lambda self: self._lanes)
    act_bits = property(lambda self: self._ab)
    multiplier_bits = property(lambda self: self._mb)
    n_positions = property(lambda self: self._np)
    n_attention_units = property(lambda self: self._u)
    center = property(lambda self: self._center)
    rope = property(lambda self: self._rope)
    max_rows = property(lambda self: self._max_rows)
    beats = property(lambda self: self._d // self._lanes)
    head_beats = property(lambda self: self._hd // self._lanes)
    rope_beats = property(lambda self: timing.rope_beats(self._hd, self._lanes))
    kv_cache_rows = property(lambda self: self._kv_rows,
                             doc="Positions kept on chip across windows (``None``: all).")
    counter_bits = property(lambda self: self._counter_bits)
    kv_dram_words_per_row = property(
        lambda self: timing.kv_dram_words_per_row(self._hd, self._lanes),
        doc="KV DRAM words of one position: its K beats, then its V beats.")

    @property
    def kv_word_layout(self) -> data.ArrayLayout:
        """A KV DRAM word (a KV-store word): ``n_kv_heads * lanes`` signed ``act_bits``
        codes, K/V head ``g``'s ``lanes`` codes at elements ``g lanes ..`` (bits ``g lanes
        act_bits ..``)."""
        return data.ArrayLayout(signed(self._ab), self._g * self._lanes)

    @property
    def kv_dram_words(self) -> int:
        """KV DRAM words the block addresses: positions ``kv_cache_rows .. n_positions - 1``
        (0 with every position on chip)."""
        if self._kv_rows is None:
            return 0
        return (self._np - self._kv_rows) * self.kv_dram_words_per_row

    @property
    def kv_dram_addr_bits(self) -> int:
        return index_bits(max(1, self.kv_dram_words))

    def kv_dram_address(self, position: int, beat: int, value: bool) -> int:
        """The KV DRAM word of ``position`` (``>= kv_cache_rows``), head-dim beat ``beat``
        (``0 .. head_dim / lanes - 1``), K (``value`` False) or V: ``(position -
        kv_cache_rows) * 2 HB + (HB if value else 0) + beat``, ``HB = head_dim / lanes``."""
        need(self._kv_rows is not None and self._kv_rows <= position < self._np, "position",
             position, f"a position in DRAM (kv_cache_rows={self._kv_rows} .. "
             f"{self._np - 1})")
        HB = self.head_beats
        return (position - self._kv_rows) * 2 * HB + (HB if value else 0) + beat

    @property
    def projections(self) -> dict[str, ProjectionUnit]:
        """The Q, K, V and O units (their ``bank``: the cell images ``bank_base + 0 .. 3``)."""
        return {"q": self._q, "k": self._k, "v": self._v, "o": self._o}

    def phase_cycles(self, n_rows: int, first_position: int) -> dict[str, int]:
        """The window's cycles per phase (``moepim.spec.timing.attention_block_phases``)."""
        return timing.attention_block_phases(
            n_rows, first_position, d_model=self._d, n_heads=self._h, n_kv_heads=self._g,
            head_dim=self._hd, lanes=self._lanes, act_bits=self._ab, center=self._center,
            mvm=self._tile.mvm_latency, rope=self._rope, n_attention_units=self._u,
            kv_cache_rows=self._kv_rows)

    def elaborate(self, platform):
        m = Module()
        lanes, ab, U = self._lanes, self._ab, self._u
        H, G, hd = self._h, self._g, self._hd
        B, HB = self.beats, self.head_beats
        NH = 2 if self._rope else 1                 # memories per head vector (halves)
        hb = HB // NH
        R = -(-H // U)                              # attention rounds
        UL = H - (R - 1) * U                        # the last round's busy units
        rep = H // G                                # query heads per K/V head

        def group(rd, u):
            """The K/V head of unit ``u`` in round ``rd`` (0 for an idle unit)."""
            return (rd * U + u) // rep if rd * U + u < H else 0

        def n_units(rd):
            """The busy units of round ``rd`` (a signal): ``U``, ``UL`` in the last round."""
            return U if UL == U else Mux(rd == R - 1, UL, U)
        MR, NP = self._max_rows, self._np
        codes = data.ArrayLayout(signed(ab), lanes)

        # the units
        m.submodules.norm = norm = NormUnit(d_model=self._d, lanes=lanes, act_bits=ab,
                                            center=self._center, multiplier_bits=self._mb)
        q_p, k_p, v_p, o_p = self._q, self._k, self._v, self._o
        m.submodules.q_proj, m.submodules.k_proj = q_p, k_p
        m.submodules.v_proj, m.submodules.o_proj = v_p, o_p
        units = []
        for u in range(U):
            au = AttentionUnit(head_dim=hd, lanes=lanes, act_bits=ab, n_keys_max=NP,
                               multiplier_bits=self._mb)
            m.submodules[f"attention{u}"] = au
            units.append(au)
        m.submodules.residual = res = ResidualUnit(lanes=lanes, a_bits=ab, b_bits=o_p.acc_bits,
                                                   act_bits=ab, multiplier_bits=self._mb)

        # the buffers
        def sram(name, shape, depth):
            mem = Sram(shape=shape, depth=depth)
            m.submodules[name] = mem
            return mem

        xbuf = sram("x_buf", codes, MR * B)
        hbuf = sram("h_buf", codes, MR * B)
        qmem = [[sram(f"q_buf{u}_{h}", codes, MR * R * hb) for h in range(NH)]
                for u in range(U)]
        # the KV store: a bank (K: a pair with RoPE) per K/V head, all read at one address
        kmem = [[sram(f"k_store{g}_{h}", codes, NP * hb) for h in range(NH)] for g in range(G)]
        vmem = [sram(f"v_store{g}", codes, NP * HB) for g in range(G)]
        amem = [sram(f"a_buf{u}", codes, MR * R * HB) for u in range(U)]
        obuf = sram("o_buf", data.ArrayLayout(signed(o_p.acc_bits), lanes), MR * B)

        def pick(sel, words, layout=codes, name="pick"):
            """The word of ``words`` (Views) selected by ``sel``."""
            out = Signal(layout, name=name)
            if len(words) == 1:
                m.d.comb += out.eq(words[0])
                return out
            with m.Switch(sel):
                for i, w in enumerate(words):
                    with m.Case(i):
                        m.d.comb += out.eq(w)
            return out

        # the window and the phase
        phase = self.phase
        n_rows = Signal(range(MR + 1))
        p0 = Signal(range(NP))
        total = Signal(range(MR * B + 1))           # x / h / O beats of the window
        m.d.comb += total.eq(n_rows * B)
        counters = []
        C = self._kv_rows
        if C is not None:
            # the window's KV DRAM rows: spilled (positions max(p0, C) .. p0 + T - 1, from
            # sp_first, at DRAM word sp_base) and fetched (C .. p0 - 1)
            sp_rows, fe_rows = Signal(range(MR + 1)), Signal(range(NP + 1))
            sp_first = Signal(range(NP))
            sp_base = Signal(range(max(1, self.kv_dram_words)))

        def counter(name, top):
            c = Signal(range(top + 1), name=name)
            counters.append(c)
            return c

        def reader(name, ready, more):
            return read_stream(m, name, ready, more)

        win = self.i_windows
        m.d.comb += win.ready.eq(phase == IDLE)

        # ---- norm: input beats into the NormUnit and the x buffer; outputs into h
        in_cnt, h_cnt = counter("in_cnt", MR * B), counter("h_cnt", MR * B)
        accept = (phase == NORM) & (in_cnt < total)
        take_in = Signal()
        m.d.comb += [norm.i_rows.valid.eq(self.i_rows.valid & accept),
                     norm.i_rows.payload.codes.eq(self.i_rows.payload.codes),
                     self.i_rows.ready.eq(norm.i_rows.ready & accept),
                     take_in.eq(self.i_rows.valid & self.i_rows.ready),
                     xbuf.w_en.eq(take_in), xbuf.w_addr.eq(in_cnt),
                     xbuf.w_data.eq(self.i_rows.payload.codes),
                     norm.param_we.eq(self.norm_param_we),
                     norm.param_addr.eq(self.norm_param_addr),
                     norm.param_data.eq(self.norm_param_data),
                     norm.eps.eq(self.norm_eps), norm.mult.eq(self.norm_mult),
                     norm.shift.eq(self.norm_shift),
                     norm.o_rows.ready.eq(1),
                     hbuf.w_en.eq(norm.o_rows.valid), hbuf.w_addr.eq(h_cnt),
                     hbuf.w_data.eq(norm.o_rows.payload.codes)]
        with m.If(take_in):
            m.d.sync += in_cnt.eq(in_cnt + 1)
        with m.If(norm.o_rows.valid):
            m.d.sync += h_cnt.eq(h_cnt + 1)
        norm_done = h_cnt == total

        # ---- Q, K, V projections: h broadcast to the three units
        for name, p in (("q", q_p), ("k", k_p), ("v", v_p)):
            m.d.comb += [p.mult.eq(getattr(self, f"{name}_mult")),
                         p.shift.eq(getattr(self, f"{name}_shift")), p.o_rows.ready.eq(1)]
        for k, p in enumerate((q_p, k_p, v_p, o_p)):
            m.d.comb += p.bank_id.eq(self.bank_base + k)
        run_qkv = (phase == QKV) | ((phase == NORM) & norm_done)
        hr = counter("h_rd", MR * B)
        h_ready = q_p.i_rows.ready & k_p.i_rows.ready & v_p.i_rows.ready
        h_valid, h_adv, h_fetch = reader("h_rd", h_ready, run_qkv & (hr < total))
        m.d.comb += [hbuf.r_en.eq(h_adv), hbuf.r_addr.eq(hr)]
        with m.If(h_fetch):
            m.d.sync += hr.eq(hr + 1)
        for p in (q_p, k_p, v_p):
            m.d.comb += p.i_rows.valid.eq(h_valid & h_ready)
            m.d.comb += [p.i_rows.payload.codes[i].eq(hbuf.r_data[i]) for i in range(lanes)]

        # Q outputs into the Q buffer: beat (row, round, unit, half, k)
        qw_k, qw_h, qw_u = counter("qw_k", hb), counter("qw_h", NH), counter("qw_u", U)
        qw_rd, qw_r = counter("qw_rd", R), counter("qw_r", MR)
        q_out = q_p.o_rows.valid
        with m.If(q_out):
            _step(m, [(qw_k, hb), (qw_h, NH), (qw_u, n_units(qw_rd)), (qw_rd, R),
                      (qw_r, None)])
        # K outputs into the K store at their positions: beat (row, group, half, k)
        kw_k, kw_h, kw_g, kw_r = (counter("kw_k", hb), counter("kw_h", NH), counter("kw_g", G),
                                  counter("kw_r", MR))
        k_out = k_p.o_rows.valid
        with m.If(k_out):
            _step(m, [(kw_k, hb), (kw_h, NH), (kw_g, G), (kw_r, None)])
        # V outputs into the V store at their positions: beat (row, group, b)
        vw_b, vw_g, vw_r = counter("vw_b", HB), counter("vw_g", G), counter("vw_r", MR)
        v_out = v_p.o_rows.valid
        with m.If(v_out):
            _step(m, [(vw_b, HB), (vw_g, G), (vw_r, None)])
        v_writes = []          # the V store's write branches after the projection's
        qkv_done = (qw_r == n_rows) & (kw_r == n_rows) & (vw_r == n_rows)

        # ---- RoPE: Q buffer and the window's K rows, in place
        if self._rope:
            m.submodules.rope_q = rope_q = RopeUnit(head_dim=hd, lanes=lanes, act_bits=ab,
                                                    n_positions=NP)
            m.submodules.rope_k = rope_k = RopeUnit(head_dim=hd, lanes=lanes, act_bits=ab,
                                                    n_positions=NP)
            for r in (rope_q, rope_k):
                m.d.comb += [r.lut_we.eq(self.rope_lut_we), r.lut_addr.eq(self.rope_lut_addr),
                             r.lut_data.eq(self.rope_lut_data), r.o_vectors.ready.eq(1)]
            run_rope = (phase == ROPE) | ((phase == QKV) & qkv_done)
            # Q: vectors (row, round, unit), beat k reads both halves
            rq_k, rq_u, rq_rd, rq_r = (counter("rq_k", hb), counter("rq_u", U),
                                       counter("rq_rd", R), counter("rq_r", MR))
            rq_valid, rq_adv, rq_fetch = reader("rq", rope_q.i_vectors.ready,
                                                run_rope & (rq_r < n_rows))
            rq_addr = (rq_r * R + rq_rd) * hb + rq_k
            rq_u_reg, rq_pos = Signal(range(U)), Signal(range(NP))
            with m.If(rq_fetch):
                m.d.sync += [rq_u_reg.eq(rq_u), rq_pos.eq(p0 + rq_r)]
                _step(m, [(rq_k, hb), (rq_u, n_units(rq_rd)), (rq_rd, R), (rq_r, None)])
            m.d.comb += [rope_q.i_vectors.valid.eq(rq_valid),
                         rope_q.i_vectors.payload.position.eq(rq_pos),
                         rope_q.i_vectors.payload.a.eq(
                             pick(rq_u_reg, [qmem[u][0].r_data for u in range(U)],
                                  name="rq_a")),
                         rope_q.i_vectors.payload.b.eq(
                             pick(rq_u_reg, [qmem[u][1].r_data for u in range(U)],
                                  name="rq_b"))]
            rqw_k, rqw_u, rqw_rd, rqw_r = (counter("rqw_k", hb), counter("rqw_u", U),
                                           counter("rqw_rd", R), counter("rqw_r", MR))
            rq_out = rope_q.o_vectors.valid
            with m.If(rq_out):
                _step(m, [(rqw_k, hb), (rqw_u, n_units(rqw_rd)), (rqw_rd, R),
                          (rqw_r, None)])
            # K: the window's positions, (row, group), beat k reads both halves of every bank
            rk_k, rk_g, rk_r = counter("rk_k", hb), counter("rk_g", G), counter("rk_r", MR)
            rk_valid, rk_adv, rk_fetch = reader("rk", rope_k.i_vectors.ready,
                                                run_rope & (rk_r < n_rows))
            rk_addr = (p0 + rk_r) * hb + rk_k
            rk_pos, rk_g_reg = Signal(range(NP)), Signal(range(G))
            with m.If(rk_fetch):
                m.d.sync += [rk_pos.eq(p0 + rk_r), rk_g_reg.eq(rk_g)]
                _step(m, [(rk_k, hb), (rk_g, G), (rk_r, None)])
            m.d.comb += [rope_k.i_vectors.valid.eq(rk_valid),
                         rope_k.i_vectors.payload.position.eq(rk_pos),
                         rope_k.i_vectors.payload.a.eq(
                             pick(rk_g_reg, [kmem[g][0].r_data for g in range(G)],
                                  name="rk_a")),
                         rope_k.i_vectors.payload.b.eq(
                             pick(rk_g_reg, [kmem[g][1].r_data for g in range(G)],
                                  name="rk_b"))]
            rkw_k, rkw_g, rkw_r = (counter("rkw_k", hb), counter("rkw_g", G),
                                   counter("rkw_r", MR))
            rk_out = rope_k.o_vectors.valid
            with m.If(rk_out):
                _step(m, [(rkw_k, hb), (rkw_g, G), (rkw_r, None)])
            rope_done = (rqw_r == n_rows) & (rkw_r == n_rows)
            prev_attn, prev_attn_done = ROPE, rope_done
        else:
            prev_attn, prev_attn_done = QKV, qkv_done
        pre_end = (phase == prev_attn) & prev_attn_done      # the cycle the phase ends

        # ---- the KV DRAM: the new rows at positions >= C written (kv_spill), then the rows
        # C .. p0 - 1 read back into the store (kv_fetch); a word (position, K/V, half h,
        # beat k): every K/V head's beat (the store word); DRAM word address (pos - C) W +
        # (HB if V) + h hb + k
        k_reads, v_reads, k_writes = [], [], []     # the store ports' branches, later on
        if C is not None:
            W = 2 * HB
            req, resp = self.o_kv_dram_req, self.i_kv_dram_resp
            cnt = self.kv_counters
            # spill: the store read (reader), then the write request
            spill_end = Signal()
            run_spill = (phase == SPILL) | (pre_end & (sp_rows != 0))
            sr_k, sr_h, sr_v, sr_r = (counter("sr_k", hb), counter("sr_h", NH),
                                      counter("sr_v", 2), counter("sr_r", NP))
            sr_valid, sr_adv, sr_fetch = reader("sr", req.ready, run_spill & (sr_r < sp_rows))
            sr_pos = Signal(range(NP))
            m.d.comb += sr_pos.eq(sp_first + sr_r)
            sr_h_reg, sr_v_reg, sr_last = Signal(range(NH)), Signal(), Signal()
            with m.If(sr_fetch):
                m.d.sync += [sr_h_reg.eq(sr_h), sr_v_reg.eq(sr_v),
                             sr_last.eq((sr_v == 1) & (sr_h == NH - 1) & (sr_k == hb - 1))]
                _step(m, [(sr_k, hb), (sr_h, NH), (sr_v, 2), (sr_r, None)])
            k_reads.append((run_spill, sr_adv, sr_pos * hb + sr_k))
            v_reads.append((run_spill, sr_adv, sr_pos * HB + sr_h * hb + sr_k))
            k_word = pick(sr_h_reg, [Cat(*[kmem[g][h].r_data for g in range(G)])
                                     for h in range(NH)], layout=self.kv_word_layout,
                          name="spill_k_word")
            v_word = Signal(self.kv_word_layout, name="spill_v_word")
            m.d.comb += v_word.eq(Cat(*[vmem[g].r_data for g in range(G)]))
            sw = counter("sw", NP * W)              # write handshakes: the next word's index
            sp_words = Signal(range(NP * W + 1))
            m.d.comb += [sp_words.eq(sp_rows * W), spill_end.eq(sw == sp_words)]
            with m.If(sr_valid):
                m.d.comb += [req.valid.eq(1), req.payload.write.eq(1),
                             req.payload.addr.eq(sp_base + sw),
                             req.payload.data.eq(Mux(sr_v_reg, v_word, k_word))]
                with m.If(req.ready):
                    m.d.sync += [sw.eq(sw + 1), cnt.words_written.eq(cnt.words_written + 1)]
                    with m.If(sr_last):
                        m.d.sync += cnt.rows_written.eq(cnt.rows_written + 1)
            spill_done = (phase == SPILL) & spill_end
            # fetch: read requests from the phase's first cycle, responses into the store
            run_fetch = (phase == FETCH) | (pre_end & (sp_rows == 0) & (fe_rows != 0)) | \
                (spill_done & (fe_rows != 0))
            fe_words = Signal(range(NP * W + 1))
            m.d.comb += fe_words.eq(fe_rows * W)
            fq = counter("fq", NP * W)
            with m.If(run_fetch & (fq < fe_words)):
                m.d.comb += [req.valid.eq(1), req.payload.write.eq(0), req.payload.addr.eq(fq)]
                with m.If(req.ready):
                    m.d.sync += fq.eq(fq + 1)
            fr_k, fr_h, fr_v, fr_r = (counter("fr_k", hb), counter("fr_h", NH),
                                      counter("fr_v", 2), counter("fr_r", NP))
            fr = counter("fr", NP * W)              # responses
            m.d.comb += resp.ready.eq(phase == FETCH)
            f_in = resp.valid & resp.ready
            with m.If(f_in):
                m.d.sync += [fr.eq(fr + 1), cnt.words_read.eq(cnt.words_read + 1)]
                with m.If((fr_v == 1) & (fr_h == NH - 1) & (fr_k == hb - 1)):
                    m.d.sync += cnt.rows_read.eq(cnt.rows_read + 1)
                _step(m, [(fr_k, hb), (fr_h, NH), (fr_v, 2), (fr_r, None)])
            fr_pos = Signal(range(NP))
            m.d.comb += fr_pos.eq(C + fr_r)
            wbits = lanes * ab                      # a bank's word in the KV word
            f_words = [resp.payload.data.as_value()[g * wbits:(g + 1) * wbits]
                       for g in range(G)]
            k_writes.append((f_in & (fr_v == 0), fr_h, fr_pos * hb + fr_k, f_words))
            v_writes.append((f_in & (fr_v == 1), fr_pos * HB + fr_h * hb + fr_k, f_words))
            fetch_done = (phase == FETCH) & (fr == fe_words)
            to_attn = (pre_end & (sp_rows == 0) & (fe_rows == 0)) | \
                (spill_done & (fe_rows == 0)) | fetch_done
        else:
            to_attn = pre_end

        # ---- attention: rounds of U heads in lockstep on one K and one V read stream
        run_attn = (phase == ATTN) | to_attn
        u0 = units[0]
        # queries: (round, row), beat (half, k)
        qa_k, qa_h, qa_r, qa_rd = (counter("qa_k", hb), counter("qa_h", NH),
                                   counter("qa_r", MR), counter("qa_rd", R))
        qa_valid, qa_adv, qa_fetch = reader("qa", u0.i_queries.ready, run_attn & (qa_rd < R))
        qa_addr = (qa_r * R + qa_rd) * hb + qa_k
        qa_h_reg, qa_keys = Signal(range(NH)), Signal(range(NP + 1))
        with m.If(qa_fetch):
            m.d.sync += [qa_h_reg.eq(qa_h), qa_keys.eq(p0 + qa_r + 1)]
            _step(m, [(qa_k, hb), (qa_h, NH), (qa_r, n_rows), (qa_rd, None)])
        # keys: (round, row), key j <= pos, beat (half, k): every K/V head's beat at once
        ka_k, ka_h, ka_j, ka_r, ka_rd = (counter("ka_k", hb), counter("ka_h", NH),
                                         counter("ka_j", NP), counter("ka_r", MR),
                                         counter("ka_rd", R))
        ka_valid, ka_adv, ka_fetch = reader("ka", u0.i_keys.ready, run_attn & (ka_rd < R))
        ka_addr = ka_j * hb + ka_k
        ka_h_reg, ka_rd_reg = Signal(range(NH)), Signal(range(R))
        with m.If(ka_fetch):
            m.d.sync += [ka_h_reg.eq(ka_h), ka_rd_reg.eq(ka_rd)]
            _step(m, [(ka_k, hb), (ka_h, NH), (ka_j, p0 + ka_r + 1), (ka_r, n_rows),
                      (ka_rd, None)])
        # values: (round, row), key j <= pos, beat b: every K/V head's beat at once
        va_b, va_j, va_r, va_rd = (counter("va_b", HB), counter("va_j", NP),
                                   counter("va_r", MR), counter("va_rd", R))
        va_valid, va_adv, va_fetch = reader("va", u0.i_values.ready, run_attn & (va_rd < R))
        va_rd_reg = Signal(range(R))
        with m.If(va_fetch):
            m.d.sync += va_rd_reg.eq(va_rd)
            _step(m, [(va_b, HB), (va_j, p0 + va_r + 1), (va_r, n_rows), (va_rd, None)])
        for g in range(G):
            with m.If(v_out):
                m.d.comb += [vmem[g].w_en.eq(vw_g == g),
                             vmem[g].w_addr.eq((p0 + vw_r) * HB + vw_b),
                             vmem[g].w_data.eq(v_p.o_rows.payload.codes)]
            for en, addr, words in v_writes:
                with m.Elif(en):
                    m.d.comb += [vmem[g].w_en.eq(1), vmem[g].w_addr.eq(addr),
                                 vmem[g].w_data.eq(words[g])]
            m.d.comb += [vmem[g].r_en.eq(va_adv), vmem[g].r_addr.eq(va_j * HB + va_b)]
            for run, adv, addr in v_reads:
                with m.If(run & ~run_attn):
                    m.d.comb += [vmem[g].r_en.eq(adv), vmem[g].r_addr.eq(addr)]
        for u, au in enumerate(units):
            # unit u's K/V head in round rd: group(rd, u); its slice of the store word
            k_word = pick(ka_rd_reg * NH + ka_h_reg,
                          [kmem[group(rd, u)][h].r_data for rd in range(R) for h in range(NH)],
                          name=f"k_word{u}")
            v_word = pick(va_rd_reg, [vmem[group(rd, u)].r_data for rd in range(R)],
                          name=f"v_word{u}")
            m.d.comb += [
                au.i_queries.valid.eq(qa_valid),
                au.i_queries.payload.codes.eq(
                    pick(qa_h_reg, [qmem[u][h].r_data for h in range(NH)], name=f"q_word{u}")),
                au.i_queries.payload.n_keys.eq(qa_keys),
                au.i_queries.payload.index_mult.eq(self.index_mult),
                au.i_queries.payload.index_shift.eq(self.index_shift),
                au.i_keys.valid.eq(ka_valid), au.i_keys.payload.codes.eq(k_word),
                au.i_values.valid.eq(va_valid), au.i_values.payload.codes.eq(v_word),
                au.o_outputs.ready.eq(1)]
        # outputs into the A buffer: (round, row), beat b; every unit at once (an idle unit's
        # outputs land in its own buffer's last round, never read)
        aw_b, aw_r, aw_rd = counter("aw_b", HB), counter("aw_r", MR), counter("aw_rd", R)
        a_out = u0.o_outputs.valid
        for u, au in enumerate(units):
            m.d.comb += [amem[u].w_en.eq(a_out),
                         amem[u].w_addr.eq((aw_r * R + aw_rd) * HB + aw_b),
                         amem[u].w_data.eq(au.o_outputs.payload.codes)]
        with m.If(a_out):
            _step(m, [(aw_b, HB), (aw_r, n_rows), (aw_rd, None)])
        attn_done = aw_rd == R

        # ---- the Q buffer's and the K store's ports: projection / RoPE / attention
        for u in range(U):
            for h in range(NH):
                mem = qmem[u][h]
                with m.If(q_out):
                    m.d.comb += [mem.w_en.eq((qw_u == u) & (qw_h == h)),
                                 mem.w_addr.eq((qw_r * R + qw_rd) * hb + qw_k),
                                 mem.w_data.eq(q_p.o_rows.payload.codes)]
                if self._rope:
                    with m.Elif(rq_out):
                        m.d.comb += [mem.w_en.eq(rqw_u == u),
                                     mem.w_addr.eq((rqw_r * R + rqw_rd) * hb + rqw_k),
                                     mem.w_data.eq(rope_q.o_vectors.payload.a if h == 0
                                                   else rope_q.o_vectors.payload.b)]
                m.d.comb += [mem.r_en.eq(qa_adv), mem.r_addr.eq(qa_addr)]
                if self._rope:
                    with m.If(run_rope & ~run_attn):
                        m.d.comb += [mem.r_en.eq(rq_adv), mem.r_addr.eq(rq_addr)]
        for g in range(G):
            for h in range(NH):
                mem = kmem[g][h]
                with m.If(k_out):
                    m.d.comb += [mem.w_en.eq((kw_g == g) & (kw_h == h)),
                                 mem.w_addr.eq((p0 + kw_r) * hb + kw_k),
                                 mem.w_data.eq(k_p.o_rows.payload.codes)]
                if self._rope:
                    with m.Elif(rk_out):
                        m.d.comb += [mem.w_en.eq(rkw_g == g),
                                     mem.w_addr.eq((p0 + rkw_r) * hb + rkw_k),
                                     mem.w_data.eq(rope_k.o_vectors.payload.a if h == 0
                                                   else rope_k.o_vectors.payload.b)]
                for en, wh, addr, words in k_writes:
                    with m.Elif(en):
                        m.d.comb += [mem.w_en.eq(wh == h), mem.w_addr.eq(addr),
                                     mem.w_data.eq(words[g])]
                m.d.comb += [mem.r_en.eq(ka_adv), mem.r_addr.eq(ka_addr)]
                if self._rope:
                    with m.If(run_rope & ~run_attn):
                        m.d.comb += [mem.r_en.eq(rk_adv), mem.r_addr.eq(rk_addr)]
                for run, adv, addr in k_reads:
                    with m.If(run & ~run_attn):
                        m.d.comb += [mem.r_en.eq(adv), mem.r_addr.eq(addr)]

        # ---- O projection: A rows (row, head = round * U + unit, beat b; the busy units),
        # raw accumulators
        run_oproj = (phase == OPROJ) | ((phase == ATTN) & attn_done)
        or_b, or_u, or_rd, or_r = (counter("or_b", HB), counter("or_u", U), counter("or_rd", R),
                                   counter("or_r", MR))
        or_valid, or_adv, or_fetch = reader("or", o_p.i_rows.ready,
                                            run_oproj & (or_r < n_rows))
        or_u_reg = Signal(range(U))
        with m.If(or_fetch):
            m.d.sync += or_u_reg.eq(or_u)
            _step(m, [(or_b, HB), (or_u, n_units(or_rd)), (or_rd, R), (or_r, None)])
        for u in range(U):
            m.d.comb += [amem[u].r_en.eq(or_adv),
                         amem[u].r_addr.eq((or_r * R + or_rd) * HB + or_b)]
        a_word = pick(or_u_reg, [amem[u].r_data for u in range(U)], name="a_word")
        m.d.comb += [o_p.i_rows.valid.eq(or_valid),
                     o_p.o_rows.ready.eq(1)]
        m.d.comb += [o_p.i_rows.payload.codes[i].eq(a_word[i]) for i in range(lanes)]
        ow = counter("ow", MR * B)
        with m.If(o_p.o_rows.valid):
            m.d.sync += ow.eq(ow + 1)
        m.d.comb += [obuf.w_en.eq(o_p.o_rows.valid), obuf.w_addr.eq(ow),
                     obuf.w_data.eq(o_p.o_rows.payload.codes)]
        oproj_done = ow == total

        # ---- the first residual: x and O read together, out on o_rows
        run_res = (phase == RES) | ((phase == OPROJ) & oproj_done)
        rr, rr_b = counter("rr", MR * B), counter("rr_b", B)
        rr_valid, rr_adv, rr_fetch = reader("rr", res.i_pairs.ready, run_res & (rr < total))
        rr_last = Signal()
        with m.If(rr_fetch):
            m.d.sync += [rr_last.eq(rr_b == B - 1), rr.eq(rr + 1),
                         rr_b.eq(Mux(rr_b == B - 1, 0, rr_b + 1))]
        for mem in (xbuf, obuf):
            m.d.comb += [mem.r_en.eq(rr_adv), mem.r_addr.eq(rr)]
        m.d.comb += [res.a_mult.eq(self.res_mult), res.a_shift.eq(self.res_shift),
                     res.b_mult.eq(self.o_mult), res.b_shift.eq(self.o_shift),
                     res.i_pairs.valid.eq(rr_valid), res.i_pairs.payload.last.eq(rr_last),
                     res.i_pairs.payload.a.eq(xbuf.r_data),
                     res.i_pairs.payload.b.eq(obuf.r_data),
                     self.o_rows.valid.eq(res.o_sums.valid),
                     self.o_rows.payload.eq(res.o_sums.payload),
                     res.o_sums.ready.eq(self.o_rows.ready)]
        out_cnt = counter("out_cnt", MR * B)
        with m.If(self.o_rows.valid & self.o_rows.ready):
            m.d.sync += out_cnt.eq(out_cnt + 1)
        res_done = out_cnt == total

        # ---- the phase sequence
        with m.Switch(phase):
            with m.Case(IDLE):
                with m.If(win.valid):
                    m.d.sync += [n_rows.eq(win.payload.n_rows),
                                 p0.eq(win.payload.first_position), phase.eq(NORM)]
                    m.d.sync += [c.eq(0) for c in counters]
                    if C is not None:
                        wp0, wn = win.payload.first_position, win.payload.n_rows
                        first = Mux(wp0 > C, wp0, C)
                        m.d.sync += [sp_first.eq(first),
                                     sp_rows.eq(Mux(wp0 + wn > first, wp0 + wn - first, 0)),
                                     fe_rows.eq(Mux(wp0 > C, wp0 - C, 0)),
                                     sp_base.eq((first - C) * W)]
            with m.Case(NORM):
                with m.If(norm_done):
                    m.d.sync += phase.eq(QKV)
            after_rope = ATTN if C is None else \
                Mux(sp_rows != 0, SPILL, Mux(fe_rows != 0, FETCH, ATTN))
            with m.Case(QKV):
                with m.If(qkv_done):
                    m.d.sync += phase.eq(ROPE if self._rope else after_rope)
            if self._rope:
                with m.Case(ROPE):
                    with m.If(rope_done):
                        m.d.sync += phase.eq(after_rope)
            if C is not None:
                with m.Case(SPILL):
                    with m.If(spill_end):
                        m.d.sync += phase.eq(Mux(fe_rows != 0, FETCH, ATTN))
                with m.Case(FETCH):
                    with m.If(fetch_done):
                        m.d.sync += phase.eq(ATTN)
            with m.Case(ATTN):
                with m.If(attn_done):
                    m.d.sync += phase.eq(OPROJ)
            with m.Case(OPROJ):
                with m.If(oproj_done):
                    m.d.sync += phase.eq(RES)
            with m.Case(RES):
                with m.If(res_done):
                    m.d.sync += phase.eq(IDLE)
        return m
