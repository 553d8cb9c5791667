"""``RouteUnit``: the MoE layer's routing front end, a two-stage pipeline over tokens.

The gate matrix (``d_model x n_experts``) lives on its own crossbars, a one-slot
:class:`~moepim.hw.matrix_bank.MatrixBank` with its own peripheral sets; partial-sum adders
give the integer logits (``moepim.models.quant.gate_logits_int`` with the crossbar arithmetic).
An MLP gate (``gate_hidden`` > 0, LLaMA-MoE's ``W_2 tanh(W_1 x)``) has two one-slot banks:
``W_1`` (``d_model x gate_hidden``, cell image ``bank_id``), whose partial sums are
requantised (``hidden_mult``/``hidden_shift``, clamped to ``input_bits``) and looked up in the
tanh table (``2**input_bits`` entries, written through ``lut_we``/``lut_addr``/``lut_data``
before the run, address ``code + 2**(input_bits-1)``), ``lanes`` per cycle, into the input of
``W_2`` (``gate_hidden x n_experts``, cell image ``bank_id + 1``), whose partial sums are the
logits. A model's sigmoid-gated shared expert (``shared_gate``) adds one column to the
logit bank: its logit is requantised (``shared_mult``/``shared_shift``, clamped to
``input_bits``) and looked up in the sigmoid table (``2**input_bits`` entries of
``gate_bits``, ``moepim.models.quant.shared_gate_int``); the result leaves as the token's first
route beat, expert ``n_experts`` (the shared expert), before the routed experts' selections.
Tables are written through ``lut_we``/``lut_table``/``lut_addr``/``lut_data`` before the run
(table 0 tanh, 1 sigmoid; address ``code + 2**(input_bits-1)``). Then, by ``router`` (a build
parameter):

* ``"expert_choice"``: :class:`~moepim.hw.softmax.GateSoftmax` over all experts gives the
  token's Q0.16 score row. ``mode == MODE_WINDOW``: the row goes to an
  :class:`~moepim.hw.routers.ExpertChoiceRouter` (and, with ``go_insert``, into the
  :class:`~moepim.hw.gocache.GateOutputCache`, cleared at the window's token 0); after the
  window's ``last`` token every expert takes its ``cap`` best tokens. ``mode == MODE_CACHED``
  (one generated token): the GO cache decides from the earlier tokens' rows (``DECIDE`` with
  ``cap``) and stores the new row. The gate weight of a selection is its score
  ``>> (16 - gate_bits)`` (``route_int``: softmax over all experts).
* ``"top_k"``: a :class:`~moepim.hw.routers.TokenChoiceRouter` (top ``top_k`` logits, softmax
  over them or over all experts, ``renormalize``). With ``drop`` (Switch's capacity), a
  counter per expert counts the routes it took since the sequence began (cleared at token 0
  of a ``MODE_WINDOW`` window; a ``MODE_CACHED`` window continues the sequence): a selection
  of an expert that already took ``cap`` tokens is dropped (not sent; counter
  ``route_drops``), as ``moepim.models.routing.apply_capacity`` in token order.

Two stages, a pipeline: stage 1 runs the gate MVM of a token and holds its logits until
stage 2 (softmax, selection, routes out) takes them; meanwhile the parent loads the next
token's vector. The slower stage sets the pace: stage 1 (the token read, ``d_model/lanes``
cycles, and the gate MVM) at full size, stage 2 (the softmax, ``2E + 23`` cycles, and the
selection) with many experts or few blocks.

Protocol: the parent writes the token's vector into the gate bank (``in_we``/``in_addr``/
``in_data``, as an expert engine's input), then hands the token over on ``i_tokens`` (token
index, ``last``); ``i_tokens.ready`` is high only while stage 1 is idle (its previous token
handed to stage 2), so the parent loads the next vector only then. Routes leave on
``o_routes`` as ``(token, expert, weight)`` beats; after the window's ``last`` token's routes
one beat with ``last`` (and no route) closes the window. ``mode``, ``cap``, ``go_insert``,
``index_mult`` and ``index_shift`` are held by the parent while a window is routed.

Cycles, without back-pressure on ``o_routes`` (``moepim.spec.timing.RouteTiming`` states them,
``LayerTiming.route_cycles`` composes them): stage 1, ``gate_cycles = L + OB + 2`` from the
cycle after the handshake (start, the gate MVM of ``L = mvm_latency`` cycles, ``OB`` logit blocks read; an MLP gate adds its second
layer: ``L1 + HB + L2 + OB + 3``, ``HB`` hidden blocks between the banks), then the hand-over when
stage 2 is idle. Stage 2, ``router_cycles`` from the hand-over, with
``S = softmax.latency(E) + 2`` for ``E`` experts:

* expert choice, ``MODE_WINDOW``: ``S + 1`` (the row into the router and the GO cache), plus
  1 on token 0 with ``go_insert`` (the GO cache cleared);
* expert choice, ``MODE_CACHED``: ``S + rows + E + 5``, ``rows`` the earlier rows the GO cache
  scans (SRAM rows one per cycle; DRAM rows at the DRAM's pace, one per cycle with a DRAM
  answering the cycle after a request), ``E`` cycles to walk the selection mask;
* top-k: ``TokenChoiceRouter.latency(k) + 3 + k`` (``k`` selections, sent or dropped);

plus 1 with the shared gate (its beat).

The window's close (``close_cycles``): the expert-choice selection over the window
(``ExpertChoiceRouter.select_cycles``) and the closing beat, or the closing beat alone.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth import Array, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from moepim.spec.checks import index_bits, need, need_positive, signed_bits
from moepim.spec.numerics import SCORE_BITS
from moepim.spec.tile import TileSpec
from moepim.spec.timing import MODE_CACHED, MODE_HOST, MODE_WINDOW

from .expert_engine import SHIFT_BITS, requantize
from .gocache import OP_CLEAR, OP_DECIDE, OP_INSERT, GateOutputCache
from .matrix_bank import BANK_ID_BITS, MatrixBank
from .params import check_counter_bits, check_multiplier_bits, check_tile, tree_sum
from .routers import ExpertChoiceRouter, TokenChoiceRouter
from .softmax import GateSoftmax

__all__ = ["RouteUnit", "ROUTERS", "MODE_HOST", "MODE_WINDOW", "MODE_CACHED"]

ROUTERS = ("expert_choice", "top_k")
MODE_BITS = 2
INDEX_MULT_BITS, INDEX_SHIFT_BITS = 16, 6          # GateSoftmax's run-time index requant


class RouteUnit(wiring.Component):
    def __init__(self, *, d_model: int, n_experts: int, n_tokens: int, lanes: int,
                 router: str, gate_bits: int = 8, top_k: int = 1, renormalize: bool = False,
                 c_max: int = 1, go_rows: int = 0, max_sequence: int = 0,
                 gate_hidden: int = 0, shared_gate: bool = False, drop: bool = False,
                 multiplier_bits: int = 15,
                 tile: TileSpec, counter_bits=48, core="macro"):
        for name, value in (("d_model", d_model), ("n_experts", n_experts),
                            ("n_tokens", n_tokens), ("lanes", lanes)):
            need_positive(name, value)
        need(router in ROUTERS, "router", router, f"one of {', '.join(ROUTERS)}")
        need(go_rows >= 0, "go_rows", go_rows, "0 (no GO cache) or a row count")
        check_tile(tile)
        check_counter_bits(counter_bits)
        self._router, self._n, self._t, self._lanes = router, n_experts, n_tokens, lanes
        self._gate_bits, self._k, self._renorm = gate_bits, top_k, bool(renormalize)
        need(gate_hidden >= 0, "gate_hidden", gate_hidden,
             "0 (a linear gate) or the MLP gate's hidden width")
        check_multiplier_bits(multiplier_bits)
        input_bits = tile.input_bits
        self._hidden, self._act_bits = gate_hidden, input_bits
        self._shared = bool(shared_gate)
        need(not drop or router == "top_k", "drop", drop,
             "False unless router is top_k (capacity dropping of token choice)")
        self._drop = bool(drop)
        need(not (gate_hidden and shared_gate), "shared_gate", shared_gate,
             "False with an MLP gate (the shared gate reads the token, not the hidden layer)")
        n_cols = n_experts + self._shared       # the shared gate's column after the experts'
        bank = dict(n_slots=1, lanes=lanes, tile=tile, counter_bits=counter_bits, core=core)
        # bank: the gate (or the MLP gate's first layer); logit_bank: the one giving logits
        self.bank = MatrixBank(n_in=d_model, n_out=gate_hidden or n_cols, **bank)
        self.bank2 = (MatrixBank(n_in=gate_hidden, n_out=n_cols, **bank)
                      if gate_hidden else None)
        self.logit_bank = self.bank2 or self.bank
        g = self.logit_bank.geometry
        lim = 1 << (g.output_bits - 1)
        rt = self.logit_bank.row_tiles
        self._logit_bits = signed_bits(-lim * rt, (lim - 1) * rt)
        self.softmax = self.ec = self.go = self.tc = None
        if router == "expert_choice":
            self.softmax = GateSoftmax(n_experts=n_experts, logit_bits=self._logit_bits)
            self.ec = ExpertChoiceRouter(n_tokens=n_tokens, n_experts=n_experts, c_max=c_max)
            if go_rows:
                need(max_sequence >= go_rows, "max_sequence", max_sequence,
                     f"at least go_rows={go_rows}")
                self.go = GateOutputCache(n_experts=n_experts, capacity=go_rows,
                                          max_tokens=max_sequence, counter_bits=counter_bits)
        else:
            self.tc = TokenChoiceRouter(n_experts=n_experts, k=top_k,
                                        logit_bits=self._logit_bits, renormalize=renormalize,
                                        gate_bits=gate_bits)
        # elaborated with the unit; a cached build never elaborates them
        for sub in (self.bank, self.bank2, self.softmax, self.ec, self.go, self.tc,
                    self.ec and self.ec.topk, self.tc and self.tc.topk,
                    self.tc and self.tc.softmax):
            if sub is not None:
                sub._MustUse__silence = True
        cap_shape = unsigned(index_bits(max(n_tokens, max_sequence) + 2))
        self._cap_shape = cap_shape
        c = unsigned(counter_bits)
        go_ports = {}
        go_counts = {}
        if self.go is not None:
            members = self.go.signature.members
            go_ports = {"o_dram_req": members["o_dram_req"], "i_dram_resp": members["i_dram_resp"]}
            go_counts = {f"go_{name}": c for name, _ in self.go.counters.shape()}
        tables = {}
        if gate_hidden:
            tables.update(hidden_mult=In(unsigned(multiplier_bits)),
                          hidden_shift=In(unsigned(SHIFT_BITS)))
        if self._shared:
            tables.update(shared_mult=In(unsigned(multiplier_bits)),
                          shared_shift=In(unsigned(SHIFT_BITS)))
        if gate_hidden or self._shared:
            tables.update(lut_we=In(1), lut_table=In(1), lut_addr=In(unsigned(input_bits)),
                          lut_data=In(signed(max(input_bits, gate_bits + 1))))
        super().__init__({
            "bank_id": In(BANK_ID_BITS),
            **tables,
            "in_we": In(1),
            "in_addr": In(index_bits(self.bank.in_blocks)),
            "in_data": In(data.ArrayLayout(signed(input_bits), lanes)),
            "mode": In(MODE_BITS),
            "cap": In(cap_shape),
            "go_insert": In(1),
            "index_mult": In(unsigned(INDEX_MULT_BITS)),
            "index_shift": In(unsigned(INDEX_SHIFT_BITS)),
            "i_tokens": In(stream.Signature(data.StructLayout({
                "token": unsigned(index_bits(n_tokens)), "last": 1}))),
            "o_routes": Out(stream.Signature(data.StructLayout({
                "token": unsigned(index_bits(n_tokens)),
                "expert": unsigned(index_bits(n_cols)),
                "weight": unsigned(gate_bits), "last": 1}))),
            **go_ports,
            "counters": Out(data.StructLayout({
                "gate_mvms": c, "gate_dac_drives": c, **go_counts,
                **({"route_drops": c} if self._drop else {})})),
        })

    router = property(lambda self: self._router)
    n_experts = property(lambda self: self._n)
    logit_bits = property(lambda self: self._logit_bits)
    has_go_cache = property(lambda self: self.go is not None)
    gate_hidden = property(lambda self: self._hidden)
    shared_gate = property(lambda self: self._shared)
    drop = property(lambda self: self._drop)
    has_tables = property(lambda self: bool(self._hidden or self._shared))
    banks = property(lambda self: [b for b in (self.bank, self.bank2) if b is not None])

    def elaborate(self, platform):
        m = Module()
        n, lanes, bank = self._n, self._lanes, self.bank
        m.submodules.gate_bank = bank
        cnt = self.counters
        m.d.comb += [bank.bank_id.eq(self.bank_id), bank.in_we.eq(self.in_we),
                     bank.in_addr.eq(self.in_addr), bank.in_data.eq(self.in_data),
                     bank.slot.eq(0),
                     cnt.gate_dac_drives.eq(tree_sum(b.dac_drives for b in self.banks))]
        tok = Signal.like(self.i_tokens.payload.token)
        last = Signal()
        out = self.o_routes
        shift = SCORE_BITS - self._gate_bits
        lb = self.logit_bank

        # the logits: partial sums of the logit bank's row tiles, block by block
        logits = Signal(data.ArrayLayout(signed(self._logit_bits), n))
        shared_logit = Signal(signed(self._logit_bits))
        blk = Signal(range(max(bank.out_blocks, lb.out_blocks) + 2))
        got = Signal()                       # lb.rd_data holds block blk - 1
        for b in range(lb.out_blocks):
            with m.If(got & (blk == b + 1)):
                for i in range(lanes):
                    e = b * lanes + i
                    dst = logits[e] if e < n else shared_logit if e == n and self._shared \
                        else None
                    if dst is not None:
                        m.d.sync += dst.eq(tree_sum(lb.rd_data[i][r]
                                                    for r in range(lb.row_tiles)))
        m.d.comb += [b.rd_addr.eq(blk) for b in self.banks]

        # MLP gate: the first layer's partial sums, requantised, through the tanh table into
        # the second layer's input, one block per cycle (block blk - 1 while reading blk)
        hidden_we = Signal()
        ab = self._act_bits

        def table(name, shape, index):
            """A run-time table (``lut_table`` ``index``) and its write port."""
            mem = memory.Memory(shape=shape, depth=1 << ab, init=[])
            m.submodules[name] = mem
            wp = mem.write_port()
            m.d.comb += [wp.en.eq(self.lut_we & (self.lut_table == index)),
                         wp.addr.eq(self.lut_addr), wp.data.eq(self.lut_data)]
            return mem

        def code(value):
            """Table address of a signed ``ab``-bit code."""
            return (value + (1 << (ab - 1)))[:ab]

        if self.bank2 is not None:
            b2, hb = self.bank2, bank.out_blocks
            m.submodules.gate_bank2 = b2
            lut = table("tanh", signed(ab), 0)
            m.d.comb += [b2.bank_id.eq(self.bank_id + 1),
                         b2.slot.eq(0), b2.in_we.eq(hidden_we), b2.in_addr.eq(blk - 1)]
            for i in range(lanes):
                h = requantize(tree_sum(bank.rd_data[i][r] for r in range(bank.row_tiles)),
                               self.hidden_mult, self.hidden_shift, ab)
                rp = lut.read_port(domain="comb")
                m.d.comb += rp.addr.eq(code(h))
                if (hb - 1) * lanes + i < self._hidden:
                    m.d.comb += b2.in_data[i].eq(rp.data)
                else:                        # past the hidden width in the last block
                    m.d.comb += b2.in_data[i].eq(Mux(blk == hb, 0, rp.data))

        if self.go is not None:
            go = self.go
            m.submodules.go_cache = go
            wiring.connect(m, wiring.flipped(self.o_dram_req), go.o_dram_req)
            wiring.connect(m, wiring.flipped(self.i_dram_resp), go.i_dram_resp)
            m.d.comb += [cnt[f"go_{name}"].eq(go.counters[name])
                         for name, _ in go.counters.shape()]
        ec_kind = self._router == "expert_choice"
        if ec_kind:
            sm, ec = self.softmax, self.ec
            m.submodules.softmax = sm
            m.submodules.ec_router = ec
            row = Signal(data.ArrayLayout(unsigned(SCORE_BITS), n))
            sel = Signal(n)
            expert = Signal(range(n + 1))
            pushed_ec, pushed_go = Signal(), Signal()
            dp = SimpleNamespace(sm=sm, ec=ec, row=row, sel=sel, expert=expert,
                                 pushed_ec=pushed_ec, pushed_go=pushed_go)
        else:
            tc = self.tc
            m.submodules.tc_router = tc
            experts = Signal.like(tc.o_routes.payload.experts)
            weights = Signal.like(tc.o_routes.payload.weights)
            n_sel = Signal.like(tc.o_routes.payload.n_selected)
            j = Signal.like(n_sel)
            # capacity dropping: routes each expert took since the sequence began
            taken = Array(Signal(self._cap_shape, name=f"taken{e}") for e in range(n))
            dp = SimpleNamespace(tc=tc, experts=experts, weights=weights, n_sel=n_sel, j=j,
                                 taken=taken)

        # the shared expert's gate weight, from the registered logit
        shared_w = Signal(self._gate_bits)
        shared_b = Signal.like(shared_w)
        if self._shared:
            sig = table("sigmoid", unsigned(self._gate_bits), 1)
            rp = sig.read_port(domain="comb")
            m.d.comb += [rp.addr.eq(code(requantize(shared_logit, self.shared_mult,
                                                    self.shared_shift, ab))),
                         shared_w.eq(rp.data)]

        # stage 1, the gate: MVM of the token the parent loaded, its logits into stage 2
        tok_b = Signal.like(tok)
        last_b = Signal()
        logits_b = Signal.like(logits)
        handoff = Signal()
        stage2_idle = Signal()
        # stage 2's states read the registered token (the ``_b`` signals)
        dp.n, dp.out, dp.cnt, dp.shift = n, out, cnt, shift
        dp.tok_b, dp.last_b, dp.logits_b = tok_b, last_b, logits_b
        with m.FSM(name="gate"):
            with m.State("IDLE"):
                m.d.comb += self.i_tokens.ready.eq(1)
                with m.If(self.i_tokens.valid):
                    m.d.sync += [tok.eq(self.i_tokens.payload.token),
                                 last.eq(self.i_tokens.payload.last)]
                    m.next = "START"
            with m.State("START"):
                m.d.comb += bank.start.eq(1)
                m.d.sync += [cnt.gate_mvms.eq(cnt.gate_mvms + 1), blk.eq(0), got.eq(0)]
                m.next = "MVM"
            with m.State("MVM"):
                with m.If(bank.done):
                    m.next = "LOGITS"
                    if self.bank2 is not None:
                        m.d.sync += blk.eq(1)           # block 0 is being read
                        m.next = "HIDDEN"
            if self.bank2 is not None:
                with m.State("HIDDEN"):
                    m.d.comb += hidden_we.eq(1)
                    m.d.sync += blk.eq(blk + 1)
                    with m.If(blk == bank.out_blocks):
                        m.next = "START2"
                with m.State("START2"):
                    m.d.comb += self.bank2.start.eq(1)
                    m.d.sync += [blk.eq(0), got.eq(0)]
                    m.next = "MVM2"
                with m.State("MVM2"):
                    with m.If(self.bank2.done):
                        m.next = "LOGITS"
            with m.State("LOGITS"):
                # read block blk; its data arrives next cycle (got)
                m.d.sync += [blk.eq(blk + 1), got.eq(1)]
                with m.If(blk == lb.out_blocks):
                    m.next = "HANDOFF"
            with m.State("HANDOFF"):
                # wait for stage 2 to finish the previous token
                with m.If(stage2_idle):
                    m.d.comb += handoff.eq(1)
                    m.d.sync += [logits_b.eq(logits), tok_b.eq(tok), last_b.eq(last),
                                 shared_b.eq(shared_w)]
                    m.next = "IDLE"

        # stage 2, the router: scores, selection, routes out
        with m.FSM(name="route"):
            with m.State("IDLE"):
                m.d.comb += stage2_idle.eq(1)
                first = "SCORE" if ec_kind else "TC_IN"
                with m.If(handoff):
                    m.next = "SHARED" if self._shared else first
                    new_sequence = (self.mode == MODE_WINDOW) & (tok == 0)
                    if self._drop:
                        with m.If(new_sequence):
                            m.d.sync += [x.eq(0) for x in taken]
                    if self.go is not None:
                        with m.If(self.go_insert & new_sequence):
                            m.next = "CLEAR"
            if self._shared:
                with m.State("SHARED"):
                    # the shared expert's gate weight: the token's first route beat
                    m.d.comb += [out.valid.eq(1), out.payload.token.eq(tok_b),
                                 out.payload.expert.eq(n), out.payload.weight.eq(shared_b)]
                    with m.If(out.ready):
                        m.next = first
            if self.go is not None:
                with m.State("CLEAR"):
                    # a new sequence: forget the cached rows (the GO cache is idle here)
                    m.d.comb += [self.go.i_cmd.valid.eq(1),
                                 self.go.i_cmd.payload.op.eq(OP_CLEAR)]
                    with m.If(self.go.i_cmd.ready):
                        m.next = "SHARED" if self._shared else "SCORE"
            if ec_kind:
                self._expert_choice_states(m, dp)
            else:
                self._top_k_states(m, dp)
            with m.State("CLOSE"):
                m.d.comb += [out.valid.eq(1), out.payload.last.eq(1)]
                with m.If(out.ready):
                    m.next = "IDLE"
        return m

    def _expert_choice_states(self, m, dp):
        """Stage 2's states with the expert-choice router: the token's score row from the
        softmax into the window's router (and the GO cache), the window's selections after
        its last token; a cached decode step decides from the GO cache and walks its mask."""
        sm, ec, row, sel = dp.sm, dp.ec, dp.row, dp.sel
        expert, pushed_ec, pushed_go, n = dp.expert, dp.pushed_ec, dp.pushed_go, dp.n
        out, shift, tok_b, last_b = dp.out, dp.shift, dp.tok_b, dp.last_b
        logits_b = dp.logits_b
        with m.State("SCORE"):
            p = sm.i_logits.payload
            m.d.comb += [sm.i_logits.valid.eq(1), p.logits.eq(logits_b),
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
                if self.go is not None:
                    with m.If(self.mode == MODE_CACHED):
                        m.next = "DECIDE"
        with m.State("PUSH"):
            # the row into the window's expert-choice router (and the GO cache)
            m.d.comb += [ec.i_scores.valid.eq(~pushed_ec),
                         ec.i_scores.payload.scores.eq(row),
                         ec.i_scores.payload.cap.eq(self.cap),
                         ec.i_scores.payload.last.eq(last_b)]
            done_ec = pushed_ec | ec.i_scores.ready
            done_go = 1
            if self.go is not None:
                want = self.go_insert & ~pushed_go
                m.d.comb += [self.go.i_cmd.valid.eq(want),
                             self.go.i_cmd.payload.op.eq(OP_INSERT),
                             self.go.i_cmd.payload.scores.eq(row)]
                done_go = ~want | self.go.i_cmd.ready
                with m.If(want & self.go.i_cmd.ready):
                    m.d.sync += pushed_go.eq(1)
            with m.If(ec.i_scores.ready):
                m.d.sync += pushed_ec.eq(1)
            with m.If(done_ec & done_go):
                m.next = "SELECT"
                with m.If(~last_b):
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
        if self.go is not None:
            with m.State("DECIDE"):
                m.d.comb += [self.go.i_cmd.valid.eq(1),
                             self.go.i_cmd.payload.op.eq(OP_DECIDE),
                             self.go.i_cmd.payload.cap.eq(self.cap),
                             self.go.i_cmd.payload.scores.eq(row)]
                with m.If(self.go.i_cmd.ready):
                    m.next = "DECIDED"
            with m.State("DECIDED"):
                m.d.comb += self.go.o_select.ready.eq(1)
                with m.If(self.go.o_select.valid):
                    m.d.sync += [sel.eq(self.go.o_select.payload.mask), expert.eq(0)]
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
                             out.payload.token.eq(tok_b), out.payload.expert.eq(expert),
                             out.payload.weight.eq(weight)]
                with m.If(expert == n):
                    m.next = "CLOSE"
                    with m.If(~last_b):
                        m.next = "IDLE"
                with m.Elif(~hit | out.ready):
                    m.d.sync += expert.eq(expert + 1)

    def _top_k_states(self, m, dp):
        """Stage 2's states with the top-k router: the token's selections and weights, one
        route beat each (with ``drop``, a selection over its expert's capacity is counted and
        not sent)."""
        tc, experts, weights, n_sel = dp.tc, dp.experts, dp.weights, dp.n_sel
        j, taken, out, cnt = dp.j, dp.taken, dp.out, dp.cnt
        tok_b, last_b, logits_b = dp.tok_b, dp.last_b, dp.logits_b
        with m.State("TC_IN"):
            p = tc.i_tokens.payload
            m.d.comb += [tc.i_tokens.valid.eq(1), p.logits.eq(logits_b),
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
                         out.payload.token.eq(tok_b), out.payload.expert.eq(cur)]
            with m.If(j == n_sel):
                m.next = "CLOSE"
                with m.If(~last_b):
                    m.next = "IDLE"
            if self._drop:
                with m.Elif(~keep):
                    m.d.sync += [j.eq(j + 1), cnt.route_drops.eq(cnt.route_drops + 1)]
            with m.Elif(out.ready):
                m.d.sync += j.eq(j + 1)
                if self._drop:
                    m.d.sync += taken[cur].eq(taken[cur] + 1)
