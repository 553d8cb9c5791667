"""``RouteUnit``: the MoE layer's routing front end, a two-stage pipeline over tokens.

Composition (wiring only):

1. :class:`~moepim.hw.gate.GateFrontEnd`, stage 1: the gate matrix on its own crossbars
   (a linear gate, or LLaMA-MoE's MLP gate ``W_2 tanh(W_1 x)`` on two banks with the tanh
   table), the integer logits, and with ``shared_gate`` the shared expert's sigmoid gate
   (:class:`~moepim.hw.gate.SharedGate`). Tables are written through ``lut_we``/
   ``lut_table``/``lut_addr``/``lut_data`` before the run (table 0 tanh, 1 sigmoid).
2. Stage 2, the router, by ``router`` (a build parameter):
   :class:`~moepim.hw.route_back_end.ExpertChoiceBackEnd` (``"expert_choice"``: the softmax,
   the expert-choice router and, with ``go_cache_rows``, the GO cache whose later rows spill
   through ``o_dram_req``/``i_dram_resp``) or
   :class:`~moepim.hw.route_back_end.TopKBackEnd` (``"top_k"``: the token-choice router,
   with ``drop`` the per-expert capacity counters).

Stage 1 hands a token's logits to stage 2 on a stream (``o_logits`` -> ``i_logits``): it
holds them until stage 2 is idle, then takes the parent's next token while stage 2 routes
this one. The slower stage sets the pace: stage 1 (the token read, ``d_model/lanes``
cycles, and the gate MVM) at full size, stage 2 (the softmax, ``2E + 23`` cycles, and the
selection) with many experts or few blocks.

Protocol: the parent writes the token's vector into the gate bank (``in_we``/``in_addr``/
``in_data``, as an expert engine's input), then hands the token over on ``i_tokens`` (token
index, ``last``); ``i_tokens.ready`` is high only while stage 1 is idle (its previous token
handed to stage 2), so the parent loads the next vector only then. Routes leave on
``o_routes`` as ``(token, expert, weight)`` beats; after the window's ``last`` token's routes
one beat with ``last`` (and no route) closes the window. ``mode``, ``cap``, ``go_insert``,
``index_mult`` and ``index_shift`` are held by the parent while a window is routed.

Cycles, without back-pressure on ``o_routes``: each stage's are in its module's docstring;
``moepim.spec.timing.RouteTiming`` states them and ``LayerTiming.route_cycles`` composes them
(the two-stage recurrence and the window's close).
"""

from __future__ import annotations

from amaranth import Module
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from moepim.spec.checks import need, need_positive
from moepim.spec.layer import ROUTERS
from moepim.spec.tile import TileSpec
from moepim.spec.timing import MODE_CACHED, MODE_HOST, MODE_WINDOW

from .gate import GateFrontEnd
from .params import check_counter_bits, check_multiplier_bits, check_tile
from .route_back_end import (
    INDEX_MULT_BITS,
    INDEX_SHIFT_BITS,
    MODE_BITS,
    ExpertChoiceBackEnd,
    TopKBackEnd,
)

__all__ = ["RouteUnit", "ROUTERS", "MODE_HOST", "MODE_WINDOW", "MODE_CACHED", "MODE_BITS",
           "INDEX_MULT_BITS", "INDEX_SHIFT_BITS"]



# the gate front end's optional inputs (an MLP gate's, a shared gate's, their tables')
TABLE_INPUTS = ("hidden_mult", "hidden_shift", "shared_mult", "shared_shift", "lut_we",
                "lut_table", "lut_addr", "lut_data")


