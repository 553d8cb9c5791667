"""``MoELayerAccelerator``: the MoE layer's expert part, groups of experts sharing peripherals.

Composition: the blocks below, wired together, and the layer's own controller (an FSM over
the window protocol below: token input, routing, jobs, timestamps, read-out; it addresses the
buffers and counts cycles). The arithmetic is the blocks'.

* a token buffer (an SRAM macro, :class:`~moepim.hw.sram.Sram`: ``n_tokens`` token vectors,
  ``lanes`` values per row);
* a :class:`~moepim.hw.GroupScheduler` holding the window's plan (per group its
  ``(token, expert, idle_before)`` jobs, each carrying the job's operands: the expert's slot in
  its group, its gate weight and requantisation constants);
* one :class:`~moepim.hw.expert_engine.ExpertEngine` per group (the group's crossbars and
  shared peripheral sets, partial-sum adders, requantisation, ReLU or SwiGLU, gate
  weighting). The groups' engines are identical, so the layer instantiates ONE engine module
  (``ENGINE_MODULE``, listed in ``verilog_modules`` for export) ``n_groups`` times, each with
  its ``bank_base`` (cell images ``n_banks*g + k``, ``k`` over the engine's ``bank_names``):
  export, Verilator build and synthesis handle the engine once instead of once per group;
* shared experts (``shared_d_ff``): the LAST group holds the model's always-on shared expert
  (its expert index is the last, ``n_experts - 1``): a one-slot engine of width
  ``shared_d_ff`` (module ``SHARED_ENGINE_MODULE``), scheduled like any group (one token per
  timestamp); its gate weight is the shared gate (sigmoid table, or full scale);
* a :class:`~moepim.hw.combine.CombineUnit`: the adder tree over the groups working on a
  token, accumulated into the token's row of the output buffer (an SRAM macro), and the final
  requantisation to ``act_bits`` on the way out;
* the routing front end (``router``: ``"expert_choice"`` or ``"top_k"``,
  :class:`~moepim.hw.route_unit.RouteUnit`): the gate matrix on its own crossbars (cell image
  ``gate_bank_id``, after every group's banks), the softmax, the expert-choice router with
  the GO cache (``go_cache_rows`` SRAM rows, later rows spilled through ``o_dram_req`` /
  ``i_dram_resp``) or the top-k router. ``router=None``: the host supplies the routes. An
  MLP gate (``gate_hidden``: LLaMA-MoE's ``W_2 tanh(W_1 x)``) has its two layers on cell
  images ``gate_bank_id`` and ``gate_bank_id + 1``, the hidden requantisation on
  ``gate_hidden_mult``/``gate_hidden_shift`` and its tanh table written on ``i_gate_lut``
  (table 0, address ``code + 2**(act_bits-1)``, value) between windows, like the SiLU tables.
  A sigmoid-gated shared expert (``shared_gate``): its gate is one more gate column,
  requantised with ``gate_shared_mult``/``gate_shared_shift`` into the sigmoid table
  (``i_gate_lut`` table 1); its weight leaves as a route beat of the shared expert.

Under Amaranth's simulator (``moepim.hw.params.AmaranthSimulation``, the platform), which
cannot run the Verilog models, the layer elaborates every group's engine in place
(:attr:`group_engines`, their banks driven by simulator processes,
``moepim.sim.amaranth_macro.add_bank_model``); otherwise it instantiates engines by name.

SwiGLU layers take the experts' SiLU tables on ``i_lut`` (group, address in that engine's
table, value) before the first window; it is accepted between windows (state ``TOKENS``).

Window protocol (the host streams one window at a time: a prompt, or one decode step):

1. ``i_tokens``: the window's token vectors, ``lanes`` values per beat (any order), ``last``
   on the final beat; the window holds tokens ``0 .. token_of_last``.
2. Routing (``route_mode`` != ``MODE_HOST``, held with ``route_cap`` and ``go_insert`` for
   the window): token by token, the vector is read from the token buffer into the gate bank
   (``blocks + 1`` cycles) and handed to the route unit (a two-stage pipeline: the next
   token is read while the router works on this one); its routes
   ``(token, expert, weight)`` leave on ``o_routes``, a beat with ``last`` closes the window
   (``MODE_WINDOW``: routed over the window's tokens, with ``go_insert`` their score rows
   stored in the GO cache, cleared first; ``MODE_CACHED``: one generated token decided by the
   GO cache). Cycles: ``route_cycles`` (counter ``route_cycles``, back-pressure excluded).
   The host builds the plan from the routes (the ``reschedule`` policy runs offline).
3. ``i_jobs``: the plan, one job per beat, ``last`` on the final one; a single beat with
   ``empty`` (and ``last``) means no expert work in this window.
4. Timestamps, in lock step for all groups (one per record on the scheduler's
   ``o_timestamps``): TIMESTAMP (take the timestamp record and every group's job, 1 cycle),
   LOAD (each distinct token of the timestamp read once from the token buffer and broadcast
   to every group that needs it: ``d_model/lanes`` cycles per token, plus 1), START (1),
   WAIT (the engines' job latency), COMBINE (per distinct token, ``d_model/lanes`` cycles,
   plus 1: the groups working on that token add their outputs in an adder tree and
   accumulate into the token's output row).
5. ``o_outputs``: every token of the window, ``lanes`` values per beat, in token then block
   order, ``clamp(requant(acc, combine_mult, combine_shift))``; rows are cleared as read.

Cycles of a timestamp with ``n`` distinct tokens: ``n * (in_blocks + out_blocks) +
job_latency + 5`` (``moepim.spec.timing``: ``compute_cycles`` sums them over a window),
``job_latency`` being the longest of the engines working in it (they differ only with a
shared expert of another width).
Counters: cycles spent in timestamps, timestamps, token loads, per group busy timestamps,
buffer reads/writes (rows); with a router, routing cycles, gate MVMs, the gate bank's DAC
drives and the GO cache's counters (``go_*``).
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth import (
    C,
    Cat,
    ClockSignal,
    Instance,
    Module,
    ResetSignal,
    Signal,
    Value,
    signed,
    unsigned,
)
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from moepim.spec.checks import index_bits, need, signed_bits
from moepim.spec.layer import LayerSpec
from moepim.spec.tile import TileSpec

from .combine import CombineUnit
from .expert_engine import SHIFT_BITS, ExpertEngine, engine_job_layout
from .params import check_counter_bits, check_tile, simulating, tree_sum
from .route_unit import MODE_BITS, MODE_HOST, RouteUnit
from .scheduler import GroupScheduler
from .sram import Sram

__all__ = ["MoELayerAccelerator", "ENGINE_MODULE", "SHARED_ENGINE_MODULE"]

ENGINE_MODULE = "moepim_expert_engine"
SHARED_ENGINE_MODULE = "moepim_shared_engine"


class MoELayerAccelerator(wiring.Component):
    def __init__(self, *, layer: LayerSpec, tile: TileSpec, counter_bits=48):
        need(isinstance(layer, LayerSpec), "layer", layer,
             "a moepim.spec.layer.LayerSpec (a config's: moepim.sim.layer_run.layer_spec)")
        self._spec = layer
        d_model, d_ff, n_experts, n_groups = (layer.d_model, layer.d_ff, layer.n_experts,
                                              layer.n_groups)
        group_size, n_tokens, lanes, gate_bits = (layer.group_size, layer.n_tokens,
                                                  layer.lanes, layer.gate_bits)
        multiplier_bits, ffn, shared_d_ff = layer.multiplier_bits, layer.ffn, layer.shared_d_ff
        router = layer.router
        check_counter_bits(counter_bits)
        check_tile(tile)
        input_bits = tile.input_bits
        self._tile = dict(tile=tile, counter_bits=counter_bits)
        self._d_model, self._d_ff, self._n_experts = d_model, d_ff, n_experts
        self._n_groups, self._group_size, self._n_tokens = n_groups, group_size, n_tokens
        self._lanes, self._gate_bits, self._multiplier_bits = lanes, gate_bits, multiplier_bits
        self._act_bits = input_bits
        self._depth = layer.queue_depth
        self._engine = ExpertEngine(d_model=d_model, d_ff=d_ff, group_size=group_size,
                                    lanes=lanes, gate_bits=gate_bits,
                                    multiplier_bits=multiplier_bits, ffn=ffn, **self._tile)
        self._shared = (ExpertEngine(d_model=d_model, d_ff=shared_d_ff, group_size=1,
                                     lanes=lanes, gate_bits=gate_bits,
                                     multiplier_bits=multiplier_bits, ffn=ffn, **self._tile)
                        if shared_d_ff else None)
        # under Amaranth's simulator: one engine object per group, elaborated in place
        self._group_engines = []
        # routing front end: the gate on its own crossbars and the router (routed experts)
        self._route = None
        if router is not None:
            self._route = RouteUnit(
                d_model=d_model, n_experts=layer.n_routed_experts, n_tokens=n_tokens,
                lanes=lanes, router=router, gate_bits=gate_bits, top_k=layer.top_k,
                renormalize=layer.renormalize, c_max=layer.c_max,
                go_cache_rows=layer.go_cache_rows, max_sequence=layer.max_sequence,
                gate_hidden=layer.gate_hidden, shared_gate=layer.shared_gate, drop=layer.drop,
                multiplier_bits=multiplier_bits, **self._tile)
            self._route._MustUse__silence = True
        self._job_data = engine_job_layout(group_size=group_size, gate_bits=gate_bits,
                                           multiplier_bits=multiplier_bits, ffn=ffn)
        self._scheduler = GroupScheduler(n_groups=n_groups, n_tokens=n_tokens,
                                         n_experts=n_experts, depth=self._depth,
                                         job_data=self._job_data, counter_bits=counter_bits)
        # a cached simulator build never elaborates the design: not a forgotten submodule
        for sub in (self._engine, self._scheduler, self._shared):
            if sub is not None:
                sub._MustUse__silence = True
        eng = self._engine
        bound = eng.rd_data.shape().elem_shape.width
        lim = (1 << (bound - 1))
        self._acc_bits = signed_bits(-lim * n_experts, lim * n_experts)
        tok = unsigned(index_bits(n_tokens))
        blocks = unsigned(index_bits(self.blocks))
        c = unsigned(counter_bits)
        vec = data.ArrayLayout(signed(input_bits), lanes)
        lut = {}
        if ffn == "swiglu":
            widest = max(self._engine_kinds(), key=lambda e: e.lut_depth)
            lut = {"i_lut": In(stream.Signature(data.StructLayout({
                "group": unsigned(index_bits(n_groups)),
                "addr": widest.lut_addr.shape(), "data": widest.lut_data.shape()})))}
        route = {}
        if self._route is not None:
            ru = self._route.signature.members
            route = {"route_mode": In(MODE_BITS), "route_cap": ru["cap"],
                     "go_insert": In(1), "gate_index_mult": ru["index_mult"],
                     "gate_index_shift": ru["index_shift"], "o_routes": ru["o_routes"]}
            if self._route.has_go_cache:
                route.update(o_dram_req=ru["o_dram_req"], i_dram_resp=ru["i_dram_resp"])
            if self._route.gate_hidden:
                route.update(gate_hidden_mult=ru["hidden_mult"],
                             gate_hidden_shift=ru["hidden_shift"])
            if self._route.shared_gate:
                route.update(gate_shared_mult=ru["shared_mult"],
                             gate_shared_shift=ru["shared_shift"])
            if self._route.has_tables:
                route.update(i_gate_lut=In(stream.Signature(data.StructLayout({
                    "table": 1, "addr": ru["lut_addr"].shape,
                    "data": ru["lut_data"].shape}))))
            route_counts = {"route_cycles": c, **{
                name: c for name, _ in self._route.counters.shape()}}
        else:
            route_counts = {}
        super().__init__({
            **lut,
            **route,
            "i_tokens": In(stream.Signature(data.StructLayout({
                "token": tok, "block": blocks, "data": vec, "last": 1}))),
            "i_jobs": In(stream.Signature(data.StructLayout({
                "group": unsigned(index_bits(n_groups)), "token": tok,
                "expert": unsigned(index_bits(n_experts)),
                "idle_before": self._scheduler.i_jobs.payload.job.idle_before.shape(),
                "data": self._job_data, "last": 1, "empty": 1}))),
            "o_outputs": Out(stream.Signature(data.StructLayout({
                "token": tok, "block": blocks, "data": vec, "last": 1}))),
            "combine_mult": In(unsigned(multiplier_bits)),
            "combine_shift": In(unsigned(SHIFT_BITS)),
            "counters": Out(data.StructLayout({
                "cycles": c, "timestamps": c, "token_loads": c,
                "token_reads": c, "token_writes": c, "out_reads": c, "out_writes": c,
                "busy": data.ArrayLayout(c, n_groups),
                "engine_busy_cycles": c, "dac_drives": c, **route_counts})),
        })

    # parameters and derived sizes
    spec = property(lambda self: self._spec)
    d_model = property(lambda self: self._d_model)
    d_ff = property(lambda self: self._d_ff)
    n_experts = property(lambda self: self._n_experts)
    n_groups = property(lambda self: self._n_groups)
    group_size = property(lambda self: self._group_size)
    n_tokens = property(lambda self: self._n_tokens)
    lanes = property(lambda self: self._lanes)
    engine = property(lambda self: self._engine)
    ffn = property(lambda self: self._engine.ffn)
    scheduler = property(lambda self: self._scheduler)
    acc_bits = property(lambda self: self._acc_bits)
    blocks = property(lambda self: self._d_model // self._lanes)

    shared_engine = property(lambda self: self._shared)
    route_unit = property(lambda self: self._route)

    @property
    def gate_bank_id(self) -> int:
        """Cell image of the gate's crossbars: after every group's banks."""
        return sum(len(self._engine_of(g)[0].bank_names) for g in range(self._n_groups))

    def _engine_kinds(self):
        return [self._engine] + ([self._shared] if self._shared else [])

    def _engine_of(self, g: int):
        """Group ``g``'s engine prototype and module name."""
        if self._shared is not None and g == self._n_groups - 1:
            return self._shared, SHARED_ENGINE_MODULE
        return self._engine, ENGINE_MODULE

    @property
    def verilog_modules(self):
        """Modules the layer instantiates by name, to export beside it: the expert engine(s)."""
        mods = [(self._engine, ENGINE_MODULE)]
        if self._shared is not None:
            mods.append((self._shared, SHARED_ENGINE_MODULE))
        return tuple(mods)

    group_engines = property(lambda self: list(self._group_engines),
                             doc="The groups' engines elaborated in place (under Amaranth's "
                             "simulator, after elaboration; empty otherwise).")

    def _engine_in_place(self, g: int) -> ExpertEngine:
        """Group ``g``'s own engine object (Amaranth's simulator), made on first use."""
        while len(self._group_engines) <= g:
            proto, _ = self._engine_of(len(self._group_engines))
            eng = ExpertEngine(d_model=self._d_model, d_ff=proto.d_ff,
                               group_size=proto.group_size, lanes=self._lanes,
                               gate_bits=self._gate_bits, multiplier_bits=self._multiplier_bits,
                               ffn=proto.ffn, **self._tile)
            self._group_engines.append(eng)
        return self._group_engines[g]

    def _engine_port(self, g: int, platform):
        """Group ``g``'s engine: its ports as signals, and its ``Instance`` (under Amaranth's
        simulator: the group's own engine object, both)."""
        if simulating(platform):
            eng = self._engine_in_place(g)
            return eng, eng
        engine, module = self._engine_of(g)
        port = engine.signature.create(path=(f"engine{g}",))
        conns = {}
        for path, member, value in engine.signature.flatten(port):
            name = "__".join(str(p) for p in path)
            if name == "bank_base":
                continue
            conns[("i_" if member.flow == wiring.In else "o_") + name] = Value.cast(value)
        base = len(engine.bank_names) * g
        inst = Instance(module, i_clk=ClockSignal(), i_rst=ResetSignal(),
                        i_bank_base=C(base, len(port.bank_base)), **conns)
        return port, inst

    def elaborate(self, platform):
        m = Module()
        G, B, lanes, ab = self._n_groups, self.blocks, self._lanes, self._act_bits
        sched = self._scheduler
        m.submodules.scheduler = sched
        engines = []
        for g in range(G):
            port, m.submodules[f"engine{g}"] = self._engine_port(g, platform)
            if simulating(platform):
                m.d.comb += port.bank_base.eq(len(port.bank_names) * g)
            engines.append(port)
        cnt = self.counters
        vec_bits = lanes * ab
        acc_row = data.ArrayLayout(signed(self._acc_bits), lanes)

        # buffers: SRAM macros (Amaranth memories under Amaranth's simulator)
        m.submodules.token_buf = tb = Sram(shape=unsigned(vec_bits), depth=self._n_tokens * B)
        m.submodules.out_buf = ob = Sram(shape=acc_row, depth=self._n_tokens * B)

        # timestamp state: per group, active, token and job operands
        active = Signal(G)
        tokens = [Signal(range(self._n_tokens), name=f"timestamp_token{g}") for g in range(G)]
        last_timestamp = Signal()
        pending = Signal(G)
        first_use = Signal(G)
        for g in range(G):
            seen = [active[h] & (tokens[h] == tokens[g]) for h in range(g)]
            m.d.comb += first_use[g].eq(active[g] & ~(Cat(*seen).any() if seen else 0))
        # lowest pending group and its token
        lowest = Signal(G)
        m.d.comb += lowest.eq(pending & (~pending + 1))
        cur_tok = Signal(range(self._n_tokens))
        for g in reversed(range(G)):
            with m.If(pending[g]):
                m.d.comb += cur_tok.eq(tokens[g])
        match = Signal(G)
        m.d.comb += match.eq(Cat(active[g] & (tokens[g] == cur_tok) for g in range(G)))
        blk = Signal(range(B + 1))
        n_window = Signal(range(self._n_tokens + 1))

        # delayed write side of LOAD and COMBINE (the buffers read synchronously)
        ld_valid = Signal()
        cb_valid = Signal()
        wr_blk = Signal(range(B))
        wr_mask = Signal(G)
        wr_row = Signal(range(self._n_tokens * B))

        # token broadcast bus into the engines; the engines' result read address
        for g, e in enumerate(engines):
            m.d.comb += [e.in_data.as_value().eq(tb.r_data), e.in_addr.eq(wr_blk),
                         e.in_we.eq(ld_valid & wr_mask[g]), e.rd_addr.eq(blk)]

        # routing front end: token vectors into the gate bank, routes straight out
        lut_open = Signal()         # the FSM is between windows (tables are written then)
        ru = self._route
        rl_valid = Signal()
        rtok = Signal(range(self._n_tokens + 1))
        if ru is not None:
            m.submodules.route = ru
            m.d.comb += [ru.bank_id.eq(self.gate_bank_id), ru.mode.eq(self.route_mode),
                         ru.cap.eq(self.route_cap), ru.go_insert.eq(self.go_insert),
                         ru.index_mult.eq(self.gate_index_mult),
                         ru.index_shift.eq(self.gate_index_shift),
                         ru.in_data.as_value().eq(tb.r_data), ru.in_addr.eq(wr_blk),
                         ru.in_we.eq(rl_valid)]
            wiring.connect(m, ru.o_routes, wiring.flipped(self.o_routes))
            if ru.has_go_cache:
                wiring.connect(m, ru.o_dram_req, wiring.flipped(self.o_dram_req))
                wiring.connect(m, wiring.flipped(self.i_dram_resp), ru.i_dram_resp)
            if ru.gate_hidden:
                m.d.comb += [ru.hidden_mult.eq(self.gate_hidden_mult),
                             ru.hidden_shift.eq(self.gate_hidden_shift)]
            if ru.shared_gate:
                m.d.comb += [ru.shared_mult.eq(self.gate_shared_mult),
                             ru.shared_shift.eq(self.gate_shared_shift)]
            if ru.has_tables:
                gl = self.i_gate_lut        # the gate's tanh / sigmoid tables, between windows
                m.d.comb += [gl.ready.eq(lut_open), ru.lut_we.eq(gl.valid & lut_open),
                             ru.lut_table.eq(gl.payload.table),
                             ru.lut_addr.eq(gl.payload.addr), ru.lut_data.eq(gl.payload.data)]
            m.d.comb += [cnt[name].eq(ru.counters[name]) for name, _ in ru.counters.shape()]

        # SiLU tables (SwiGLU): written between windows
        if self.ffn == "swiglu":
            lw = self.i_lut
            m.d.comb += lw.ready.eq(lut_open)
            for g, e in enumerate(engines):
                m.d.comb += [e.lut_we.eq(lw.valid & lw.ready & (lw.payload.group == g)),
                             e.lut_addr.eq(lw.payload.addr), e.lut_data.eq(lw.payload.data)]

        # combine and read-out arithmetic: the adder tree over the groups working on the
        # current token into its accumulator row, the requantised row as the output beat
        cu = CombineUnit(n_groups=G, lanes=lanes,
                         result_bits=max(e.rd_data.shape().elem_shape.width for e in engines),
                         acc_bits=self._acc_bits, act_bits=ab,
                         multiplier_bits=self._multiplier_bits)
        m.submodules.combine = cu
        out = self.o_outputs
        m.d.comb += [cu.mask.eq(wr_mask), cu.acc.eq(ob.r_data), cu.mult.eq(self.combine_mult),
                     cu.shift.eq(self.combine_shift), out.payload.data.eq(cu.out)]
        m.d.comb += [cu.results[g][i].eq(e.rd_data[i]) for g, e in enumerate(engines)
                     for i in range(lanes)]
        out_tok = Signal.like(out.payload.token)
        out_blk = Signal.like(out.payload.block)
        out_last = Signal()
        m.d.comb += [out.payload.token.eq(out_tok), out.payload.block.eq(out_blk),
                     out.payload.last.eq(out_last)]
        rd_tok = Signal(range(self._n_tokens + 1))

        # the datapath's signals, for the FSM's states (one method per phase)
        dp = SimpleNamespace(G=G, B=B, lanes=lanes, sched=sched, engines=engines, cnt=cnt,
                             tb=tb, ob=ob, active=active, tokens=tokens,
                             last_timestamp=last_timestamp, pending=pending, first_use=first_use,
                             lowest=lowest, cur_tok=cur_tok, match=match, blk=blk,
                             n_window=n_window, ld_valid=ld_valid, cb_valid=cb_valid,
                             wr_blk=wr_blk, wr_mask=wr_mask, wr_row=wr_row, ru=ru,
                             rl_valid=rl_valid, rtok=rtok, acc_next=cu.acc_next, out=out,
                             out_tok=out_tok, out_blk=out_blk, out_last=out_last,
                             rd_tok=rd_tok)
        with m.FSM(name="layer") as fsm:
            self._input_states(m, dp)
            self._timestamp_states(m, dp)
            self._output_state(m, dp)
        m.d.comb += lut_open.eq(fsm.ongoing("TOKENS"))
        if ru is not None:
            routing = Cat(fsm.ongoing(name) for name in ("ROUTE_LOAD", "ROUTE_GO", "ROUTE_WAIT",
                                                          "ROUTE_CLOSE")).any()
            stalled = self.o_routes.valid & ~self.o_routes.ready
            with m.If(routing & ~stalled):
                m.d.sync += cnt.route_cycles.eq(cnt.route_cycles + 1)

        # timestamp cycles; the engines' counters summed
        running = Cat(fsm.ongoing(name) for name in ("LOAD_FIRST", "LOAD", "START", "WAIT",
                                                      "COMBINE"))
        with m.If(running.any() | (fsm.ongoing("TIMESTAMP") & sched.o_timestamps.valid)):
            m.d.sync += cnt.cycles.eq(cnt.cycles + 1)
        m.d.comb += [
            cnt.engine_busy_cycles.eq(tree_sum(e.counters.busy_cycles for e in engines)),
            cnt.dac_drives.eq(tree_sum(e.counters.dac_drives for e in engines)),
        ]
        return m

    def _input_states(self, m, dp):
        """FSM states of a window's input: its token beats into the token buffer, then (with
        a router, unless the host routes) each token into the gate bank and through the
        route unit, until the window's closing route beat."""
        B, cnt, tb, blk, n_window = dp.B, dp.cnt, dp.tb, dp.blk, dp.n_window
        wr_blk, ru, rl_valid, rtok = dp.wr_blk, dp.ru, dp.rl_valid, dp.rtok
        with m.State("TOKENS"):
            t = self.i_tokens
            m.d.comb += [t.ready.eq(1), tb.w_addr.eq(t.payload.token * B + t.payload.block),
                         tb.w_data.eq(t.payload.data.as_value()), tb.w_en.eq(t.valid)]
            with m.If(t.valid):
                m.d.sync += cnt.token_writes.eq(cnt.token_writes + 1)
                with m.If(t.payload.last):
                    m.d.sync += n_window.eq(t.payload.token + 1)
                    m.next = "JOBS"
                    if ru is not None:
                        with m.If(self.route_mode != MODE_HOST):
                            m.d.sync += [rtok.eq(0), blk.eq(0)]
                            m.next = "ROUTE_LOAD"
        if ru is not None:
            with m.State("ROUTE_LOAD"):
                # token rtok's blocks into the gate bank (written one cycle after the read)
                m.d.comb += tb.r_addr.eq(rtok * B + blk)
                m.d.sync += [rl_valid.eq(blk < B), wr_blk.eq(blk), blk.eq(blk + 1)]
                with m.If(blk == B):
                    m.d.sync += blk.eq(0)
                    m.next = "ROUTE_GO"
            with m.State("ROUTE_GO"):
                m.d.comb += [ru.i_tokens.valid.eq(1), ru.i_tokens.payload.token.eq(rtok),
                             ru.i_tokens.payload.last.eq(rtok == n_window - 1)]
                with m.If(ru.i_tokens.ready):
                    m.d.sync += rtok.eq(rtok + 1)
                    m.next = "ROUTE_WAIT"
                    with m.If(rtok == n_window - 1):
                        m.next = "ROUTE_CLOSE"
            with m.State("ROUTE_WAIT"):
                # the route unit is idle again when it takes tokens
                with m.If(ru.i_tokens.ready):
                    m.next = "ROUTE_LOAD"
            with m.State("ROUTE_CLOSE"):
                # the host takes the routes; the window's closing beat ends the phase
                with m.If(self.o_routes.valid & self.o_routes.ready &
                          self.o_routes.payload.last):
                    m.next = "JOBS"

    def _timestamp_states(self, m, dp):
        """FSM states of the plan and its timestamps: the job beats into the scheduler, then
        per timestamp its record (the scheduler's ``o_timestamps``), the loads of its
        distinct tokens into the engines, the engines' start and wait, and the combine of
        their results into the tokens' accumulator rows."""
        G, B, sched, engines = dp.G, dp.B, dp.sched, dp.engines
        cnt, tb, ob, active, tokens = dp.cnt, dp.tb, dp.ob, dp.active, dp.tokens
        last_timestamp, pending, first_use = dp.last_timestamp, dp.pending, dp.first_use
        lowest, cur_tok = dp.lowest, dp.cur_tok
        match, blk, ld_valid = dp.match, dp.blk, dp.ld_valid
        cb_valid, wr_blk = dp.cb_valid, dp.wr_blk
        wr_mask, wr_row, acc_next, rd_tok = dp.wr_mask, dp.wr_row, dp.acc_next, dp.rd_tok
        with m.State("JOBS"):
            j, sj = self.i_jobs, sched.i_jobs
            m.d.comb += [sj.payload.group.eq(j.payload.group),
                         sj.payload.job.token.eq(j.payload.token),
                         sj.payload.job.expert.eq(j.payload.expert),
                         sj.payload.job.idle_before.eq(j.payload.idle_before),
                         sj.payload.job.data.eq(j.payload.data),
                         sj.payload.last.eq(j.payload.last)]
            with m.If(j.payload.empty):
                m.d.comb += j.ready.eq(1)
                with m.If(j.valid):
                    m.d.sync += rd_tok.eq(0)
                    m.next = "OUTPUT"
            with m.Else():
                m.d.comb += [sj.valid.eq(j.valid), j.ready.eq(sj.ready)]
                with m.If(j.valid & sj.ready & j.payload.last):
                    m.next = "TIMESTAMP"
        with m.State("TIMESTAMP"):
            m.d.comb += sched.o_timestamps.ready.eq(1)
            m.d.comb += [sched.o_issue[g].ready.eq(1) for g in range(G)]
            with m.If(sched.o_timestamps.valid):
                m.d.sync += [active.eq(sched.o_timestamps.payload.active),
                             last_timestamp.eq(sched.o_timestamps.payload.last),
                             cnt.timestamps.eq(cnt.timestamps + 1),
                             cnt.token_loads.eq(cnt.token_loads
                                                + sched.o_timestamps.payload.n_loads)]
                for g, e in enumerate(engines):
                    m.d.sync += tokens[g].eq(sched.o_issue[g].payload.token)
                    job = sched.o_issue[g].payload.data
                    with m.If(sched.o_issue[g].valid):
                        # field by field: the shared engine's slot field is narrower
                        m.d.sync += [e.job[name].eq(job[name])
                                     for name, _ in e.job.shape()]
                        m.d.sync += cnt.busy[g].eq(cnt.busy[g] + 1)
                m.d.sync += blk.eq(0)
                m.next = "LOAD_FIRST"
        with m.State("LOAD_FIRST"):
            m.d.sync += pending.eq(first_use)
            m.next = "LOAD"
        with m.State("LOAD"):
            # read block blk of the current token; write it to the matching engines
            # one cycle later (wr_*)
            m.d.comb += tb.r_addr.eq(cur_tok * B + blk)
            m.d.sync += [ld_valid.eq(pending.any()), wr_blk.eq(blk), wr_mask.eq(match)]
            with m.If(pending.any()):
                m.d.sync += cnt.token_reads.eq(cnt.token_reads + 1)
                with m.If(blk == B - 1):
                    m.d.sync += [blk.eq(0), pending.eq(pending & ~lowest)]
                with m.Else():
                    m.d.sync += blk.eq(blk + 1)
            with m.Else():
                m.next = "START"
        with m.State("START"):
            m.d.comb += [e.start.eq(active[g]) for g, e in enumerate(engines)]
            m.d.sync += [pending.eq(first_use), blk.eq(0)]
            m.next = "WAIT"
        with m.State("WAIT"):
            with m.If(Cat(e.ready for e in engines).all()):
                m.next = "COMBINE"
        with m.State("COMBINE"):
            # read the engines' block blk and the token's accumulator row; add and write
            # back one cycle later
            row = cur_tok * B + blk
            m.d.comb += ob.r_addr.eq(row)
            m.d.sync += [cb_valid.eq(pending.any()), wr_mask.eq(match), wr_row.eq(row)]
            with m.If(cb_valid):
                m.d.comb += [ob.w_en.eq(1), ob.w_addr.eq(wr_row)]
                m.d.comb += ob.w_data.eq(acc_next)
                m.d.sync += cnt.out_writes.eq(cnt.out_writes + 1)
            with m.If(pending.any()):
                m.d.sync += cnt.out_reads.eq(cnt.out_reads + 1)
                with m.If(blk == B - 1):
                    m.d.sync += [blk.eq(0), pending.eq(pending & ~lowest)]
                with m.Else():
                    m.d.sync += blk.eq(blk + 1)
            with m.Else():
                with m.If(last_timestamp):
                    m.d.sync += rd_tok.eq(0)
                    m.next = "OUTPUT"
                with m.Else():
                    m.next = "TIMESTAMP"

    def _output_state(self, m, dp):
        """FSM state of the read-out: every token's accumulator row, requantised, one beat
        per block with back-pressure, cleared as read."""
        B, cnt, ob, blk, n_window = dp.B, dp.cnt, dp.ob, dp.blk, dp.n_window
        out, out_tok, out_blk = dp.out, dp.out_tok, dp.out_blk
        out_last, rd_tok = dp.out_last, dp.rd_tok
        with m.State("OUTPUT"):
            # pipelined read-out with back-pressure: the read port holds its data while
            # the output beat waits; each row is cleared as it is read
            more = rd_tok < n_window
            advance = ~out.valid | out.ready
            m.d.comb += [ob.r_en.eq(advance), ob.r_addr.eq(rd_tok * B + blk)]
            with m.If(advance):
                m.d.sync += out.valid.eq(more)
                with m.If(more):
                    m.d.comb += [ob.w_en.eq(1), ob.w_addr.eq(rd_tok * B + blk),
                                 ob.w_data.as_value().eq(0)]
                    m.d.sync += [cnt.out_writes.eq(cnt.out_writes + 1),
                                 out_tok.eq(rd_tok), out_blk.eq(blk),
                                 out_last.eq((rd_tok == n_window - 1) & (blk == B - 1)),
                                 cnt.out_reads.eq(cnt.out_reads + 1)]
                    with m.If(blk == B - 1):
                        m.d.sync += [blk.eq(0), rd_tok.eq(rd_tok + 1)]
                    with m.Else():
                        m.d.sync += blk.eq(blk + 1)
                with m.Else():
                    m.d.sync += blk.eq(0)
                    m.next = "TOKENS"

