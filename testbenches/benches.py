"""Transaction benches of the router, scheduler and GO-cache blocks, simulator-independent.

Each bench drives its block through :mod:`moepim.testbenches.harness` with seeded random input
gaps and output back-pressure and returns plain data (lists of ints), so Amaranth's simulator,
Verilator and Icarus runs can be compared with each other and with the functional models.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["BENCHES"]


async def topk_windows(io, *, windows, gap_p, stall_p, seed):
    """Windows of ``(scores, count)``; returns per window the selected indices and the cycles
    from its first item's handshake to the handshake of its last result."""
    rng = np.random.default_rng(seed)
    selected, spans = [], []
    for scores, count in windows:
        got, start = [], None
        pending = list(enumerate(scores))
        while True:
            offer = bool(pending) and rng.random() >= gap_p
            io.set("i_items.valid", int(offer))
            if offer:
                i, sc = pending[0]
                io.set("i_items.payload.index", i)
                io.set("i_items.payload.score", int(sc))
                io.set("i_items.payload.count", count)
                io.set("i_items.payload.last", int(len(pending) == 1))
            ready = int(rng.random() >= stall_p)
            io.set("o_selected.ready", ready)
            took = offer and await io.get("i_items.ready")
            done = False
            if ready and await io.get("o_selected.valid"):
                got.append(await io.get("o_selected.payload.index"))
                done = bool(await io.get("o_selected.payload.last"))
            if took:
                start = io.cycle if start is None else start
                pending.pop(0)
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
    return the slot records, the issues per group, cycles per window and the counters."""
    rng = np.random.default_rng(seed)
    n_groups = len(plan)
    jobs = [(g, job) for g in range(n_groups) for job in plan[g]]
    slots, issues, cycles = [], [[] for _ in range(n_groups)], []

    async def sample(ready):
        for g in range(n_groups):
            if ready[g] and await io.get(f"o_issue.{g}.valid"):
                issues[g].append([await io.get(f"o_issue.{g}.payload.token"),
                                  await io.get(f"o_issue.{g}.payload.expert")])

    for _ in range(windows):
        pending, start = list(jobs), None
        while True:
            offer = bool(pending) and rng.random() >= gap_p
            io.set("i_jobs.valid", int(offer))
            if offer:
                g, (tok, exp, idle) = pending[0]
                io.set("i_jobs.payload.group", g)
                io.set("i_jobs.payload.job.token", tok)
                io.set("i_jobs.payload.job.expert", exp)
                io.set("i_jobs.payload.job.idle_before", idle)
                io.set("i_jobs.payload.last", int(len(pending) == 1))
            ready = [int(rng.random() >= stall_p) for _ in range(n_groups + 1)]
            for g in range(n_groups):
                io.set(f"o_issue.{g}.ready", ready[g])
            io.set("o_slots.ready", ready[-1])
            took = offer and await io.get("i_jobs.ready")
            await sample(ready)
            last_slot = False
            if ready[-1] and await io.get("o_slots.valid"):
                active = await io.get("o_slots.payload.active")
                row_t, row_e = [], []
                for g in range(n_groups):
                    on = active >> g & 1
                    row_t.append(await io.get(f"o_slots.payload.tokens.{g}") if on else -1)
                    row_e.append(await io.get(f"o_slots.payload.experts.{g}") if on else -1)
                slots.append([row_t, row_e, await io.get("o_slots.payload.n_loads")])
                last_slot = bool(await io.get("o_slots.payload.last"))
            if took:
                start = io.cycle if start is None else start
                pending.pop(0)
            await io.tick()
            if last_slot:
                break
            if io.cycle > 100_000:
                raise TimeoutError("scheduler bench made no progress")
        cycles.append(io.cycle - start)
        io.set("i_jobs.valid", 0)
        # the issues of the window's last timestamp may still be waiting
        for _ in range(64):
            for g in range(n_groups):
                io.set(f"o_issue.{g}.ready", 1)
            io.set("o_slots.ready", 1)
            await sample([1] * n_groups)
            await io.tick()
    counters = {"timestamps": await io.get("counters.timestamps"),
                "tokens_loaded": await io.get("counters.tokens_loaded"),
                "stall_cycles": await io.get("counters.stall_cycles"),
                "busy": [await io.get(f"counters.busy.{g}") for g in range(n_groups)],
                "idle": [await io.get(f"counters.idle.{g}") for g in range(n_groups)]}
    await io.tick()
    return {"slots": slots, "issues": issues, "cycles": cycles, "counters": counters}


async def go_cache_commands(io, *, commands, score_bits, decide_op, latency_max, stall_p, seed):
    """Play GO-cache commands ``(op, cap, scores)`` against a DRAM that answers reads in order
    after 1..``latency_max`` cycles and accepts requests with probability ``1 - stall_p``.
    Returns the selection masks of DECIDE (``decide_op``) commands and the counters."""
    rng = np.random.default_rng(seed)
    dram, pending, masks = {}, [], []

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
            req_ready = int(rng.random() >= stall_p)
            io.set("o_dram_req.ready", req_ready)
            offer = bool(pending) and pending[0][0] <= io.cycle
            io.set("i_dram_resp.valid", int(offer))
            if offer:
                io.set("i_dram_resp.payload.data", pending[0][1])
            sel_ready = int(rng.random() >= stall_p)
            io.set("o_select.ready", sel_ready)
            if not sent and await io.get("i_cmd.ready"):
                sent = True
            resp_taken = offer and await io.get("i_dram_resp.ready")
            await dram_side(req_ready)
            if sel_ready and await io.get("o_select.valid"):
                masks.append(await io.get("o_select.payload.mask"))
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
            ready = int(rng.random() >= stall_p)
            io.set("o_probs.ready", ready)
            took = start is None and await io.get("i_logits.ready")
            probs = None
            if ready and await io.get("o_probs.valid"):
                probs = [await io.get(f"o_probs.payload.p16.{e}") for e in range(len(logits))]
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
            ready = int(rng.random() >= stall_p)
            io.set("o_routes.ready", ready)
            took = start is None and await io.get("i_tokens.ready")
            result = None
            if ready and await io.get("o_routes.valid"):
                n_sel = await io.get("o_routes.payload.n_selected")
                result = [[await io.get(f"o_routes.payload.experts.{j}") for j in range(n_sel)],
                          [await io.get(f"o_routes.payload.weights.{j}") for j in range(n_sel)]]
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
            ready = int(rng.random() >= stall_p)
            io.set("o_selected.ready", ready)
            done = False
            if ready and await io.get("o_selected.valid"):
                got.append([await io.get("o_selected.payload.expert"),
                            await io.get("o_selected.payload.token")])
                done = bool(await io.get("o_selected.payload.last"))
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


async def moe_layer(io, *, windows, lanes, act_bits, combine, gap_p, stall_p, seed,
                    luts=(), timeout=10_000_000, progress_file=None, gate_index=None,
                    dram=False, extra_counters=(), route_stall_p=0.0, gate_hidden=None,
                    gate_shared=None, gate_lut=()):
    """Stream windows through ``MoELayerAccelerator``: each window is ``{"tokens": [[int] *
    d_model, ...], "jobs": [[group, token, expert, idle_before, {field: int}], ...]}`` (the
    fields of the layer's job operands). ``luts``: ``[group, addr, value]`` writes of the SiLU
    tables (SwiGLU layers), streamed first with the same input gaps. ``progress_file``: where
    the simulated cycles are reported (:func:`report_progress`).

    Routing on the layer (``gate_index`` = the softmax index ``[mult, shift]``): each window's
    ``"route": [mode, cap, go_insert]`` is set before its tokens; the routes the layer emits
    are collected (the host takes each beat when offered; ``route_stall_p``: the probability it
    refuses one in a cycle, to exercise the route stream's back-pressure) and the plan is
    offered only after the window's closing route beat, as a host scheduling from the routes
    would. ``dram``: the
    layer has the GO cache's DRAM port; this bench's DRAM stores spilled rows and answers a
    read the cycle after its request (the DRAM's timing is modelled by the run's timeline).
    An MLP gate: ``gate_hidden`` = its hidden requantisation ``[mult, shift]``; a shared
    expert's gate: ``gate_shared`` = its logit's requantisation; ``gate_lut`` = ``[table,
    addr, value]`` writes of their tanh / sigmoid tables (streamed after ``luts``).

    Returns per window the outputs (``[[int] * d_model]`` per token), its routes
    (``[token, expert, weight]``), the cycles from its first token beat to its last output
    beat, and the layer's counters after it (``extra_counters`` besides the basic ones)."""
    from .bits import pack_array, unpack_array

    rng = np.random.default_rng(seed)
    io.set("combine_mult", combine[0])
    io.set("combine_shift", combine[1])
    if gate_index is not None:
        io.set("gate_index_mult", gate_index[0])
        io.set("gate_index_shift", gate_index[1])
    store, answers = {}, []

    def offer_dram():
        """Sets of one DRAM cycle (before any get): take requests, offer the oldest answer."""
        io.set("o_dram_req.ready", 1)
        io.set("i_dram_resp.valid", int(bool(answers)))
        if answers:
            io.set("i_dram_resp.payload.data", answers[0])
        return bool(answers)

    async def serve_dram(offered):
        """Gets of the DRAM cycle: store a write, queue a read's answer; whether the offered
        answer was taken."""
        if await io.get("o_dram_req.valid"):
            addr = await io.get("o_dram_req.payload.addr")
            if await io.get("o_dram_req.payload.write"):
                store[addr] = await io.get("o_dram_req.payload.data")
            else:
                answers.append(store[addr])
        return offered and await io.get("i_dram_resp.ready")

    for name, rq in (("gate_hidden", gate_hidden), ("gate_shared", gate_shared)):
        if rq is not None:
            io.set(f"{name}_mult", rq[0])
            io.set(f"{name}_shift", rq[1])

    async def write_table(port, fields, writes):
        """Stream table writes (``fields`` of each) into ``port``, with the input gaps."""
        writes = list(writes)
        while writes:
            offer = rng.random() >= gap_p
            io.set(f"{port}.valid", int(offer))
            if offer:
                for name, value in zip(fields, writes[0]):
                    io.set(f"{port}.payload.{name}", value)
            if offer and await io.get(f"{port}.ready"):
                writes.pop(0)
            await io.tick()
        io.set(f"{port}.valid", 0)

    if luts:
        await write_table("i_lut", ("group", "addr", "data"), luts)
    if gate_lut:
        await write_table("i_gate_lut", ("table", "addr", "data"), gate_lut)
    results = []
    next_report = PROGRESS_EVERY
    for w_index, window in enumerate(windows):
        tokens = window["tokens"]
        d_model = len(tokens[0])
        blocks = d_model // lanes
        beats = [(t, b) for t in range(len(tokens)) for b in range(blocks)]
        jobs = list(window["jobs"]) or [None]
        outputs = [[0] * d_model for _ in tokens]
        mode, cap, insert = window.get("route", (0, 0, 0))
        routing = gate_index is not None and mode != 0
        if gate_index is not None:
            io.set("route_mode", mode)
            io.set("route_cap", cap)
            io.set("go_insert", insert)
        routes, routed = [], not routing
        start, done = None, False
        while not done:
            offer_t = bool(beats) and rng.random() >= gap_p
            io.set("i_tokens.valid", int(offer_t))
            if offer_t:
                t, b = beats[0]
                io.set("i_tokens.payload.token", t)
                io.set("i_tokens.payload.block", b)
                io.set("i_tokens.payload.data",
                       pack_array(tokens[t][b * lanes:(b + 1) * lanes], act_bits))
                io.set("i_tokens.payload.last", int(len(beats) == 1))
            offer_j = not beats and routed and bool(jobs) and rng.random() >= gap_p
            io.set("i_jobs.valid", int(offer_j))
            if offer_j:
                job = jobs[0]
                io.set("i_jobs.payload.last", int(len(jobs) == 1))
                io.set("i_jobs.payload.empty", int(job is None))
                if job is not None:
                    g, tok, exp, idle, fields = job
                    io.set("i_jobs.payload.group", g)
                    io.set("i_jobs.payload.token", tok)
                    io.set("i_jobs.payload.expert", exp)
                    io.set("i_jobs.payload.idle_before", idle)
                    for name, value in fields.items():
                        io.set(f"i_jobs.payload.data.{name}", value)
            ready = int(rng.random() >= stall_p)
            io.set("o_outputs.ready", ready)
            taken = False
            if not routed:
                take = int(not route_stall_p or rng.random() >= route_stall_p)
                io.set("o_routes.ready", take)
                offered = offer_dram() if dram else False
                if take and await io.get("o_routes.valid"):
                    if await io.get("o_routes.payload.last"):
                        routed = True
                    else:
                        routes.append([await io.get(f"o_routes.payload.{f}")
                                       for f in ("token", "expert", "weight")])
                if dram:
                    taken = await serve_dram(offered)
            if offer_t and await io.get("i_tokens.ready"):
                start = io.cycle if start is None else start
                beats.pop(0)
            if offer_j and await io.get("i_jobs.ready"):
                jobs.pop(0)
            if stall_p == 0 and routed and not beats and not jobs and not answers \
                    and start is not None:
                # nothing to offer, every output beat taken at once: cycles pass without
                # per-cycle Python until the outputs or the next progress report
                await io.wait_high("o_outputs.valid", max(1, next_report - io.cycle))
            if ready and await io.get("o_outputs.valid"):
                t = await io.get("o_outputs.payload.token")
                b = await io.get("o_outputs.payload.block")
                word = await io.get("o_outputs.payload.data")
                outputs[t][b * lanes:(b + 1) * lanes] = unpack_array(
                    word, act_bits, lanes, True).tolist()
                done = bool(await io.get("o_outputs.payload.last"))
            await io.tick()
            if taken:
                answers.pop(0)
            if io.cycle >= next_report:
                if progress_file:
                    report_progress(progress_file, io.cycle)
                next_report = io.cycle + PROGRESS_EVERY
            if start is not None and io.cycle - start > timeout:
                raise TimeoutError(f"window {w_index}: no last output after {timeout} cycles")
        io.set("i_tokens.valid", 0)
        io.set("i_jobs.valid", 0)
        io.set("o_outputs.ready", 0)
        if gate_index is not None:
            io.set("o_routes.ready", 0)
        if dram:
            io.set("o_dram_req.ready", 0)
            io.set("i_dram_resp.valid", 0)
        counters = {name: await io.get(f"counters.{name}") for name in (
            "cycles", "timestamps", "token_loads", "token_reads", "token_writes", "out_reads",
            "out_writes", "engine_busy_cycles", "dac_drives", *extra_counters)}
        counters["busy"] = [await io.get(f"counters.busy.{g}")
                            for g in range(window.get("n_groups", 0))]
        await io.tick()
        results.append({"outputs": outputs, "routes": routes, "cycles": io.cycle - 1 - start,
                        "counters": counters})
        report_progress(progress_file, io.cycle)
    return results


BENCHES = {"tile_scenario": tile_scenario, "free_run": free_run, "wait_pulses": wait_pulses,
           "token_router": token_router,
           "gate_softmax": gate_softmax,
           "expert_router": expert_router, "topk_windows": topk_windows,
           "scheduler_plan": scheduler_plan, "go_cache_commands": go_cache_commands,
           "moe_layer": moe_layer}
