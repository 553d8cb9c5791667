"""Routers: ``TokenChoiceRouter`` (top-k experts per token) and ``ExpertChoiceRouter`` (top-C
tokens per expert over a window), bit-exact with ``models.quant.route_int`` and
``models.routing``.

Both take integer gate scores from a stream: logits from the gate MVM (crossbar tiles plus the
partial-sum adders, or the LLaMA-MoE MLP gate) or, for trace-driven runs, scores supplied by
the host. Selection uses :class:`~moepim.hw.topk.StreamingTopK` (ties: the lower index wins),
weights use :class:`~moepim.hw.softmax.GateSoftmax`.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from moepim.spec import timing
from moepim.spec.checks import index_bits, need, need_positive
from moepim.spec.numerics import SCORE_BITS

from .softmax import GateSoftmax
from .topk import StreamingTopK

__all__ = ["TokenChoiceRouter", "ExpertChoiceRouter"]


class TokenChoiceRouter(wiring.Component):
    """Per token: the ``count`` (1..k) experts with the highest logits, and their weights
    ``p16 >> (16 - gate_bits)`` with ``p16`` the softmax over the selected experts
    (``renormalize=True``: Mixtral, LLaMA-MoE) or over all experts (Switch, Qwen, DeepSeek,
    OLMoE).

    Latency per token, from the handshake (cycle 0) to ``o_routes.valid``, without
    back-pressure: ``n_experts`` cycles to stream the logits through the top-k unit, ``count``
    cycles for its results, 1 cycle to hand over to the softmax, its latency, 1 cycle to the
    output: ``latency(count) = n_experts + count + 2 + softmax.latency()``
    (``moepim.spec.timing.topk_router_latency``).
    """

    def __init__(self, *, n_experts: int, k: int, logit_bits: int, renormalize: bool,
                 gate_bits: int = 8):
        need_positive("n_experts", n_experts)
        need(1 <= k <= min(8, n_experts), "k", k, f"an integer from 1 to {min(8, n_experts)}")
        need(1 <= gate_bits <= SCORE_BITS, "gate_bits", gate_bits,
             f"an integer from 1 to {SCORE_BITS}")
        self._n, self._k, self._renorm, self._gate_bits = n_experts, k, bool(renormalize), \
            gate_bits
        self._logit_bits = logit_bits
        self.topk = StreamingTopK(n_items=n_experts, k=k, score_bits=logit_bits)
        self.softmax = GateSoftmax(n_experts=n_experts, logit_bits=logit_bits)
        ex = unsigned(index_bits(n_experts))
        super().__init__({
            "i_tokens": In(stream.Signature(data.StructLayout({
                "logits": data.ArrayLayout(signed(logit_bits), n_experts),
                "count": unsigned(index_bits(k + 1)),
                "index_mult": unsigned(16), "index_shift": unsigned(6)}))),
            "o_routes": Out(stream.Signature(data.StructLayout({
                "experts": data.ArrayLayout(ex, k),
                "weights": data.ArrayLayout(unsigned(gate_bits), k),
                "n_selected": unsigned(index_bits(k + 1))}))),
        })

    def latency(self, count: int) -> int:
        return timing.topk_router_latency(self._n, count)

    def elaborate(self, platform):
        m = Module()
        n, k = self._n, self._k
        m.submodules.topk = topk = self.topk
        m.submodules.softmax = sm = self.softmax
        tok = self.i_tokens.payload
        logits = Signal.like(tok.logits)
        count = Signal.like(tok.count)
        mult, shift = Signal.like(tok.index_mult), Signal.like(tok.index_shift)
        feed = Signal(range(n + 1))
        sel = [Signal(unsigned(index_bits(n)), name=f"sel{j}") for j in range(k)]
        n_sel = Signal(range(k + 1))
        mask = Signal(n)
        probs = Signal.like(sm.o_probs.payload.p16)

        with m.FSM(name="router"):
            with m.State("IDLE"):
                m.d.comb += self.i_tokens.ready.eq(1)
                with m.If(self.i_tokens.valid):
                    m.d.sync += [logits.eq(tok.logits), count.eq(tok.count),
                                 mult.eq(tok.index_mult), shift.eq(tok.index_shift),
                                 feed.eq(0), n_sel.eq(0), mask.eq(0)]
                    m.next = "FEED"
            with m.State("FEED"):
                item = topk.i_items.payload
                m.d.comb += [topk.i_items.valid.eq(1), item.index.eq(feed),
                             item.count.eq(count), item.last.eq(feed == n - 1)]
                with m.Switch(feed):
                    for e in range(n):
                        with m.Case(e):
                            m.d.comb += item.score.eq(logits[e])
                with m.If(topk.i_items.ready):
                    m.d.sync += feed.eq(feed + 1)
                    with m.If(feed == n - 1):
                        m.next = "COLLECT"
            with m.State("COLLECT"):
                m.d.comb += topk.o_selected.ready.eq(1)
                with m.If(topk.o_selected.valid):
                    idx = topk.o_selected.payload.index
                    with m.Switch(n_sel):
                        for j in range(k):
                            with m.Case(j):
                                m.d.sync += sel[j].eq(idx)
                    m.d.sync += [n_sel.eq(n_sel + 1), mask.eq(mask | (Const(1, n) << idx))]
                    with m.If(topk.o_selected.payload.last):
                        m.next = "SOFTMAX"
            with m.State("SOFTMAX"):
                p = sm.i_logits.payload
                m.d.comb += [sm.i_logits.valid.eq(1), p.logits.eq(logits),
                             p.mask.eq(mask if self._renorm else (1 << n) - 1),
                             p.index_mult.eq(mult), p.index_shift.eq(shift)]
                with m.If(sm.i_logits.ready):
                    m.next = "WAIT"
            with m.State("WAIT"):
                m.d.comb += sm.o_probs.ready.eq(1)
                with m.If(sm.o_probs.valid):
                    m.d.sync += probs.eq(sm.o_probs.payload.p16)
                    m.next = "OUT"
            with m.State("OUT"):
                out = self.o_routes.payload
                weights = []
                for j in range(k):
                    w = Signal(SCORE_BITS, name=f"p_sel{j}")
                    with m.Switch(sel[j]):
                        for e in range(n):
                            with m.Case(e):
                                m.d.comb += w.eq(probs[e])
                    weights.append(w[SCORE_BITS - self._gate_bits:])
                m.d.comb += [self.o_routes.valid.eq(1),
                             out.experts.as_value().eq(Cat(*sel)),
                             out.weights.as_value().eq(Cat(*weights)),
                             out.n_selected.eq(n_sel)]
                with m.If(self.o_routes.ready):
                    m.next = "IDLE"
        return m


class ExpertChoiceRouter(wiring.Component):
    """Over a window of up to ``n_tokens`` tokens, each expert takes its ``cap`` (1..c_max)
    tokens with the highest Q0.16 gate scores (ties: the earlier token).

    ``i_scores`` brings one token's row per transfer (``last`` closes the window; ``cap`` is
    taken with it); rows go to an SRAM. Then, expert by expert, the column streams through a
    :class:`StreamingTopK` and the selected tokens leave on ``o_selected`` as (expert, token,
    score), best first, ``last`` on the window's final selection.

    Cycles from the one after the window's last row to the handshake of its final selection,
    without back-pressure: ``select_cycles = n_experts * (T + 1 + cap)`` for ``T`` tokens.
    """

    def __init__(self, *, n_tokens: int, n_experts: int, c_max: int):
        for name, value in (("n_tokens", n_tokens), ("n_experts", n_experts), ("c_max", c_max)):
            need_positive(name, value)
        need(c_max <= n_tokens, "c_max", c_max, f"at most n_tokens={n_tokens}")
        self._t, self._n, self._c = n_tokens, n_experts, c_max
        self.topk = StreamingTopK(n_items=n_tokens, k=c_max, score_bits=SCORE_BITS,
                                  signed_scores=False)
        row = data.ArrayLayout(unsigned(SCORE_BITS), n_experts)
        self._row = row
        super().__init__({
            "i_scores": In(stream.Signature(data.StructLayout({
                "scores": row, "cap": unsigned(index_bits(c_max + 1)), "last": 1}))),
            "o_selected": Out(stream.Signature(data.StructLayout({
                "expert": unsigned(index_bits(n_experts)),
                "token": unsigned(index_bits(n_tokens)),
                "score": unsigned(SCORE_BITS), "last": 1}))),
        })

    def select_cycles(self, n_tokens: int, cap: int) -> int:
        return timing.ec_select_cycles(self._n, n_tokens, cap)

    def elaborate(self, platform):
        m = Module()
        n_tok, n_exp = self._t, self._n
        m.submodules.topk = topk = self.topk
        m.submodules.rows = mem = Memory(shape=self._row, depth=n_tok, init=[])
        wp, rp = mem.write_port(), mem.read_port()
        rows = Signal(range(n_tok + 1))
        cap = Signal.like(self.i_scores.payload.cap)
        expert = Signal(range(n_exp + 1))
        t = Signal(range(n_tok + 1))
        t_d = Signal(range(n_tok + 1))
        have = Signal()                    # rp.data holds row t_d
        inp = self.i_scores.payload

        with m.FSM(name="ec"):
            with m.State("LOAD"):
                m.d.comb += [self.i_scores.ready.eq(rows < n_tok),
                             wp.addr.eq(rows), wp.data.eq(inp.scores),
                             wp.en.eq(self.i_scores.valid & (rows < n_tok))]
                with m.If(self.i_scores.valid & self.i_scores.ready):
                    m.d.sync += rows.eq(rows + 1)
                    with m.If(inp.last):
                        m.d.sync += [cap.eq(inp.cap), expert.eq(0), t.eq(0), have.eq(0)]
                        m.next = "SCAN"
            with m.State("SCAN"):
                # read row t; one cycle later its score of `expert` goes into the top-k unit
                item = topk.i_items.payload
                m.d.comb += [rp.addr.eq(t), rp.en.eq(~have | topk.i_items.ready)]
                with m.If(~have | topk.i_items.ready):
                    m.d.sync += [have.eq(t < rows), t_d.eq(t)]
                    with m.If(t < rows):
                        m.d.sync += t.eq(t + 1)
                m.d.comb += [topk.i_items.valid.eq(have), item.index.eq(t_d),
                             item.count.eq(cap), item.last.eq(t_d == rows - 1)]
                with m.Switch(expert):
                    for e in range(n_exp):
                        with m.Case(e):
                            m.d.comb += item.score.eq(rp.data[e])
                with m.If(have & topk.i_items.ready & (t_d == rows - 1)):
                    m.next = "EMIT"
            with m.State("EMIT"):
                out = self.o_selected.payload
                m.d.comb += [self.o_selected.valid.eq(topk.o_selected.valid),
                             topk.o_selected.ready.eq(self.o_selected.ready),
                             out.expert.eq(expert), out.token.eq(topk.o_selected.payload.index),
                             out.score.eq(topk.o_selected.payload.score),
                             out.last.eq(topk.o_selected.payload.last & (expert == n_exp - 1))]
                with m.If(topk.o_selected.valid & self.o_selected.ready &
                          topk.o_selected.payload.last):
                    m.d.sync += [expert.eq(expert + 1), t.eq(0), have.eq(0)]
                    with m.If(expert == n_exp - 1):
                        m.d.sync += rows.eq(0)
                        m.next = "LOAD"
                    with m.Else():
                        m.next = "SCAN"
        return m
