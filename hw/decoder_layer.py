"""``DecoderLayer``: a whole decoder layer as one design, composed of the tested blocks,
bit-exact with ``moepim.models.decoder.decoder_forward_int`` (the KV cache on chip, the
routing on the MoE layer's front end) and cycle-exact with
``moepim.spec.timing.decoder_layer_phases``.

For a window of ``T`` rows ``x`` at positions ``p0 .. p0 + T - 1``::

    x1 = attention half(x)                       AttentionBlock (its norm .. first residual)
    h2 = norm(x1)                                a second NormUnit (the MoE norm)
    moe = MoE layer(h2)                          MoELayerAccelerator (routing, plan, experts)
    y = clamp(rq_x1(x1) + rq_moe(moe))           ResidualUnit (the second residual)

Composition: the ``AttentionBlock`` (:attr:`attention`) writes its ``x1`` rows into the
``x1`` buffer (an ``Sram`` of ``max_rows * d_model / lanes`` words of ``lanes`` codes); the
buffer feeds the MoE norm (a ``NormUnit`` of the attention norm's kind, ``center``), whose
rows go into the ``MoELayerAccelerator`` (:attr:`moe`) as
its window's tokens (token = row within the window, block = beat); the MoE layer's outputs
leave together with the buffer's ``x1`` rows through the ``ResidualUnit`` to ``o_rows``.
The MoE layer's routing, plan and table ports are the top's, for the host; the layer's own
controller only sequences the phases and addresses the ``x1`` buffer.

**Phases** (``phase``, :data:`PHASES`), one after another over the window:

1. .. 8. the attention block's (``attn_norm`` .. ``residual``, its KV DRAM phases
   ``kv_spill``/``kv_fetch`` with ``kv_cache_rows``; ``phase`` shows the block's);
9. ``moe_norm``: the ``x1`` buffer's rows through the MoE norm into the MoE layer's
   ``i_tokens`` (``last`` on the window's final beat);
10. ``route``: the MoE layer's routing (``route_mode`` != ``MODE_HOST``): from the cycle
   after the last token beat to the cycle after the closing route beat's handshake
   (skipped when the host routes);
11. ``jobs``: the plan's beats into the MoE layer (``i_jobs``), to the cycle after the last;
12. ``experts``: the MoE layer's timestamps (its scheduler's settle included);
13. ``moe_residual``: the MoE layer's read-out (its output buffer's first read, then a beat
    per cycle), each beat paired with the ``x1`` buffer's beat (read ahead) through the
    ResidualUnit to ``o_rows``.

**Cycles** (``decoder_layer_phases``; no input gaps, no back-pressure on ``o_rows`` or
``o_routes``, the plan offered from the cycle after the closing route beat): the attention
block's phases (``attention_block_phases`` with ``kv_cache_rows``); ``moe_norm`` ``norm_cycles(T) + 1`` (the buffer
read before the first beat, ``DECODER_LAYER_PHASE_OVERHEAD``), ``route`` the MoE layer's
``LayerTiming.route_cycles`` (0 when the host routes), ``jobs`` ``max(1, J)``, ``experts``
``LayerTiming.compute_cycles`` plus the scheduler's settle (``LayerTiming.settle_cycles``),
``moe_residual`` ``residual_cycles(T d_model / lanes) + 1`` (the output buffer's read). The
window (first ``i_rows`` handshake to the cycle after the last ``o_rows`` handshake) is their
sum. ``phase`` shows a phase from the cycle after its first (as ``AttentionBlock``'s: a
buffer-fed phase issues its first read in the cycle its predecessor ends).

**Ports.**

* ``i_windows`` (taken while idle): ``n_rows`` (``1 .. max_rows``), ``first_position``;
  ``i_rows``: the ``x`` codes, ``lanes`` per beat; ``o_rows``: the ``y`` codes, ``last`` on a
  row's last beat.
* the attention block's run-time constants and tables, by its names (``norm_*``, ``rope_lut_*``,
  ``q_*`` .. ``o_*``, ``res_*``, ``index_*``);
* the MoE norm's: ``moe_norm_param_we``/``_addr``/``_data``, ``moe_norm_eps``/``_mult``/
  ``_shift``; the second residual's: ``res2_x1_mult``/``_shift`` (``x1``'s requantisation)
  and ``res2_moe_mult``/``_shift`` (the MoE output's), all held during a window;
* the MoE layer's host ports, by its names: ``route_mode``, ``route_cap``, ``go_insert``,
  ``gate_index_*`` (and ``gate_hidden_*``, ``gate_shared_*``, ``i_gate_lut``), ``o_routes``,
  ``o_dram_req``/``i_dram_resp`` (GO cache; with ``kv_cache_rows`` the layer's one DRAM
  port, below), ``i_lut`` (SwiGLU), ``i_jobs``,
  ``combine_mult``/``_shift``, ``counters``; its window protocol (``MoELayerAccelerator``'s
  docstring) with the tokens supplied on chip: the host holds ``route_mode``/``route_cap``/
  ``go_insert`` for the window, takes the routes, then offers the plan on ``i_jobs``;
* ``phase``: the running phase (0 idle).

**The DRAM port** (``kv_cache_rows`` in ``attention``, the attention block's KV cache in
DRAM): one port for the layer, ``o_dram_req`` (``write``, ``addr``, ``data``) and
``i_dram_resp`` (``data``), the GO cache's protocol. The KV cache's requests come only while
the attention block runs (its ``kv_spill``/``kv_fetch`` phases), the GO cache's only in the
MoE layer's routing, and each phase ends after its last response, so the port is muxed by
the controller's state (the attention block's while it runs, else the MoE layer's) with no
arbitration. Address map: the GO region at ``0 .. 2^a - 1`` (``a`` the GO cache's address
bits; its DRAM row ``n`` at ``n``), the KV region from :attr:`kv_dram_base` ``= 2^a`` (0
without a GO cache), word ``kv_dram_base + AttentionBlock.kv_dram_address(p, b, v)``;
``data`` is ``max(GO row bits, KV word bits)`` wide (a GO row ``n_experts * score_bits``, a
KV word ``n_kv_heads * lanes * act_bits``), the narrower zero-extended on writes and
truncated on read responses. The attention block's ``kv_counters`` pass through.

Cell images: the MoE layer's banks are ``0 .. gate_bank_id`` (its groups', then its gate's),
the attention block's Q, K, V and O banks :attr:`attention_bank_base` ``+ 0 .. 3`` after them.
Export: the MoE layer's engines are instantiated by name (:attr:`verilog_modules`); under
Amaranth's simulator they are elaborated in place (``moe.group_engines``).
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from moepim.spec import timing
from moepim.spec.checks import index_bits, need
from moepim.spec.layer import LayerSpec
from moepim.spec.tile import TileSpec

from .attention_block import AttentionBlock
from .expert_engine import SHIFT_BITS
from .moe_layer import MoELayerAccelerator
from .norm import NORM_SHIFT_BITS, NormUnit, norm_param_layout, norm_row_layout
from .params import check_tile
from .residual import ResidualUnit
from .route_unit import MODE_HOST
from .sram import Sram, read_stream

__all__ = ["DecoderLayer", "PHASES"]

PHASES = ("idle", "attn_norm", "qkv_projection", "rope", "kv_spill", "kv_fetch", "attention",
          "o_projection", "residual", "moe_norm", "route", "jobs", "experts", "moe_residual")
(IDLE, _A_NORM, _A_QKV, _A_ROPE, _A_SPILL, _A_FETCH, _A_ATTN, _A_OPROJ, _A_RES, MNORM, ROUTE,
 JOBS, EXPERTS, RES2) = range(len(PHASES))
ATTN = _A_NORM          # the controller's state while the attention block runs

# ports of the blocks that are the top's own (the rest pass through by name)
_ATTENTION_INTERNAL = ("i_windows", "i_rows", "o_rows", "bank_base", "phase",
                       "o_kv_dram_req", "i_kv_dram_resp")
_MOE_INTERNAL = ("i_tokens", "o_outputs")
_DRAM_PORTS = ("o_dram_req", "i_dram_resp")     # the layer's one DRAM port (KV and GO)


def _dram_widths(member) -> tuple[int, int]:
    """``(address bits, data bits)`` of a DRAM request stream's signature member."""
    layout = member.signature.members["payload"].shape
    return layout["addr"].width, layout["data"].width


