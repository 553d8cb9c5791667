"""The route unit's second stage, the router: :class:`ExpertChoiceBackEnd` and
:class:`TopKBackEnd`.

Both take a token's logits on ``i_logits`` (``moepim.hw.gate.logits_layout``: token,
``last``, logits, the shared expert's gate weight) and send its routes on ``o_routes`` as
``(token, expert, weight)`` beats; after the window's ``last`` token's routes one beat with
``last`` (and no route) closes the window. ``i_logits.ready`` is high only while the stage is
idle; it registers the token when it takes it. With ``shared_gate`` the token's first beat is
the shared expert's (expert ``n_experts``, its sigmoid weight). ``mode``, ``cap``,
``index_mult`` and ``index_shift`` (and ``go_insert``) are held by the parent while a window
is routed.

* :class:`ExpertChoiceBackEnd`: :class:`~moepim.hw.softmax.GateSoftmax` over all experts gives
  the token's Q0.16 score row. ``mode == MODE_WINDOW``: the row goes to an
  :class:`~moepim.hw.routers.ExpertChoiceRouter` (and, with ``go_insert``, into the
  :class:`~moepim.hw.gocache.GateOutputCache`, cleared at the window's token 0); after the
  window's ``last`` token every expert takes its ``cap`` best tokens. ``mode == MODE_CACHED``
  (one generated token): the GO cache decides from the earlier tokens' rows (``DECIDE`` with
  ``cap``) and stores the new row. The gate weight of a selection is its score
  ``>> (16 - gate_bits)`` (``route_int``: softmax over all experts).
* :class:`TopKBackEnd`: a :class:`~moepim.hw.routers.TokenChoiceRouter` (top ``top_k``
  logits, softmax over them or over all experts, ``renormalize``). With ``drop`` (Switch's
  capacity), a counter per expert counts the routes it took since the sequence began
  (cleared at token 0 of a ``MODE_WINDOW`` window; a ``MODE_CACHED`` window continues the
  sequence): a selection of an expert that already took ``cap`` tokens is dropped (not sent;
  counter ``route_drops``), as ``moepim.models.routing.apply_capacity`` in token order.

Cycles from the ``i_logits`` handshake (``moepim.spec.timing.RouteTiming.router``), with
``S = softmax latency + 2``: expert choice ``MODE_WINDOW`` ``S + 1`` (plus 1 on token 0 with
``go_insert``: the GO cache cleared); expert choice ``MODE_CACHED`` ``S + rows + E + 5``
(``rows`` the earlier rows the GO cache scans, ``E`` cycles to walk the selection mask);
top-k ``TokenChoiceRouter.latency(k) + 3 + k``; plus 1 with the shared gate (its beat). The
window's close: the expert-choice selection over the window and the closing beat, or the
closing beat alone.
"""

from __future__ import annotations

from amaranth import Array, Module, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from moepim.spec.checks import index_bits, need, need_positive
from moepim.spec.numerics import SCORE_BITS
from moepim.spec.timing import MODE_CACHED, MODE_WINDOW

from .gate import logits_layout
from .gocache import OP_CLEAR, OP_DECIDE, OP_INSERT, GateOutputCache
from .params import check_counter_bits
from .routers import ExpertChoiceRouter, TokenChoiceRouter
from .softmax import GateSoftmax

__all__ = ["ExpertChoiceBackEnd", "TopKBackEnd", "route_layout", "MODE_BITS",
           "INDEX_MULT_BITS", "INDEX_SHIFT_BITS"]

MODE_BITS = 2
INDEX_MULT_BITS, INDEX_SHIFT_BITS = 16, 6          # GateSoftmax's run-time index requant


def route_layout(*, n_tokens: int, n_cols: int, gate_bits: int):
    """A route beat: ``(token, expert, weight)``, or the window's closing beat (``last``)."""
    return data.StructLayout({"token": unsigned(index_bits(n_tokens)),
                              "expert": unsigned(index_bits(n_cols)),
                              "weight": unsigned(gate_bits), "last": 1})


