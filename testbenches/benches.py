"""Transaction benches of the layer (the host of ``moepim run``), the tile group and the router,
scheduler and GO-cache blocks, simulator-independent.

Each bench drives its block through :mod:`moepim.testbenches.harness`, composed of the
components of :mod:`moepim.testbenches.streams` (seeded input gaps, output back-pressure, the
DRAM, table writes), and returns plain data (lists of ints), so Amaranth's simulator,
Verilator and Icarus runs can be compared with each other and with the functional models.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .attention_benches import attention_queries
from .attention_block_benches import attention_block_windows
from .decoder_layer_benches import decoder_layer_windows
from .decoder_unit_benches import residual_pairs, rope_vectors
from .engine_benches import expert_engine_jobs, matrix_bank_jobs
from .norm_benches import norm_rows
from .projection_benches import argmax_vectors, projection_rows
from .route_benches import gate_front_end, route_stage
from .stimulus import LayerStimulus
from .streams import DramResponder, StreamSink, StreamSource, write_table

__all__ = ["BENCHES"]


async def topk_windows(io, *, windows, gap_p, stall_p, seed):
    """Windows of ``(scores, count)``; returns per window the selected indices and the cycles
    from its first item's handshake to the handshake of its last result."""
    rng = np.random.default_rng(seed)
    selected, spans = [], []
    out = StreamSink(io, "o_selected", rng, stall_p)
    for scores, count in windows:
        got, start = [], None
        items = StreamSource(io, "i_items", rng, gap_p, lambda item, c=count: {
            "index": item[0], "score": int(item[1]), "count": c})
        items.load(enumerate(scores))
        while True:
            items.offer()
            out.ready()
            took = await items.taken()
            done = False
            if await out.beat():
                got.append(await out.get("index"))
                done = bool(await out.get("last"))
            if took:
                start = io.cycle if start is None else start
            await io.tick()
            if done:
                break
            if io.cycle > 100_000:
                raise TimeoutError("top-k bench made no progress")
        selected.append(got)
        spans.append(io.cycle - start)
    io.set("i_items.valid", 0)
    return {"selected": selected, "spans": spans}


async def scheduler_plan(io, *, plan, windows, gap_p, stall_p, seed):
    """Play a plan ``[[(token, expert, idle_before), ...] per group]`` ``windows`` times;
    return the timestamp records, the issues per group, cycles per window and the counters."""
    rng = np.random.default_rng(seed)
    n_groups = len(plan)
    jobs = [(g, job) for g in range(n_groups) for job in plan[g]]
    records, issues, cycles = [], [[] for _ in range(n_groups)], []

    async def sample(ready):
        for g in range(n_groups):
            if ready[g] and await io.get(f"o_issue.{g}.valid"):
                issues[g].append([await io.get(f"o_issue.{g}.payload.token"),
                                  await io.get(f"o_issue.{g}.payload.expert")])

    src = StreamSource(io, "i_jobs", rng, gap_p, lambda job: {
        "group": job[0], "job.token": job[1][0], "job.expert": job[1][1],
        "job.idle_before": job[1][2]})
    sinks = [StreamSink(io, f"o_issue.{g}", rng, stall_p) for g in range(n_groups)]
    record_sink = StreamSink(io, "o_timestamps", rng, stall_p)
    for _ in range(windows):
        start = None
        src.load(jobs)
        while True:
            src.offer()
            ready = [int(sink.ready()) for sink in sinks + [record_sink]]
            took = await src.taken()
            await sample(ready)
            last_timestamp = False
            if await record_sink.beat():
                active = await io.get("o_timestamps.payload.active")
                row_t, row_e = [], []
                for g in range(n_groups):
                    on = active >> g & 1
                    row_t.append(await io.get(f"o_timestamps.payload.tokens.{g}") if on else -1)
                    row_e.append(await io.get(f"o_timestamps.payload.experts.{g}") if on else -1)
                records.append([row_t, row_e, await io.get("o_timestamps.payload.n_loads")])
                last_timestamp = bool(await io.get("o_timestamps.payload.last"))
            if took:
                start = io.cycle if start is None else start
            await io.tick()
            if last_timestamp:
                break
            if io.cycle > 100_000:
                raise TimeoutError("scheduler bench made no progress")
        cycles.append(io.cycle - start)
        src.close()
        # the issues of the window's last timestamp may still be waiting
        for _ in range(64):
            for g in range(n_groups):
                io.set(f"o_issue.{g}.ready", 1)
            io.set("o_timestamps.ready", 1)
            await sample([1] * n_groups)
            await io.tick()
    counters = {"timestamps": await io.get("counters.timestamps"),
                "tokens_loaded": await io.get("counters.tokens_loaded"),
                "stall_cycles": await io.get("counters.stall_cycles"),
                "busy": [await io.get(f"counters.busy.{g}") for g in range(n_groups)],
                "idle": [await io.get(f"counters.idle.{g}") for g in range(n_groups)]}
    await io.tick()
    return {"timestamps": records, "issues": issues, "cycles": cycles, "counters": counters}


