"""Bench of the attention half of the decoder layer (``moepim.hw.attention_block.AttentionBlock``):
the run-time constants and tables written once, then windows of rows (each started on
``i_windows``, its rows offered with seeded input gaps, its ``x1`` rows taken with seeded
back-pressure), the KV store carrying over from window to window. Plain data in and out; the
golden model stays with the test (``tests/test_attention_block.py``)."""

from __future__ import annotations

import numpy as np

from .bits import pack_array, unpack_array
from .streams import DramResponder, StreamSink, StreamSource

__all__ = ["attention_block_windows"]

LIMIT = 200_000         # cycles a window may take before the bench gives up
KV_COUNTERS = ("words_written", "words_read", "rows_written", "rows_read")  # the block's


async def attention_block_windows(io, *, norm_params, rope_table, coef_bits, held, windows,
                                  lanes, act_bits, seed, kv_dram=False):
    """``norm_params``: per parameter word ``[gamma]`` or ``[gamma, beta]`` (``lanes`` codes
    each); ``rope_table``: ``(address, [cos_0, sin_0, ...])`` rows (empty without RoPE);
    ``held``: the constant inputs by name (``norm_eps``, ``q_mult``, ...); ``windows``: each
    ``{"first_position", "rows", "gap_p", "stall_p"}`` (``rows``: ``d_model`` codes each).
    Returns per window: the output codes per row (``outputs``), each output beat's ``last``
    (``lasts``), the cycle of the first ``i_rows`` handshake (``first_in``), the cycle after
    the last ``o_rows`` handshake (``end``) and every change of ``phase`` as ``[cycle,
    phase]`` (``phases``). With ``kv_dram`` (a block with ``kv_cache_rows``) the bench is the
    KV cache's DRAM (``DramResponder`` on ``o_kv_dram_req`` / ``i_kv_dram_resp``: a dict
    memory answering a read the cycle after its request), and each window also returns the
    DRAM word addresses written and read (``kv_writes``, ``kv_reads``) and the block's
    ``kv_counters`` after it (``kv_counters``, cumulative)."""
    rng = np.random.default_rng(seed)
    for addr, word in enumerate(norm_params):
        io.set("norm_param_we", 1)
        io.set("norm_param_addr", addr)
        io.set("norm_param_data.gamma", pack_array(word[0], act_bits))
        if len(word) > 1:
            io.set("norm_param_data.beta", pack_array(word[1], act_bits))
        await io.tick()
    io.set("norm_param_we", 0)
    for addr, values in rope_table:
        io.set("rope_lut_we", 1)
        io.set("rope_lut_addr", addr)
        io.set("rope_lut_data", pack_array(values, coef_bits))
        await io.tick()
    if rope_table:
        io.set("rope_lut_we", 0)
    for name, value in held.items():
        io.set(name, value)
    memory = DramResponder(io, req="o_kv_dram_req", resp="i_kv_dram_resp") \
        if kv_dram else None
    result = []
    for window in windows:
        rows = window["rows"]
        n_beats = len(rows[0]) // lanes
        # the window's start
        io.set("i_windows.valid", 1)
        io.set("i_windows.payload.n_rows", len(rows))
        io.set("i_windows.payload.first_position", window["first_position"])
        start = io.cycle
        while not await io.get("i_windows.ready"):
            await io.tick()
            if io.cycle - start > LIMIT:
                raise TimeoutError("attention block took no window")
        await io.tick()
        io.set("i_windows.valid", 0)
        # rows in, x1 rows out
        src = StreamSource(io, "i_rows", rng, window["gap_p"],
                           lambda beat: {"codes": beat, "last": 0}, mark_last=False)
        sink = StreamSink(io, "o_rows", rng, window["stall_p"])
        src.load(pack_array(row[b * lanes:(b + 1) * lanes], act_bits)
                 for row in rows for b in range(n_beats))
        codes, lasts, first_in, phases, phase = [], [], None, [], None
        start = io.cycle
        n_writes, n_reads = (len(memory.writes), len(memory.reads)) if memory else (0, 0)
        while len(lasts) < len(rows) * n_beats:
            src.offer()
            sink.ready()
            if memory:
                memory.offer()
            if await src.taken() and first_in is None:
                first_in = io.cycle
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
                raise TimeoutError("attention block made no progress")
        end = io.cycle
        src.close()
        sink.close()
        width = n_beats * lanes
        res = {"outputs": [codes[r * width:(r + 1) * width] for r in range(len(rows))],
               "lasts": [lasts[r * n_beats:(r + 1) * n_beats] for r in range(len(rows))],
               "first_in": first_in, "end": end, "phases": phases}
        if memory:
            memory.close()
            res["kv_writes"] = memory.writes[n_writes:]
            res["kv_reads"] = memory.reads[n_reads:]
            res["kv_counters"] = {name: await io.get(f"kv_counters.{name}")
                                  for name in KV_COUNTERS}
            await io.tick()         # the next window's sets come after this cycle's gets
        result.append(res)
    return result