class _RouterStage(wiring.Component):
    """What both routers share: the logits in, the held window controls, the route beats out,
    the token's registers, the shared expert's beat and the closing beat."""

    def __init__(self, *, n_experts, n_tokens, logit_bits, gate_bits, max_sequence,
                 shared_gate, counter_bits, ports, counters):
        for name, value in (("n_experts", n_experts), ("n_tokens", n_tokens),
                            ("logit_bits", logit_bits), ("gate_bits", gate_bits)):
            need_positive(name, value)
        need(max_sequence >= 0, "max_sequence", max_sequence, "an integer >= 0")
        check_counter_bits(counter_bits)
        self._n, self._t, self._gate_bits = n_experts, n_tokens, gate_bits
        self._shared = bool(shared_gate)
        self._cap_shape = unsigned(index_bits(max(n_tokens, max_sequence) + 2))
        layout = logits_layout(n_experts=n_experts, n_tokens=n_tokens, logit_bits=logit_bits,
                               gate_bits=gate_bits)
        super().__init__({
            "i_logits": In(stream.Signature(layout)),
            "mode": In(MODE_BITS),
            "cap": In(self._cap_shape),
            "index_mult": In(unsigned(INDEX_MULT_BITS)),
            "index_shift": In(unsigned(INDEX_SHIFT_BITS)),
            **ports,
            "o_routes": Out(stream.Signature(route_layout(
                n_tokens=n_tokens, n_cols=n_experts + self._shared, gate_bits=gate_bits))),
            "counters": Out(data.StructLayout(counters)),
        })

    n_experts = property(lambda self: self._n)
    cap_shape = property(lambda self: self._cap_shape)

    def _silence(self, *subs):
        for sub in subs:        # elaborated with the stage; a cached build never elaborates
            if sub is not None:
                sub._MustUse__silence = True

    def _common(self, m, first: str, on_new_sequence=None):
        """The token's registers, the IDLE, SHARED and CLOSE states; returns the registers.
        ``first``: the state after the shared beat; ``on_new_sequence()``: what IDLE does
        besides when the token it takes begins a new sequence (token 0 of a
        ``MODE_WINDOW`` window)."""
        i = self.i_logits
        tok = Signal.like(i.payload.token)
        last = Signal()
        logits = Signal.like(i.payload.logits)
        shared = Signal.like(i.payload.shared_weight)
        new_sequence = (self.mode == MODE_WINDOW) & (i.payload.token == 0)
        out = self.o_routes
        with m.State("IDLE"):
            m.d.comb += i.ready.eq(1)
            with m.If(i.valid):
                m.d.sync += [logits.eq(i.payload.logits), tok.eq(i.payload.token),
                             last.eq(i.payload.last), shared.eq(i.payload.shared_weight)]
                m.next = "SHARED" if self._shared else first
                if on_new_sequence is not None:
                    with m.If(new_sequence):
                        on_new_sequence()
        if self._shared:
            with m.State("SHARED"):
                # the shared expert's gate weight: the token's first route beat
                m.d.comb += [out.valid.eq(1), out.payload.token.eq(tok),
                             out.payload.expert.eq(self._n), out.payload.weight.eq(shared)]
                with m.If(out.ready):
                    m.next = first
        with m.State("CLOSE"):
            m.d.comb += [out.valid.eq(1), out.payload.last.eq(1)]
            with m.If(out.ready):
                m.next = "IDLE"
        return tok, last, logits

    def _done_token(self, m, last):
        """The token's routes are out: close the window after its last token."""
        m.next = "CLOSE"
        with m.If(~last):
            m.next = "IDLE"


