"""Bench of the decoder's norm unit alone (``moepim.hw.norm.NormUnit``)."""

from __future__ import annotations

import numpy as np

from .bits import pack_array, unpack_array
from .streams import StreamSink, StreamSource

__all__ = ["norm_rows"]

LIMIT = 100_000         # cycles a batch may take before the bench gives up


async def norm_rows(io, *, batches, lanes, act_bits, seed):
    """Batches of rows, each a dict: ``params`` (per parameter word ``[gamma]`` or ``[gamma,
    beta]``, ``lanes`` codes each, written through ``param_we``/``param_addr``/``param_data``
    before the batch), the held ``eps``, ``mult``, ``shift``, the ``rows`` (``d_model`` codes
    each, offered ``lanes`` per beat with seeded input gaps ``gap_p``) and ``stall_p`` (seeded
    output back-pressure). Returns per batch: every output code per row (``outputs``), each
    output beat's ``last`` flags (``lasts``), and per row the cycle of its first input
    handshake (``first_in``) and the first cycle its first output beat was valid
    (``first_out``)."""
    rng = np.random.default_rng(seed)
    result = []
    for batch in batches:
        for addr, word in enumerate(batch["params"]):
            io.set("param_we", 1)
            io.set("param_addr", addr)
            io.set("param_data.gamma", pack_array(word[0], act_bits))
            if len(word) > 1:
                io.set("param_data.beta", pack_array(word[1], act_bits))
            await io.tick()
        io.set("param_we", 0)
        for name in ("eps", "mult", "shift"):
            io.set(name, batch[name])
        rows = batch["rows"]
        n_beats = len(rows[0]) // lanes
        # beats (row, beat, codes, last)
        src = StreamSource(io, "i_rows", rng, batch["gap_p"],
                           lambda beat: {"codes": beat[2], "last": beat[3]}, mark_last=False)
        sink = StreamSink(io, "o_rows", rng, batch["stall_p"])
        src.load((r, b, pack_array(row[b * lanes:(b + 1) * lanes], act_bits),
                  int(b == n_beats - 1)) for r, row in enumerate(rows) for b in range(n_beats))
        outputs, lasts = [[] for _ in rows], [[] for _ in rows]
        first_in, first_out = [None] * len(rows), [None] * len(rows)
        row_out, start = 0, io.cycle
        while row_out < len(rows):
            head = src.items[0] if src.items else None
            src.offer()
            sink.ready()
            if await src.taken() and head[1] == 0:
                first_in[head[0]] = io.cycle
            if first_out[row_out] is None and await io.get("o_rows.valid"):
                first_out[row_out] = io.cycle
            done = False
            if await sink.beat():
                word = await sink.get("codes")
                outputs[row_out] += unpack_array(word, act_bits, lanes, True).tolist()
                last = await sink.get("last")
                lasts[row_out].append(last)
                done = len(outputs[row_out]) == len(rows[0])
            await io.tick()
            row_out += done
            if io.cycle - start > LIMIT:
                raise TimeoutError("norm unit made no progress")
        src.close()
        sink.close()
        result.append({"outputs": outputs, "lasts": lasts, "first_in": first_in,
                       "first_out": first_out})
    return result