async def go_cache_commands(io, *, commands, score_bits, decide_op, latency_max, stall_p, seed):
    """Play GO-cache commands ``(op, cap, scores)`` against a DRAM that answers reads in order
    after 1..``latency_max`` cycles and accepts requests with probability ``1 - stall_p``.
    Returns the selection masks of DECIDE (``decide_op``) commands and the counters."""
    rng = np.random.default_rng(seed)
    dram, pending, masks = {}, [], []
    requests = StreamSink(io, "o_dram_req", rng, stall_p)      # a DRAM that stalls requests
    select = StreamSink(io, "o_select", rng, stall_p)

    async def dram_side(req_ready):
        if req_ready and await io.get("o_dram_req.valid"):
            if await io.get("o_dram_req.payload.write"):
                dram[await io.get("o_dram_req.payload.addr")] = \
                    await io.get("o_dram_req.payload.data")
            else:
                when = io.cycle + int(rng.integers(1, latency_max + 1))
                when = max(when, pending[-1][0] if pending else 0)
                pending.append((when, dram[await io.get("o_dram_req.payload.addr")]))

    for op, cap, scores in commands:
        word = sum(int(s) << (score_bits * e) for e, s in enumerate(scores))
        sent, got = False, op != decide_op
        while not (sent and got):
            io.set("i_cmd.valid", int(not sent))
            io.set("i_cmd.payload.op", op)
            io.set("i_cmd.payload.cap", cap)
            io.set("i_cmd.payload.scores", word)
            req_ready = requests.ready()
            offer = bool(pending) and pending[0][0] <= io.cycle
            io.set("i_dram_resp.valid", int(offer))
            if offer:
                io.set("i_dram_resp.payload.data", pending[0][1])
            select.ready()
            if not sent and await io.get("i_cmd.ready"):
                sent = True
            resp_taken = offer and await io.get("i_dram_resp.ready")
            await dram_side(req_ready)
            if await select.beat():
                masks.append(await select.get("mask"))
                got = True
            await io.tick()
            if resp_taken:
                pending.pop(0)
            if io.cycle > 200_000:
                raise TimeoutError("GO-cache bench made no progress")
    io.set("i_cmd.valid", 0)
    for _ in range(32):                       # let a final spill reach the DRAM
        io.set("o_dram_req.ready", 1)
        io.set("o_select.ready", 1)
        io.set("i_dram_resp.valid", 0)
        await dram_side(1)
        await io.tick()
    names = ("sram_reads", "sram_writes", "sram_bits", "hits", "spills", "dram_reads",
             "dram_bytes")
    counters = {k: await io.get(f"counters.{k}") for k in names}
    await io.tick()
    return {"masks": masks, "counters": counters}