class DecoderLayer(wiring.Component):
    def __init__(self, *, layer: LayerSpec, tile: TileSpec, attention: dict,
                 counter_bits: int = 48):
        need(isinstance(layer, LayerSpec), "layer", layer,
             "a moepim.spec.layer.LayerSpec (the MoE layer's)")
        check_tile(tile)
        need(isinstance(attention, dict), "attention", attention,
             "a dict of AttentionBlock's arguments besides tile")
        att = dict(attention)
        for name in ("d_model", "lanes"):
            need(att.get(name, getattr(layer, name)) == getattr(layer, name), name,
                 att.get(name), f"the MoE layer's {name}={getattr(layer, name)}")
        need(att.get("multiplier_bits", layer.multiplier_bits) == layer.multiplier_bits,
             "multiplier_bits", att.get("multiplier_bits"),
             f"the MoE layer's multiplier_bits={layer.multiplier_bits}")
        need(att.get("act_bits", tile.input_bits) == tile.input_bits, "act_bits",
             att.get("act_bits"), f"the tile's input_bits={tile.input_bits} (the MoE layer's "
             "codes)")
        need("tile" not in att, "attention", attention, "no 'tile' (given as tile=)")
        att.update(d_model=layer.d_model, lanes=layer.lanes, act_bits=tile.input_bits,
                   multiplier_bits=layer.multiplier_bits)
        n_positions, max_rows = att.get("n_positions"), att.get("max_rows")
        if max_rows is None and isinstance(n_positions, int):
            max_rows = min(n_positions, layer.n_tokens)
        need(max_rows is None or (isinstance(max_rows, int) and max_rows <= layer.n_tokens),
             "max_rows", max_rows, f"at most the MoE layer's n_tokens={layer.n_tokens} (a "
             "window's rows are its tokens)")
        att["max_rows"] = max_rows
        att.setdefault("counter_bits", counter_bits)
        self._attention = AttentionBlock(tile=tile, **att)
        self._attention._MustUse__silence = True        # elaborated with the layer
        self._moe = MoELayerAccelerator(layer=layer, tile=tile, counter_bits=counter_bits)
        self._moe._MustUse__silence = True
        self._spec, self._tile = layer, tile
        self._max_rows = self._attention.max_rows
        ab, lanes, mb = tile.input_bits, layer.lanes, layer.multiplier_bits
        ru = self._moe.route_unit
        self._bank_base = self._moe.gate_bank_id + (len(ru.banks) if ru is not None else 0)

        a_ports = {n: m for n, m in self._attention.signature.members.items()
                   if n not in _ATTENTION_INTERNAL}
        # the DRAM port: the GO cache's alone, or the GO cache's and the KV cache's muxed by
        # phase (GO region at 0, KV region from kv_dram_base)
        moe_sig = self._moe.signature.members
        self._kv = self._attention.kv_cache_rows is not None
        self._go = "o_dram_req" in moe_sig
        go_addr, go_data = _dram_widths(moe_sig["o_dram_req"]) if self._go else (0, 0)
        self._kv_dram_base = (1 << go_addr) if self._go else 0
        dram = {}
        if self._kv:
            kv_data = data.Layout.cast(self._attention.kv_word_layout).size
            width = max(go_data, kv_data)
            addr = index_bits(self._kv_dram_base + self._attention.kv_dram_words)
            dram = {"o_dram_req": Out(stream.Signature(data.StructLayout({
                        "write": 1, "addr": unsigned(addr), "data": unsigned(width)}))),
                    "i_dram_resp": In(stream.Signature(data.StructLayout({
                        "data": unsigned(width)})))}
        m_ports = {n: m for n, m in moe_sig.items()
                   if n not in _MOE_INTERNAL and not (self._kv and n in _DRAM_PORTS)}
        row = stream.Signature(norm_row_layout(act_bits=ab, lanes=lanes))
        att_sig = self._attention.signature.members
        super().__init__({
            "i_windows": att_sig["i_windows"],
            "i_rows": att_sig["i_rows"],
            "o_rows": Out(row),
            **a_ports,
            "moe_norm_param_we": In(1),
            "moe_norm_param_addr": In(index_bits(layer.blocks)),
            "moe_norm_param_data": In(norm_param_layout(act_bits=ab, lanes=lanes,
                                                        center=self._attention.center)),
            "moe_norm_eps": In(unsigned(2 * ab)),
            "moe_norm_mult": In(unsigned(mb)),
            "moe_norm_shift": In(unsigned(NORM_SHIFT_BITS)),
            "res2_x1_mult": In(unsigned(mb)),
            "res2_x1_shift": In(unsigned(SHIFT_BITS)),
            "res2_moe_mult": In(unsigned(mb)),
            "res2_moe_shift": In(unsigned(SHIFT_BITS)),
            **m_ports,
            **dram,
            "phase": Out(unsigned(index_bits(len(PHASES)))),
        })

    attention = property(lambda self: self._attention,
                         doc="The ``AttentionBlock`` (its projections' banks: "
                         ":attr:`attention_bank_base` + 0 .. 3).")
    moe = property(lambda self: self._moe, doc="The ``MoELayerAccelerator``.")
    spec = property(lambda self: self._spec)
    tile = property(lambda self: self._tile)
    max_rows = property(lambda self: self._max_rows)
    attention_bank_base = property(lambda self: self._bank_base,
                                   doc="The attention block's first cell image: after the "
                                   "MoE layer's groups' and gate's banks.")
    kv_dram_base = property(lambda self: self._kv_dram_base,
                            doc="The KV region's first DRAM word address on ``o_dram_req`` "
                            "(after the GO cache's region; 0 without a GO cache).")
    verilog_modules = property(lambda self: self._moe.verilog_modules,
                               doc="Modules instantiated by name, exported beside the top "
                               "(the MoE layer's expert engines).")

    def attention_phases(self, n_rows: int, first_position: int) -> dict[str, int]:
        """The attention block's cycles per phase (``attention_block_phases``)."""
        return self._attention.phase_cycles(n_rows, first_position)

    def phase_cycles(self, n_rows: int, first_position: int, *, route: int | None,
                     n_jobs: int, compute: int, settle: int = 0) -> dict[str, int]:
        """The window's cycles per phase (``moepim.spec.timing.decoder_layer_phases``);
        ``route``/``compute``/``settle``: the MoE layer's ``LayerTiming`` formulas of the
        window (``route`` ``None``: the host routes)."""
        a = self._attention
        return timing.decoder_layer_phases(
            n_rows, first_position, d_model=a.d_model, n_heads=a.n_heads,
            n_kv_heads=a.n_kv_heads, head_dim=a.head_dim, lanes=a.lanes, act_bits=a.act_bits,
            center=a.center, mvm=self._tile.mvm_latency, rope=a.rope,
            n_attention_units=a.n_attention_units, route=route, n_jobs=n_jobs,
            compute=compute, settle=settle, kv_cache_rows=a.kv_cache_rows)

    def elaborate(self, platform):
        m = Module()
        ab_, moe = self._attention, self._moe
        m.submodules.attention = ab_
        m.submodules.moe = moe
        lanes, act, mb = self._spec.lanes, self._tile.input_bits, self._spec.multiplier_bits
        B, MR = self._spec.blocks, self._max_rows
        codes = data.ArrayLayout(signed(act), lanes)

        # the pass-through ports of both blocks
        moe_internal = _MOE_INTERNAL + (_DRAM_PORTS if self._kv else ())
        for sub, internal in ((ab_, _ATTENTION_INTERNAL), (moe, moe_internal)):
            for name, member in sub.signature.members.items():
                if name in internal:
                    continue
                mine, theirs = getattr(self, name), getattr(sub, name)
                if member.is_port:
                    if member.flow == In:
                        m.d.comb += theirs.eq(mine)
                    else:
                        m.d.comb += mine.eq(theirs)
                elif member.flow == In:
                    wiring.connect(m, wiring.flipped(mine), theirs)
                else:
                    wiring.connect(m, theirs, wiring.flipped(mine))
        wiring.connect(m, wiring.flipped(self.i_rows), ab_.i_rows)
        m.d.comb += ab_.bank_base.eq(self._bank_base)

        m.submodules.x1_buf = xbuf = Sram(shape=codes, depth=MR * B)
        m.submodules.moe_norm = norm = NormUnit(d_model=self._spec.d_model, lanes=lanes,
                                                act_bits=act, center=ab_.center,
                                                multiplier_bits=mb)
        m.submodules.residual2 = res = ResidualUnit(lanes=lanes, a_bits=act, b_bits=act,
                                                    act_bits=act, multiplier_bits=mb)

        # the window and the controller's state (a phase code: ATTN while the block runs)
        state = Signal(range(len(PHASES)))
        n_rows = Signal(range(MR + 1))
        total = Signal(range(MR * B + 1))
        m.d.comb += total.eq(n_rows * B)
        counters = []

        def counter(name, top):
            c = Signal(range(top + 1), name=name)
            counters.append(c)
            return c

        def reader(name, ready, more):
            return read_stream(m, name, ready, more)

        win = self.i_windows
        m.d.comb += [ab_.i_windows.payload.eq(win.payload),
                     ab_.i_windows.valid.eq(win.valid & (state == IDLE)),
                     win.ready.eq(ab_.i_windows.ready & (state == IDLE))]

        # ---- the DRAM port: the KV cache's while the attention block runs, else the GO
        # cache's (their requests and responses never overlap: a phase ends after its last
        # response)
        if self._kv:
            req, resp = self.o_dram_req, self.i_dram_resp

            def serve(s_req, s_resp, base):
                m.d.comb += [req.valid.eq(s_req.valid), s_req.ready.eq(req.ready),
                             req.payload.write.eq(s_req.payload.write),
                             req.payload.addr.eq(base + s_req.payload.addr),
                             req.payload.data.eq(s_req.payload.data),
                             s_resp.valid.eq(resp.valid), resp.ready.eq(s_resp.ready),
                             s_resp.payload.data.eq(resp.payload.data)]

            with m.If(state == ATTN):
                serve(ab_.o_kv_dram_req, ab_.i_kv_dram_resp, self._kv_dram_base)
            if self._go:
                with m.Else():
                    serve(moe.o_dram_req, moe.i_dram_resp, 0)

        # ---- x1 rows into the x1 buffer
        x1w = counter("x1w", MR * B)
        m.d.comb += [ab_.o_rows.ready.eq(1), xbuf.w_en.eq(ab_.o_rows.valid),
                     xbuf.w_addr.eq(x1w), xbuf.w_data.eq(ab_.o_rows.payload.codes)]
        with m.If(ab_.o_rows.valid):
            m.d.sync += x1w.eq(x1w + 1)
        attn_done = (state == ATTN) & (x1w == total)

        # ---- the MoE norm: x1 buffer -> NormUnit -> the MoE layer's tokens
        run_norm = (state == MNORM) | attn_done
        nr = counter("nr", MR * B)
        n_valid, n_adv, n_fetch = reader("nr", norm.i_rows.ready, run_norm & (nr < total))
        with m.If(n_fetch):
            m.d.sync += nr.eq(nr + 1)
        m.d.comb += [norm.i_rows.valid.eq(n_valid),
                     norm.i_rows.payload.codes.eq(xbuf.r_data),
                     norm.param_we.eq(self.moe_norm_param_we),
                     norm.param_addr.eq(self.moe_norm_param_addr),
                     norm.param_data.eq(self.moe_norm_param_data),
                     norm.eps.eq(self.moe_norm_eps), norm.mult.eq(self.moe_norm_mult),
                     norm.shift.eq(self.moe_norm_shift)]
        tok, tok_r, tok_b = counter("tok", MR * B), counter("tok_r", MR), counter("tok_b", B)
        t_in = moe.i_tokens
        m.d.comb += [t_in.valid.eq(norm.o_rows.valid), norm.o_rows.ready.eq(t_in.ready),
                     t_in.payload.token.eq(tok_r), t_in.payload.block.eq(tok_b),
                     t_in.payload.data.eq(norm.o_rows.payload.codes),
                     t_in.payload.last.eq(tok == total - 1)]
        with m.If(t_in.valid & t_in.ready):
            m.d.sync += [tok.eq(tok + 1), tok_b.eq(Mux(tok_b == B - 1, 0, tok_b + 1))]
            with m.If(tok_b == B - 1):
                m.d.sync += tok_r.eq(tok_r + 1)
        norm_done = (state == MNORM) & (tok == total)

        # ---- the second residual: the MoE layer's outputs with the x1 rows (read ahead)
        out = moe.o_outputs
        rr = counter("rr", MR * B)
        after_norm = (state == ROUTE) | (state == JOBS) | (state == EXPERTS) | (state == RES2)
        r_ready = res.i_pairs.ready & out.valid
        r_valid, r_adv, r_fetch = reader("rr", r_ready, after_norm & (rr < total))
        with m.If(r_fetch):
            m.d.sync += rr.eq(rr + 1)
        m.d.comb += [xbuf.r_en.eq(Mux(run_norm, n_adv, r_adv)),
                     xbuf.r_addr.eq(Mux(run_norm, nr, rr))]
        m.d.comb += [res.a_mult.eq(self.res2_x1_mult), res.a_shift.eq(self.res2_x1_shift),
                     res.b_mult.eq(self.res2_moe_mult), res.b_shift.eq(self.res2_moe_shift),
                     res.i_pairs.valid.eq(r_valid & out.valid),
                     out.ready.eq(res.i_pairs.ready & r_valid),
                     res.i_pairs.payload.a.eq(xbuf.r_data),
                     res.i_pairs.payload.b.eq(out.payload.data),
                     res.i_pairs.payload.last.eq(out.payload.block == B - 1)]
        wiring.connect(m, res.o_sums, wiring.flipped(self.o_rows))
        y_cnt = counter("y_cnt", MR * B)
        with m.If(self.o_rows.valid & self.o_rows.ready):
            m.d.sync += y_cnt.eq(y_cnt + 1)

        # ---- the phase sequence; the MoE layer's ends observed on its host ports (the
        # closing route beat; the plan's last beat, which a host routing the window itself
        # may offer early: the MoE layer takes it in the cycle the tokens end)
        routes, jobs = self.o_routes if moe.route_unit is not None else None, self.i_jobs
        routed, closed, planned = Signal(), Signal(), Signal()
        if routes is not None:
            m.d.comb += routed.eq(self.route_mode != MODE_HOST)
            with m.If(routes.valid & routes.ready & routes.payload.last):
                m.d.sync += closed.eq(1)
        with m.If(jobs.valid & jobs.ready & (jobs.payload.last | jobs.payload.empty)):
            m.d.sync += planned.eq(1)
        m.d.comb += self.phase.eq(Mux(state == ATTN, ab_.phase,
                                      Mux((state == EXPERTS) & out.valid, RES2, state)))
        with m.Switch(state):
            with m.Case(IDLE):
                with m.If(win.valid & win.ready):
                    m.d.sync += [n_rows.eq(win.payload.n_rows), state.eq(ATTN),
                                 closed.eq(0), planned.eq(0)]
                    m.d.sync += [c.eq(0) for c in counters]
            with m.Case(ATTN):
                with m.If(attn_done):
                    m.d.sync += state.eq(MNORM)
            with m.Case(MNORM):
                with m.If(norm_done):
                    m.d.sync += state.eq(Mux(routed, ROUTE, JOBS))
            with m.Case(ROUTE):
                with m.If(closed):
                    m.d.sync += state.eq(JOBS)
            with m.Case(JOBS):
                with m.If(planned):
                    m.d.sync += state.eq(EXPERTS)
            with m.Case(EXPERTS):
                with m.If(out.valid):
                    m.d.sync += state.eq(RES2)
            with m.Case(RES2):
                with m.If(y_cnt == total):
                    m.d.sync += state.eq(IDLE)
        return m