class ExpertChoiceBackEnd(_RouterStage):
    def __init__(self, *, n_experts: int, n_tokens: int, logit_bits: int, gate_bits: int = 8,
                 c_max: int = 1, go_cache_rows: int = 0, max_sequence: int = 0,
                 shared_gate: bool = False, counter_bits=48):
        need(go_cache_rows >= 0, "go_cache_rows", go_cache_rows, "0 (no GO cache) or a row count")
        self.softmax = GateSoftmax(n_experts=n_experts, logit_bits=logit_bits)
        self.ec = ExpertChoiceRouter(n_tokens=n_tokens, n_experts=n_experts, c_max=c_max)
        self.go = None
        ports, counters = {}, {}
        if go_cache_rows:
            need(max_sequence >= go_cache_rows, "max_sequence", max_sequence,
                 f"at least go_cache_rows={go_cache_rows}")
            self.go = GateOutputCache(n_experts=n_experts, go_cache_rows=go_cache_rows,
                                      max_tokens=max_sequence, counter_bits=counter_bits)
            members = self.go.signature.members
            ports = {"go_insert": In(1), "o_dram_req": members["o_dram_req"],
                     "i_dram_resp": members["i_dram_resp"]}
            counters = {f"go_{name}": unsigned(counter_bits)
                        for name, _ in self.go.counters.shape()}
        self._silence(self.softmax, self.ec, self.go, self.ec.topk)
        super().__init__(n_experts=n_experts, n_tokens=n_tokens, logit_bits=logit_bits,
                         gate_bits=gate_bits, max_sequence=max_sequence,
                         shared_gate=shared_gate, counter_bits=counter_bits, ports=ports,
                         counters=counters)

    def elaborate(self, platform):
        m = Module()
        sm, ec, go = self.softmax, self.ec, self.go
        m.submodules.softmax = sm
        m.submodules.ec_router = ec
        if go is not None:
            m.submodules.go_cache = go
            wiring.connect(m, wiring.flipped(self.o_dram_req), go.o_dram_req)
            wiring.connect(m, wiring.flipped(self.i_dram_resp), go.i_dram_resp)
            m.d.comb += [self.counters[f"go_{name}"].eq(go.counters[name])
                         for name, _ in go.counters.shape()]
        def clear():
            with m.If(self.go_insert):
                m.next = "CLEAR"

        with m.FSM(name="route"):
            tok, last, logits = self._common(m, "SCORE", clear if go is not None else None)
            if go is not None:
                with m.State("CLEAR"):
                    # a new sequence: forget the cached rows (the GO cache is idle here)
                    m.d.comb += [go.i_cmd.valid.eq(1), go.i_cmd.payload.op.eq(OP_CLEAR)]
                    with m.If(go.i_cmd.ready):
                        m.next = "SHARED" if self._shared else "SCORE"
            self._states(m, tok, last, logits)
        return m

    def _states(self, m, tok, last, logits):
        sm, ec, go, n = self.softmax, self.ec, self.go, self._n
        out, shift = self.o_routes, SCORE_BITS - self._gate_bits
        row = Signal(data.ArrayLayout(unsigned(SCORE_BITS), n))
        pushed_ec, pushed_go = Signal(), Signal()
        with m.State("SCORE"):
            p = sm.i_logits.payload
            m.d.comb += [sm.i_logits.valid.eq(1), p.logits.eq(logits),
                         p.mask.eq((1 << n) - 1), p.index_mult.eq(self.index_mult),
                         p.index_shift.eq(self.index_shift)]
            with m.If(sm.i_logits.ready):
                m.next = "SCORE_WAIT"
        with m.State("SCORE_WAIT"):
            m.d.comb += sm.o_probs.ready.eq(1)
            with m.If(sm.o_probs.valid):
                m.d.sync += [row.eq(sm.o_probs.payload.p16), pushed_ec.eq(0),
                             pushed_go.eq(0)]
                m.next = "PUSH"
                if go is not None:
                    with m.If(self.mode == MODE_CACHED):
                        m.next = "DECIDE"
        with m.State("PUSH"):
            # the row into the window's expert-choice router (and the GO cache)
            m.d.comb += [ec.i_scores.valid.eq(~pushed_ec),
                         ec.i_scores.payload.scores.eq(row),
                         ec.i_scores.payload.cap.eq(self.cap),
                         ec.i_scores.payload.last.eq(last)]
            done_ec = pushed_ec | ec.i_scores.ready
            done_go = 1
            if go is not None:
                want = self.go_insert & ~pushed_go
                m.d.comb += [go.i_cmd.valid.eq(want), go.i_cmd.payload.op.eq(OP_INSERT),
                             go.i_cmd.payload.scores.eq(row)]
                done_go = ~want | go.i_cmd.ready
                with m.If(want & go.i_cmd.ready):
                    m.d.sync += pushed_go.eq(1)
            with m.If(ec.i_scores.ready):
                m.d.sync += pushed_ec.eq(1)
            with m.If(done_ec & done_go):
                m.next = "SELECT"
                with m.If(~last):
                    m.next = "IDLE"
        with m.State("SELECT"):
            # the window's selections, expert by expert, best first
            o = ec.o_selected.payload
            m.d.comb += [out.valid.eq(ec.o_selected.valid),
                         ec.o_selected.ready.eq(out.ready),
                         out.payload.token.eq(o.token), out.payload.expert.eq(o.expert),
                         out.payload.weight.eq(o.score[shift:])]
            with m.If(ec.o_selected.valid & out.ready & o.last):
                m.next = "CLOSE"
        if go is not None:
            self._cached_states(m, tok, last, row)

    def _cached_states(self, m, tok, last, row):
        """A generated token (``MODE_CACHED``): the GO cache decides, the mask is walked."""
        go, n, out = self.go, self._n, self.o_routes
        shift = SCORE_BITS - self._gate_bits
        sel = Signal(n)
        expert = Signal(range(n + 1))
        with m.State("DECIDE"):
            m.d.comb += [go.i_cmd.valid.eq(1), go.i_cmd.payload.op.eq(OP_DECIDE),
                         go.i_cmd.payload.cap.eq(self.cap), go.i_cmd.payload.scores.eq(row)]
            with m.If(go.i_cmd.ready):
                m.next = "DECIDED"
        with m.State("DECIDED"):
            m.d.comb += go.o_select.ready.eq(1)
            with m.If(go.o_select.valid):
                m.d.sync += [sel.eq(go.o_select.payload.mask), expert.eq(0)]
                m.next = "EMIT_MASK"
        with m.State("EMIT_MASK"):
            # one cycle per expert; a selected one waits for its beat's handshake
            hit = Signal()
            weight = Signal(self._gate_bits)
            with m.Switch(expert):
                for e in range(n):
                    with m.Case(e):
                        m.d.comb += [hit.eq(sel[e]), weight.eq(row[e][shift:])]
            m.d.comb += [out.valid.eq(hit & (expert < n)),
                         out.payload.token.eq(tok), out.payload.expert.eq(expert),
                         out.payload.weight.eq(weight)]
            with m.If(expert == n):
                self._done_token(m, last)
            with m.Elif(~hit | out.ready):
                m.d.sync += expert.eq(expert + 1)