async def gate_softmax(io, *, rows, logit_bits, stall_p, seed):
    """Rows ``(logits, mask, index_mult, index_shift)`` one at a time; returns per row its
    Q0.16 probabilities and the cycles from the handshake to the result's."""
    rng = np.random.default_rng(seed)
    out = []
    probs_out = StreamSink(io, "o_probs", rng, stall_p)
    lmask = (1 << logit_bits) - 1
    for logits, mask, mult, shift in rows:
        io.set("i_logits.valid", 1)
        io.set("i_logits.payload.logits",
               sum((int(v) & lmask) << (logit_bits * i) for i, v in enumerate(logits)))
        io.set("i_logits.payload.mask", sum(int(b) << i for i, b in enumerate(mask)))
        io.set("i_logits.payload.index_mult", mult)
        io.set("i_logits.payload.index_shift", shift)
        start = None
        while True:
            probs_out.ready()
            took = start is None and await io.get("i_logits.ready")
            probs = None
            if await probs_out.beat():
                probs = [await probs_out.get(f"p16.{e}") for e in range(len(logits))]
            await io.tick()
            if took:
                start = io.cycle - 1
                io.set("i_logits.valid", 0)
            if probs is not None:
                out.append([probs, io.cycle - 1 - start])
                break
            if io.cycle > 200_000:
                raise TimeoutError("softmax bench made no progress")
    return out


async def token_router(io, *, tokens, logit_bits, gap_p, stall_p, seed):
    """Tokens ``(logits, count, index_mult, index_shift)``; returns per token its experts,
    weights and the cycles from handshake to the result's handshake."""
    rng = np.random.default_rng(seed)
    routes = []
    routes_out = StreamSink(io, "o_routes", rng, stall_p)
    mask = (1 << logit_bits) - 1
    for logits, count, mult, shift in tokens:
        while rng.random() < gap_p:
            io.set("i_tokens.valid", 0)
            io.set("o_routes.ready", 0)
            await io.tick()
        io.set("i_tokens.valid", 1)
        io.set("i_tokens.payload.logits",
               sum((int(v) & mask) << (logit_bits * i) for i, v in enumerate(logits)))
        io.set("i_tokens.payload.count", count)
        io.set("i_tokens.payload.index_mult", mult)
        io.set("i_tokens.payload.index_shift", shift)
        start = None
        while True:
            routes_out.ready()
            took = start is None and await io.get("i_tokens.ready")
            result = None
            if await routes_out.beat():
                n_sel = await routes_out.get("n_selected")
                result = [[await routes_out.get(f"experts.{j}") for j in range(n_sel)],
                          [await routes_out.get(f"weights.{j}") for j in range(n_sel)]]
            await io.tick()
            if took:
                start = io.cycle - 1
                io.set("i_tokens.valid", 0)
            if result is not None:
                routes.append(result + [io.cycle - 1 - start])
                break
            if io.cycle > 200_000:
                raise TimeoutError("token-router bench made no progress")
    return routes


async def expert_router(io, *, windows, gap_p, stall_p, seed):
    """Windows ``(rows, cap)`` of Q0.16 score rows; returns per window the (expert, token)
    selections in output order."""
    rng = np.random.default_rng(seed)
    out = []
    selected = StreamSink(io, "o_selected", rng, stall_p)
    for rows, cap in windows:
        for t, row in enumerate(rows):
            while rng.random() < gap_p:
                io.set("i_scores.valid", 0)
                await io.tick()
            io.set("i_scores.valid", 1)
            io.set("i_scores.payload.scores", sum(int(v) << (16 * e) for e, v in enumerate(row)))
            io.set("i_scores.payload.cap", cap)
            io.set("i_scores.payload.last", int(t == len(rows) - 1))
            while True:
                took = await io.get("i_scores.ready")
                await io.tick()
                if took:
                    break
        io.set("i_scores.valid", 0)
        got = []
        while True:
            selected.ready()
            done = False
            if await selected.beat():
                got.append([await selected.get("expert"), await selected.get("token")])
                done = bool(await selected.get("last"))
            await io.tick()
            if done:
                break
            if io.cycle > 200_000:
                raise TimeoutError("expert-router bench made no progress")
        out.append(got)
    return out


