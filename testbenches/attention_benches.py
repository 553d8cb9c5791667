"""Bench of the attention unit (``moepim.hw.attention.AttentionUnit``) alone: per query, its
beats on ``i_queries``, the K rows on ``i_keys`` and the V rows on ``i_values`` offered with
seeded gaps, the output taken with seeded back-pressure. Plain data in and out; the golden
model stays with the test (``tests/test_attention_unit.py``)."""

from __future__ import annotations

import numpy as np

from .bits import pack_array
from .streams import StreamSink, StreamSource

__all__ = ["attention_queries"]

LIMIT = 200_000         # cycles a bench waits for progress before it gives up


async def attention_queries(io, *, queries, lanes, act_bits, gap_p, stall_p, seed):
    """Per query ``{"q", "k", "v", "mult", "shift"}`` (``q`` a vector, ``k``/``v`` lists of
    rows): every stream fed beat by beat (``lanes`` codes each) until the output's last beat.
    Returns per query its output codes, the cycles of the query's first and last
    handshakes and the first cycle ``o_outputs.valid`` is high (the next query is offered
    from the cycle after the last output beat)."""
    rng = np.random.default_rng(seed)
    sink = StreamSink(io, "o_outputs", rng, stall_p)
    result = []

    def beats(rows):
        return [row[b:b + lanes] for row in rows for b in range(0, len(row), lanes)]

    for query in queries:
        held = {"n_keys": len(query["k"]), "index_mult": query["mult"],
                "index_shift": query["shift"]}
        qs = StreamSource(io, "i_queries", rng, gap_p,
                          lambda c, held=held: {"codes": pack_array(c, act_bits), **held},
                          mark_last=False)
        ks = StreamSource(io, "i_keys", rng, gap_p,
                          lambda c: {"codes": pack_array(c, act_bits)}, mark_last=False)
        vs = StreamSource(io, "i_values", rng, gap_p,
                          lambda c: {"codes": pack_array(c, act_bits)}, mark_last=False)
        qs.load(beats([query["q"]]))
        ks.load(beats(query["k"]))
        vs.load(beats(query["v"]))
        codes, first, handed, valid_at, done = [], None, None, None, False
        start = io.cycle
        while not done:
            qs.offer()
            ks.offer()
            vs.offer()
            sink.ready()
            if await qs.taken():
                first = io.cycle if first is None else first
                if not qs.items:
                    handed = io.cycle
            await ks.taken()
            await vs.taken()
            if valid_at is None and await io.get("o_outputs.valid"):
                valid_at = io.cycle
            if await sink.beat():
                word = await sink.get("codes")
                codes.append(word)
                done = bool(await sink.get("last"))
            await io.tick()
            if io.cycle - start > LIMIT:
                raise TimeoutError("attention unit made no progress")
        for s in (qs, ks, vs):
            s.close()
        sink.close()
        if ks.items or vs.items:
            raise RuntimeError(f"the unit left {len(ks.items)} K and {len(vs.items)} V beats")
        result.append({"codes": codes, "first": first, "handed": handed,
                       "valid_at": valid_at})
    return result
