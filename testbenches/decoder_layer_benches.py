"""Bench of the whole decoder layer (``moepim.hw.decoder_layer.DecoderLayer``): the run-time
constants and tables written once, then windows of rows, the bench acting as the host of the
MoE layer's window protocol (its route inputs held for the window, its routes taken and
compared with the expected ones, the plan offered from the cycle after the closing route
beat, the GO cache's DRAM served). Plain data in and out; the golden model and the plans
stay with the test (``tests/test_decoder_layer.py``)."""

from __future__ import annotations

import numpy as np

from .bits import pack_array, unpack_array
from .streams import DramResponder, StreamSink, StreamSource, write_table

__all__ = ["decoder_layer_windows"]

LIMIT = 400_000         # cycles a window may take before the bench gives up
MOE_COUNTERS = ("cycles", "timestamps", "token_loads")      # the MoE layer's, per window
KV_COUNTERS = ("words_written", "words_read", "rows_written", "rows_read")  # the KV cache's


async def _write_norm(io, prefix, words, act_bits):
    """A NormUnit's gains (and biases) through its parameter port ``prefix``."""
    for addr, word in enumerate(words):
        io.set(f"{prefix}_we", 1)
        io.set(f"{prefix}_addr", addr)
        io.set(f"{prefix}_data.gamma", pack_array(word[0], act_bits))
        if len(word) > 1:
            io.set(f"{prefix}_data.beta", pack_array(word[1], act_bits))
        await io.tick()
    io.set(f"{prefix}_we", 0)