async def tile_scenario(io, *, weights, xs, xbar, gaps, ready_pattern, fields, timeout,
                        adc_shifts=None):
    """A tile experiment (``moepim.sim.tile_run.Scenario``) on a ``TileGroup``.

    Weights are programmed one row per cycle; then requester ``i`` issues its MVMs in order,
    each after ``gaps[k]`` idle cycles, holding ``valid`` until accepted; ``o_results.ready``
    follows ``ready_pattern[cycle % len]``. Cycle 0 is the first cycle after programming.
    ``adc_shifts`` (calibrated ADC range): the packed run-time windows, set before anything.
    Returns per MVM its output, acceptance and completion cycles, plus the raw counters.
    """
    import time

    from .bits import pack_fields, unpack_fields

    if adc_shifts is not None:
        io.set("adc_shifts", adc_shifts)

    io.set("i_weights.valid", 1)
    load0 = io.cycle
    for xb in range(len(weights)):
        for row in range(len(weights[xb])):
            io.set("i_weights.payload", pack_fields(fields["i_weights"], xbar=xb, row=row,
                                                    w=weights[xb][row]))
            while not await io.get("i_weights.ready"):
                await io.tick()
            await io.tick()
    io.set("i_weights.valid", 0)
    load_cycles = io.cycle - load0

    n = len(xs)
    groups = sorted(set(xbar))
    queues = {i: [k for k in range(n) if xbar[k] == i] for i in groups}
    order = {i: list(q) for i, q in queues.items()}
    start = {i: gaps[q[0]] for i, q in queues.items()}
    shown = dict.fromkeys(groups)
    accept, done, y, tags = [-1] * n, [-1] * n, [None] * n, [-1] * n
    results, c0, wall0 = [], io.cycle, time.perf_counter()
    while len(results) < n:
        cycle = io.cycle - c0
        for i, q in queues.items():
            active = bool(q) and cycle >= start[i]
            io.set(f"i_requests.{i}.valid", int(active))
            if active and shown[i] != q[0]:
                io.set(f"i_requests.{i}.payload", pack_fields(fields["i_requests"], x=xs[q[0]]))
                shown[i] = q[0]
        ready = int(ready_pattern[cycle % len(ready_pattern)])
        io.set("o_results.ready", ready)
        accepted = [i for i, q in queues.items()
                    if q and cycle >= start[i] and await io.get(f"i_requests.{i}.ready")]
        if ready and await io.get("o_results.valid"):
            r = unpack_fields(fields["o_results"], await io.get("o_results.payload"))
            results.append((int(r["xbar"]), [int(v) for v in r["y"]], cycle))
        for i in accepted:
            k = queues[i].pop(0)
            accept[k] = cycle
            if queues[i]:
                start[i] = cycle + 1 + gaps[queues[i][0]]
        await io.tick()
        if cycle > timeout:
            raise TimeoutError(f"only {len(results)} of {n} results after {cycle} cycles")
    for i in groups:
        io.set(f"i_requests.{i}.valid", 0)
    cycles, mvm_wall_s = io.cycle - c0, time.perf_counter() - wall0
    for tag, values, when in results:
        k = order[tag].pop(0)
        y[k], done[k], tags[k] = values, when, tag
    counters = await io.get("counters")
    await io.tick()
    return {"y": y, "accept": accept, "done": done, "xbar": tags, "cycles": cycles,
            "load_cycles": load_cycles, "counters": counters, "mvm_wall_s": mvm_wall_s}


async def free_run(io, *, cycles):
    """Clock the design for ``cycles`` cycles with all inputs at 0."""
    for _ in range(cycles):
        await io.tick()
    return {"cycles": io.cycle}