class RouteUnit(wiring.Component):
    def __init__(self, *, d_model: int, n_experts: int, n_tokens: int, lanes: int,
                 router: str, gate_bits: int = 8, top_k: int = 1, renormalize: bool = False,
                 c_max: int = 1, go_cache_rows: int = 0, max_sequence: int = 0,
                 gate_hidden: int = 0, shared_gate: bool = False, drop: bool = False,
                 multiplier_bits: int = 15,
                 tile: TileSpec, counter_bits=48):
        for name, value in (("d_model", d_model), ("n_experts", n_experts),
                            ("n_tokens", n_tokens), ("lanes", lanes)):
            need_positive(name, value)
        need(router in ROUTERS, "router", router, f"one of {', '.join(ROUTERS)}")
        need(go_cache_rows >= 0, "go_cache_rows", go_cache_rows, "0 (no GO cache) or a row count")
        check_tile(tile)
        check_counter_bits(counter_bits)
        check_multiplier_bits(multiplier_bits)
        need(not drop or router == "top_k", "drop", drop,
             "False unless router is top_k (capacity dropping of token choice)")
        self._router = router
        self.front = GateFrontEnd(d_model=d_model, n_experts=n_experts, n_tokens=n_tokens,
                                  lanes=lanes, tile=tile, gate_bits=gate_bits,
                                  gate_hidden=gate_hidden, shared_gate=shared_gate,
                                  multiplier_bits=multiplier_bits, counter_bits=counter_bits)
        stage = dict(n_experts=n_experts, n_tokens=n_tokens,
                     logit_bits=self.front.logit_bits, gate_bits=gate_bits,
                     max_sequence=max_sequence, shared_gate=shared_gate,
                     counter_bits=counter_bits)
        if router == "expert_choice":
            self.back = ExpertChoiceBackEnd(c_max=c_max, go_cache_rows=go_cache_rows, **stage)
        else:
            self.back = TopKBackEnd(top_k=top_k, renormalize=renormalize, drop=drop, **stage)
        for sub in (self.front, self.back):     # a cached build never elaborates them
            sub._MustUse__silence = True
        fe, be = self.front.signature.members, self.back.signature.members
        go_ports = ({"o_dram_req": be["o_dram_req"], "i_dram_resp": be["i_dram_resp"]}
                    if self.go is not None else {})
        tables = {name: fe[name] for name in TABLE_INPUTS if name in fe}
        super().__init__({
            "bank_id": fe["bank_id"],
            **tables,
            "in_we": fe["in_we"],
            "in_addr": fe["in_addr"],
            "in_data": fe["in_data"],
            "mode": be["mode"],
            "cap": be["cap"],
            "go_insert": In(1),
            "index_mult": be["index_mult"],
            "index_shift": be["index_shift"],
            "i_tokens": fe["i_tokens"],
            "o_routes": be["o_routes"],
            **go_ports,
            "counters": Out(data.StructLayout({
                name: field.shape for sub in (self.front, self.back)
                for name, field in sub.counters.shape()})),
        })

    router = property(lambda self: self._router)
    n_experts = property(lambda self: self.back.n_experts)
    logit_bits = property(lambda self: self.front.logit_bits)
    gate_bits = property(lambda self: self.front.gate_bits)
    has_go_cache = property(lambda self: self.go is not None)
    gate_hidden = property(lambda self: self.front.gate_hidden)
    shared_gate = property(lambda self: self.front.shared_gate)
    drop = property(lambda self: getattr(self.back, "drop", False))
    has_tables = property(lambda self: self.front.has_tables)
    # the blocks inside (exported as tops by ``moepim export``; banks driven by the
    # simulator models under Amaranth's simulator)
    bank = property(lambda self: self.front.bank)
    bank2 = property(lambda self: self.front.bank2)
    logit_bank = property(lambda self: self.front.logit_bank)
    banks = property(lambda self: self.front.banks)
    softmax = property(lambda self: getattr(self.back, "softmax", None))
    ec = property(lambda self: getattr(self.back, "ec", None))
    go = property(lambda self: getattr(self.back, "go", None))
    tc = property(lambda self: getattr(self.back, "tc", None))

    def elaborate(self, platform):
        m = Module()
        fe, be = self.front, self.back
        m.submodules.gate = fe
        m.submodules.router = be
        fwd = ["bank_id", "in_we", "in_addr", "in_data"] + [
            name for name in TABLE_INPUTS if name in fe.signature.members]
        m.d.comb += [getattr(fe, name).eq(getattr(self, name)) for name in fwd]
        m.d.comb += [getattr(be, name).eq(getattr(self, name))
                     for name in ("mode", "cap", "index_mult", "index_shift")]
        wiring.connect(m, wiring.flipped(self.i_tokens), fe.i_tokens)
        wiring.connect(m, fe.o_logits, be.i_logits)
        wiring.connect(m, be.o_routes, wiring.flipped(self.o_routes))
        if self.go is not None:
            m.d.comb += be.go_insert.eq(self.go_insert)
            wiring.connect(m, be.o_dram_req, wiring.flipped(self.o_dram_req))
            wiring.connect(m, wiring.flipped(self.i_dram_resp), be.i_dram_resp)
        for sub in (fe, be):
            m.d.comb += [self.counters[name].eq(sub.counters[name])
                         for name, _ in sub.counters.shape()]
        return m