async def decoder_layer_windows(io, *, norm_params, moe_norm_params, rope_table, coef_bits,
                                held, silu_tables, gate_tables, windows, lanes, act_bits,
                                routing, dram, seed, kv_dram_base=None):
    """``norm_params`` / ``moe_norm_params``: the attention norm's / the MoE norm's words
    (``[gamma]`` or ``[gamma, beta]``, ``lanes`` codes each); ``rope_table``: ``(address,
    [cos_0, sin_0, ...])`` rows; ``held``: the constant inputs by name (``norm_eps``,
    ``res2_x1_mult``, ``combine_mult``, ``gate_index_mult``, ...); ``silu_tables`` /
    ``gate_tables``: ``(group, addr, value)`` / ``(table, addr, value)`` writes; ``routing``:
    the layer has a route unit; ``dram``: the layer's DRAM port (``o_dram_req`` /
    ``i_dram_resp``: the GO cache's, and the KV cache's with ``kv_dram_base``, the KV
    region's first address; served every cycle by ``DramResponder``). ``windows``: each
    ``{"first_position", "rows", "route_mode", "route_cap", "go_insert", "routes", "jobs",
    "gap_p", "stall_p"}`` (``routes``: the expected ``[token, expert, weight]``, sorted;
    ``jobs``: ``{"group", "token", "expert", "idle_before", "operands"}``, empty: no expert
    work).

    Returns per window: the ``y`` codes per row (``outputs``), each output beat's ``last``
    (``lasts``), the routes taken (``routes``, sorted) and whether they were the expected
    ones (``routes_match``), the cycle of the first ``i_rows`` handshake (``first_in``), the
    cycle after the last ``o_rows`` handshake (``end``), every change of ``phase`` as
    ``[cycle, phase]`` (``phases``) and the MoE layer's counters after it (``counters``).
    With ``kv_dram_base``: the KV region's word addresses written and read in the window
    (``kv_writes``, ``kv_reads``, less the base) and the attention block's ``kv_counters``
    after it (cumulative)."""
    rng = np.random.default_rng(seed)
    await _write_norm(io, "norm_param", norm_params, act_bits)
    await _write_norm(io, "moe_norm_param", moe_norm_params, act_bits)
    for addr, values in rope_table:
        io.set("rope_lut_we", 1)
        io.set("rope_lut_addr", addr)
        io.set("rope_lut_data", pack_array(values, coef_bits))
        await io.tick()
    if rope_table:
        io.set("rope_lut_we", 0)
    for name, value in held.items():
        io.set(name, value)
    if silu_tables:
        await write_table(io, "i_lut", ("group", "addr", "data"), silu_tables, rng, 0.0)
    if gate_tables:
        await write_table(io, "i_gate_lut", ("table", "addr", "data"), gate_tables, rng, 0.0)

    def job_beat(job):
        if job is None:
            return {"empty": 1}
        return {"empty": 0, "group": job["group"], "token": job["token"],
                "expert": job["expert"], "idle_before": job["idle_before"],
                **{f"data.{name}": value for name, value in job["operands"].items()}}

    memory = DramResponder(io) if dram else None
    result = []
    for window in windows:
        rows = window["rows"]
        n_beats = len(rows[0]) // lanes
        routed = not routing or window["route_mode"] == 0
        if routing:
            io.set("route_mode", window["route_mode"])
            io.set("route_cap", window["route_cap"])
            io.set("go_insert", window["go_insert"])
        # the window's start
        io.set("i_windows.valid", 1)
        io.set("i_windows.payload.n_rows", len(rows))
        io.set("i_windows.payload.first_position", window["first_position"])
        start = io.cycle
        while not await io.get("i_windows.ready"):
            await io.tick()
            if io.cycle - start > LIMIT:
                raise TimeoutError("decoder layer took no window")
        await io.tick()
        io.set("i_windows.valid", 0)
        src = StreamSource(io, "i_rows", rng, window["gap_p"],
                           lambda beat: {"codes": beat, "last": 0}, mark_last=False)
        sink = StreamSink(io, "o_rows", rng, window["stall_p"])
        jobs_in = StreamSource(io, "i_jobs", rng, 0.0, job_beat)
        routes_out = StreamSink(io, "o_routes", rng, 0.0, draw_at_zero=False) \
            if routing else None
        src.load(pack_array(row[b * lanes:(b + 1) * lanes], act_bits)
                 for row in rows for b in range(n_beats))
        jobs_in.load(list(window["jobs"]) or [None])
        n_writes, n_reads = (len(memory.writes), len(memory.reads)) if memory else (0, 0)
        codes, lasts, routes, first_in, phases, phase = [], [], [], None, [], None
        start = io.cycle
        while len(lasts) < len(rows) * n_beats:
            src.offer()
            sink.ready()
            # the plan: offered from the cycle after the closing route beat
            jobs_in.offer(enabled=routed)
            if not routed:
                routes_out.ready()
            if memory:
                memory.offer()
            if await src.taken() and first_in is None:
                first_in = io.cycle
            await jobs_in.taken()
            if not routed:
                if await routes_out.beat():
                    if await routes_out.get("last"):
                        routed = True
                    else:
                        routes.append([await routes_out.get(f)
                                       for f in ("token", "expert", "weight")])
            if memory:
                await memory.serve()
            now = await io.get("phase")
            if now != phase:
                phases.append([io.cycle, now])
                phase = now
            if await sink.beat():
                codes += unpack_array(await sink.get("codes"), act_bits, lanes, True).tolist()
                lasts.append(await sink.get("last"))
            await io.tick()
            if memory:
                memory.tick()
            if io.cycle - start > LIMIT:
                raise TimeoutError("decoder layer made no progress")
        end = io.cycle
        src.close()
        sink.close()
        jobs_in.close()
        if routes_out is not None:
            routes_out.close()
        if memory:
            memory.close()
        names = MOE_COUNTERS + (("route_cycles",) if routing else ())
        counters = {name: await io.get(f"counters.{name}") for name in names}
        res = {}
        if kv_dram_base is not None:
            res["kv_writes"] = [a - kv_dram_base for a in memory.writes[n_writes:]
                                if a >= kv_dram_base]
            res["kv_reads"] = [a - kv_dram_base for a in memory.reads[n_reads:]
                               if a >= kv_dram_base]
            res["kv_counters"] = {name: await io.get(f"kv_counters.{name}")
                                  for name in KV_COUNTERS}
        await io.tick()             # the next window's sets come after this cycle's gets
        width = n_beats * lanes
        result.append({"outputs": [codes[r * width:(r + 1) * width] for r in range(len(rows))],
                       "lasts": [lasts[r * n_beats:(r + 1) * n_beats] for r in range(len(rows))],
                       "routes": sorted(routes), "routes_match": sorted(routes) ==
                       sorted(window["routes"]), "first_in": first_in, "end": end,
                       "phases": phases, "counters": counters, **res})
    return result