async def wait_pulses(io, *, n, wait, never="never", limit=7):
    """``[cycle, count]`` of the first ``n`` cycles whose 1-bit ``flag`` reads 1, found by
    reading every cycle (``wait`` false) or by ``io.wait_high``; then ``[result, cycles
    passed]`` of a wait for ``never`` (an output that stays 0) cut short after ``limit``."""
    seen = []
    while len(seen) < n:
        if wait:
            assert await io.wait_high("flag", 1 << 20)
        if await io.get("flag"):
            seen.append([io.cycle, await io.get("count")])
        await io.tick()
    start = io.cycle
    got = await io.wait_high(never, limit)
    return {"seen": seen, "short": [bool(got), io.cycle - start]}


def report_progress(path, done: int) -> None:
    """Record ``done`` (simulated cycles) for a progress bar polling ``path``
    (``moepim.sim.progress.file_bar``); atomic, so the reader never sees half a number."""
    if not path:
        return
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(str(int(done)))
    os.replace(tmp, path)


PROGRESS_EVERY = 2000       # cycles between progress reports


async def moe_layer(io, **stimulus):
    """Stream windows through ``MoELayerAccelerator``, as a host does; ``stimulus``: a
    :class:`~moepim.testbenches.stimulus.LayerStimulus` as JSON. The SwiGLU experts' SiLU
    tables and the gate's tanh / sigmoid tables are streamed first, with the same input gaps.

    Routing on the layer (``gate_index`` set): each window's route inputs are set before its
    tokens; the routes the layer emits are collected (the host takes each beat when offered;
    ``route_stall_p``: the probability it refuses one in a cycle, to exercise the route
    stream's back-pressure) and the plan is offered only after the window's closing route
    beat, as a host scheduling from the routes would. ``dram``: this bench's DRAM stores the
    GO cache's spilled rows and answers a read the cycle after its request (the DRAM's timing
    is modelled by the run's timeline).

    Returns per window the outputs (``[[int] * d_model]`` per token), its routes
    (``[token, expert, weight]``), the cycles from its first token beat to its last output
    beat, and the layer's counters after it (``extra_counters`` besides the basic ones);
    the simulated cycles go to ``progress_file`` (:func:`report_progress`)."""
    from .bits import pack_array, unpack_array

    st = LayerStimulus.from_json(stimulus)
    lanes, act_bits, gap_p, stall_p = st.lanes, st.act_bits, st.gap_p, st.stall_p
    progress_file, routing_hw = st.progress_file, st.gate_index is not None
    rng = np.random.default_rng(st.seed)
    for name, rq in (("combine", st.combine), ("gate_index", st.gate_index),
                     ("gate_hidden", st.gate_hidden), ("gate_shared", st.gate_shared)):
        if rq is not None:
            io.set(f"{name}_mult", rq.mult)
            io.set(f"{name}_shift", rq.shift)
    if st.silu_tables:
        await write_table(io, "i_lut", ("group", "addr", "data"), st.silu_tables, rng, gap_p)
    if st.gate_tables:
        await write_table(io, "i_gate_lut", ("table", "addr", "data"), st.gate_tables, rng,
                          gap_p)

    # the host's streams, in the order they draw from ``rng`` each cycle
    window_tokens = []                    # the current window's token vectors

    def token_beat(beat):
        t, b = beat
        return {"token": t, "block": b,
                "data": pack_array(window_tokens[t][b * lanes:(b + 1) * lanes], act_bits)}

    def job_beat(job):
        if job is None:
            return {"empty": 1}
        return {"empty": 0, "group": job.group, "token": job.token, "expert": job.expert,
                "idle_before": job.idle_before,
                **{f"data.{name}": value for name, value in job.operands.items()}}

    tokens_in = StreamSource(io, "i_tokens", rng, gap_p, token_beat)
    jobs_in = StreamSource(io, "i_jobs", rng, gap_p, job_beat)
    outputs_out = StreamSink(io, "o_outputs", rng, stall_p)
    routes_out = StreamSink(io, "o_routes", rng, st.route_stall_p, draw_at_zero=False)
    memory = DramResponder(io) if st.dram else None
    results = []
    next_report = PROGRESS_EVERY
    for w_index, window in enumerate(st.windows):
        window_tokens[:] = window.tokens
        d_model = len(window_tokens[0])
        blocks = d_model // lanes
        tokens_in.load((t, b) for t in range(len(window_tokens)) for b in range(blocks))
        jobs_in.load(list(window.jobs) or [None])
        outputs = [[0] * d_model for _ in window_tokens]
        routing = routing_hw and window.route_mode != 0
        if routing_hw:
            io.set("route_mode", window.route_mode)
            io.set("route_cap", window.route_cap)
            io.set("go_insert", window.go_insert)
        routes, routed = [], not routing
        start, done = None, False
        while not done:
            tokens_in.offer()
            # the plan goes out after the tokens and, when the layer routes, its routes
            jobs_in.offer(enabled=not tokens_in.items and routed)
            outputs_out.ready()
            if not routed:
                # the routing phase: the host takes route beats (and serves the GO cache's
                # DRAM) until the window's closing beat
                routes_out.ready()
                if memory:
                    memory.offer()
                if await routes_out.beat():
                    if await routes_out.get("last"):
                        routed = True
                    else:
                        routes.append([await routes_out.get(f)
                                       for f in ("token", "expert", "weight")])
                if memory:
                    await memory.serve()
            if await tokens_in.taken():
                start = io.cycle if start is None else start
            await jobs_in.taken()
            if stall_p == 0 and routed and not tokens_in.items and not jobs_in.items \
                    and (memory is None or memory.idle) and start is not None:
                # nothing to offer, every output beat taken at once: cycles pass without
                # per-cycle Python until the outputs or the next progress report
                await io.wait_high("o_outputs.valid", max(1, next_report - io.cycle))
            if await outputs_out.beat():
                t = await outputs_out.get("token")
                b = await outputs_out.get("block")
                word = await outputs_out.get("data")
                outputs[t][b * lanes:(b + 1) * lanes] = unpack_array(
                    word, act_bits, lanes, True).tolist()
                done = bool(await outputs_out.get("last"))
            await io.tick()
            if memory:
                memory.tick()
            if io.cycle >= next_report:
                if progress_file:
                    report_progress(progress_file, io.cycle)
                next_report = io.cycle + PROGRESS_EVERY
            if start is not None and io.cycle - start > st.timeout:
                raise TimeoutError(f"window {w_index}: no last output after {st.timeout} "
                                   "cycles")
        tokens_in.close()
        jobs_in.close()
        outputs_out.close()
        if routing_hw:
            routes_out.close()
        if memory:
            memory.close()
        counters = {name: await io.get(f"counters.{name}") for name in (
            "cycles", "timestamps", "token_loads", "token_reads", "token_writes", "out_reads",
            "out_writes", "engine_busy_cycles", "dac_drives", *st.extra_counters)}
        counters["busy"] = [await io.get(f"counters.busy.{g}") for g in range(st.n_groups)]
        await io.tick()
        results.append({"outputs": outputs, "routes": routes, "cycles": io.cycle - 1 - start,
                        "counters": counters})
        report_progress(progress_file, io.cycle)
    return results


BENCHES = {"tile_scenario": tile_scenario, "free_run": free_run, "wait_pulses": wait_pulses,
           "token_router": token_router,
           "gate_softmax": gate_softmax,
           "norm_rows": norm_rows,
           "residual_pairs": residual_pairs, "rope_vectors": rope_vectors,
           "expert_router": expert_router, "topk_windows": topk_windows,
           "scheduler_plan": scheduler_plan, "go_cache_commands": go_cache_commands,
           "moe_layer": moe_layer, "gate_front_end": gate_front_end,
           "route_stage": route_stage, "matrix_bank_jobs": matrix_bank_jobs,
           "expert_engine_jobs": expert_engine_jobs,
           "attention_queries": attention_queries,
           "attention_block_windows": attention_block_windows,
           "decoder_layer_windows": decoder_layer_windows,
           "projection_rows": projection_rows, "argmax_vectors": argmax_vectors}