class TopKBackEnd(_RouterStage):
    def __init__(self, *, n_experts: int, n_tokens: int, logit_bits: int, gate_bits: int = 8,
                 top_k: int = 1, renormalize: bool = False, drop: bool = False,
                 max_sequence: int = 0, shared_gate: bool = False, counter_bits=48):
        self._k, self._drop = top_k, bool(drop)
        self.tc = TokenChoiceRouter(n_experts=n_experts, k=top_k, logit_bits=logit_bits,
                                    renormalize=renormalize, gate_bits=gate_bits)
        self._silence(self.tc, self.tc.topk, self.tc.softmax)
        super().__init__(n_experts=n_experts, n_tokens=n_tokens, logit_bits=logit_bits,
                         gate_bits=gate_bits, max_sequence=max_sequence,
                         shared_gate=shared_gate, counter_bits=counter_bits, ports={},
                         counters={"route_drops": unsigned(counter_bits)} if drop else {})

    drop = property(lambda self: self._drop)

    def elaborate(self, platform):
        m = Module()
        tc, out, cnt, n = self.tc, self.o_routes, self.counters, self._n
        m.submodules.tc_router = tc
        experts = Signal.like(tc.o_routes.payload.experts)
        weights = Signal.like(tc.o_routes.payload.weights)
        n_sel = Signal.like(tc.o_routes.payload.n_selected)
        j = Signal.like(n_sel)
        # capacity dropping: routes each expert took since the sequence began
        taken = Array(Signal(self._cap_shape, name=f"taken{e}") for e in range(n))
        def clear():
            m.d.sync += [x.eq(0) for x in taken]

        with m.FSM(name="route"):
            tok, last, logits = self._common(m, "TC_IN", clear if self._drop else None)
            with m.State("TC_IN"):
                p = tc.i_tokens.payload
                m.d.comb += [tc.i_tokens.valid.eq(1), p.logits.eq(logits),
                             p.count.eq(self._k), p.index_mult.eq(self.index_mult),
                             p.index_shift.eq(self.index_shift)]
                with m.If(tc.i_tokens.ready):
                    m.next = "TC_WAIT"
            with m.State("TC_WAIT"):
                m.d.comb += tc.o_routes.ready.eq(1)
                with m.If(tc.o_routes.valid):
                    r = tc.o_routes.payload
                    m.d.sync += [experts.eq(r.experts), weights.eq(r.weights),
                                 n_sel.eq(r.n_selected), j.eq(0)]
                    m.next = "TC_EMIT"
            with m.State("TC_EMIT"):
                # one selection per cycle (or per handshake); a dropped one is not sent
                cur = Signal.like(out.payload.expert)
                keep = Signal()
                with m.Switch(j):
                    for s in range(self._k):
                        with m.Case(s):
                            m.d.comb += [cur.eq(experts[s]),
                                         out.payload.weight.eq(weights[s])]
                m.d.comb += [keep.eq(taken[cur] < self.cap if self._drop else 1),
                             out.valid.eq((j < n_sel) & keep),
                             out.payload.token.eq(tok), out.payload.expert.eq(cur)]
                with m.If(j == n_sel):
                    self._done_token(m, last)
                if self._drop:
                    with m.Elif(~keep):
                        m.d.sync += [j.eq(j + 1), cnt.route_drops.eq(cnt.route_drops + 1)]
                with m.Elif(out.ready):
                    m.d.sync += j.eq(j + 1)
                    if self._drop:
                        m.d.sync += taken[cur].eq(taken[cur] + 1)
        return m
