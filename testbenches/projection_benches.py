"""Benches of the decoder's projection unit (``moepim.hw.projection.ProjectionUnit``) and argmax
unit (``moepim.hw.argmax.ArgmaxUnit``) alone: rows and vectors streamed in with seeded input
gaps, results taken with seeded back-pressure. Plain data in and out; the golden models stay
with the tests (``tests/test_projection_unit.py``, ``tests/test_argmax_unit.py``)."""

from __future__ import annotations

import numpy as np

from .bits import pack_array, unpack_array
from .streams import StreamSink, StreamSource

__all__ = ["projection_rows", "argmax_vectors"]

LIMIT = 100_000         # cycles a batch may take before the bench gives up


async def projection_rows(io, *, batches, lanes, in_bits, out_bits, in_blocks, out_blocks,
                          seed):
    """Batches of token rows, each a dict: ``mult``/``shift`` (held during the batch; None
    for a unit without requantisation), ``rows`` (``in_blocks * lanes`` codes each, padding
    lanes included, offered ``lanes`` per beat with input gaps ``gap_p``) and ``stall_p``
    (output back-pressure). Returns per batch: each row's output values (``out_blocks *
    lanes``, padding lanes included), each output beat's ``last``, per row the cycle of its
    first input handshake (``first_in``) and the first cycle its first output beat was valid
    (``first_out``), the cycle after the batch's last output handshake (``end``), and the
    counters ``rows`` and ``dac_drives`` then."""
    rng = np.random.default_rng(seed)
    result = []
    for batch in batches:
        if batch["mult"] is not None:
            io.set("mult", batch["mult"])
            io.set("shift", batch["shift"])
        rows = batch["rows"]
        # beats (row, beat, codes, last)
        src = StreamSource(io, "i_rows", rng, batch["gap_p"],
                           lambda beat: {"codes": beat[2], "last": beat[3]}, mark_last=False)
        sink = StreamSink(io, "o_rows", rng, batch["stall_p"])
        src.load((r, b, pack_array(row[b * lanes:(b + 1) * lanes], in_bits),
                  int(b == in_blocks - 1)) for r, row in enumerate(rows)
                 for b in range(in_blocks))
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
                outputs[row_out] += unpack_array(word, out_bits, lanes, True).tolist()
                lasts[row_out].append(await sink.get("last"))
                done = len(outputs[row_out]) == out_blocks * lanes
            await io.tick()
            row_out += done
            if io.cycle - start > LIMIT:
                raise TimeoutError("projection unit made no progress")
        # one more cycle, idle: the counters after the batch
        end = io.cycle
        src.close()
        sink.close()
        result.append({"outputs": outputs, "lasts": lasts, "first_in": first_in,
                       "first_out": first_out, "end": end,
                       "rows": await io.get("rows"), "dac_drives": await io.get("dac_drives")})
        await io.tick()
    return result


async def argmax_vectors(io, *, batches, value_bits, seed):
    """Batches of vectors, each a dict: ``vectors`` (each a list of beats of ``lanes``
    values, offered with input gaps ``gap_p``, ``last`` on a vector's final beat) and
    ``stall_p`` (back-pressure on ``o_index``). Returns per batch: each vector's
    ``[index, value]``, the cycle of each vector's last-beat handshake (``t_last``), the
    first cycle its result was valid after it (``t_valid``), the cycle of the batch's first
    handshake (``first_in``) and the cycle after its last result's handshake (``end``)."""
    rng = np.random.default_rng(seed)
    result = []
    for batch in batches:
        vectors = batch["vectors"]
        src = StreamSource(io, "i_values", rng, batch["gap_p"],
                           lambda beat: {"values": beat[1], "last": beat[2]}, mark_last=False)
        sink = StreamSink(io, "o_index", rng, batch["stall_p"])
        src.load((v, pack_array(beat, value_bits), int(b == len(vec) - 1))
                 for v, vec in enumerate(vectors) for b, beat in enumerate(vec))
        got, t_last, t_valid = [], [None] * len(vectors), [None] * len(vectors)
        first_in, start = None, io.cycle
        while len(got) < len(vectors):
            head = src.items[0] if src.items else None
            src.offer()
            sink.ready()
            if await src.taken():
                first_in = io.cycle if first_in is None else first_in
                if head[2]:
                    t_last[head[0]] = io.cycle
            v = len(got)
            if (t_valid[v] is None and t_last[v] is not None and t_last[v] < io.cycle
                    and await io.get("o_index.valid")):
                t_valid[v] = io.cycle
            if await sink.beat():
                got.append([await sink.get("index"), await sink.get("value")])
            await io.tick()
            if io.cycle - start > LIMIT:
                raise TimeoutError("argmax unit made no progress")
        src.close()
        sink.close()
        result.append({"results": got, "t_last": t_last, "t_valid": t_valid,
                       "first_in": first_in, "end": io.cycle})
    return result
