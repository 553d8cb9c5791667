"""Benches of the route unit's two stages alone: the gate front end
(``moepim.hw.gate.GateFrontEnd``) and a router stage (``moepim.hw.route_back_end``)."""

from __future__ import annotations

import numpy as np

from .bits import pack_array
from .streams import StreamSink, StreamSource

__all__ = ["gate_front_end", "route_stage"]

LIMIT = 200_000         # cycles a bench waits for progress before it gives up


async def gate_front_end(io, *, tokens, lanes, input_bits, held, tables, n_experts,
                         shared_gate, stall_p, seed):
    """Per token (``(token, last, vector)``): its vector written into the gate bank block by
    block, the hand-over on ``i_tokens``, then its logits taken from ``o_logits`` (seeded
    back-pressure). ``held``: inputs set once (``bank_id``, requantisation constants);
    ``tables``: ``(table, addr, data)`` writes before the first token. Returns per token its
    logits, the shared expert's weight (``shared_gate``) and the cycles from the cycle after
    the hand-over to the first cycle ``o_logits`` is valid."""
    rng = np.random.default_rng(seed)
    for name, value in held.items():
        io.set(name, value)
    for table, addr, data in tables:
        io.set("lut_we", 1)
        io.set("lut_table", table)
        io.set("lut_addr", addr)
        io.set("lut_data", data)
        await io.tick()
    if tables:
        io.set("lut_we", 0)
    sink = StreamSink(io, "o_logits", rng, stall_p)
    out = []
    for token, last, vector in tokens:
        for b in range(len(vector) // lanes):
            io.set("in_we", 1)
            io.set("in_addr", b)
            io.set("in_data", pack_array(vector[b * lanes:(b + 1) * lanes], input_bits))
            await io.tick()
        io.set("in_we", 0)
        io.set("i_tokens.valid", 1)
        io.set("i_tokens.payload.token", token)
        io.set("i_tokens.payload.last", last)
        if not await io.wait_high("i_tokens.ready", LIMIT):
            raise TimeoutError("gate front end never took a token")
        await io.tick()
        io.set("i_tokens.valid", 0)
        handed = io.cycle
        valid_at = None
        while True:
            sink.ready()
            got = None
            if valid_at is None and await io.get("o_logits.valid"):
                valid_at = io.cycle
            if await sink.beat():
                got = [[await sink.get(f"logits.{e}") for e in range(n_experts)],
                       await sink.get("shared_weight") if shared_gate else None,
                       await sink.get("token"), await sink.get("last")]
            await io.tick()
            if got is not None:
                out.append(got + [valid_at - handed])
                break
            if io.cycle - handed > LIMIT:
                raise TimeoutError("gate front end made no progress")
        sink.close()
    return out


async def route_stage(io, *, windows, logit_bits, shared_gate, gap_p, stall_p, seed):
    """Windows of a router stage: each a dict with the held inputs (``held``: ``mode``,
    ``cap``, ``index_mult``, ``index_shift``) and its ``tokens`` (``(token, logits,
    shared_weight)``), offered on ``i_logits`` with seeded gaps (``last`` on the final one);
    route beats taken with seeded back-pressure until the closing beat. Returns per window
    its routes ``(token, expert, weight)`` in output order and the cycle of each token's
    hand-over and of the closing beat."""
    rng = np.random.default_rng(seed)
    sink = StreamSink(io, "o_routes", rng, stall_p)
    result = []
    for w in windows:
        for name, value in w["held"].items():
            io.set(name, value)
        src = StreamSource(io, "i_logits", rng, gap_p, lambda t: {
            "token": t[0], "logits": pack_array(t[1], logit_bits),
            **({"shared_weight": t[2]} if shared_gate else {})})
        src.load(w["tokens"])
        routes, taken, closed = [], [], None
        start = io.cycle
        while closed is None:
            src.offer()
            sink.ready()
            if await src.taken():
                taken.append(io.cycle)
            if await sink.beat():
                if await sink.get("last"):
                    closed = io.cycle
                else:
                    routes.append([await sink.get("token"), await sink.get("expert"),
                                   await sink.get("weight")])
            await io.tick()
            if io.cycle - start > LIMIT:
                raise TimeoutError("router stage made no progress")
        src.close()
        sink.close()
        result.append({"routes": routes, "taken": taken, "closed": closed})
    return result
