"""Benches of the decoder layer's streaming units: the residual adds
(``moepim.hw.residual.ResidualUnit``) and the rotary embedding (``moepim.hw.rope.RopeUnit``).

Each runs a list of scenarios through one build: per scenario its held inputs, its beats
offered with seeded input gaps and its outputs taken with seeded back-pressure, the unit drained
before the next scenario. Results are plain lists: the outputs and, per beat, the cycles of its
input and output handshakes (relative to the scenario's first cycle), from which the tests check
the latency formulas of ``moepim.spec.timing``.
"""

from __future__ import annotations

import numpy as np

from .bits import pack_array, unpack_array
from .streams import StreamSink, StreamSource

__all__ = ["residual_pairs", "rope_vectors"]

LIMIT = 100_000         # cycles a scenario waits for progress before it gives up


async def _stream(io, src, sink, n_out, read):
    """Offer ``src``'s items and take ``n_out`` beats from ``sink`` (``read()`` reads one);
    returns the beats read and the cycles of each input and output handshake."""
    got, taken, given = [], [], []
    start = io.cycle
    while len(got) < n_out:
        src.offer()
        sink.ready()
        if await src.taken():
            taken.append(io.cycle - start)
        if await sink.beat():
            got.append(await read())
            given.append(io.cycle - start)
        await io.tick()
        if io.cycle - start > LIMIT:
            raise TimeoutError(f"only {len(got)} of {n_out} beats after {LIMIT} cycles")
    src.close()
    sink.close()
    return got, taken, given


async def residual_pairs(io, *, runs, lanes, a_bits, b_bits, act_bits, seed):
    """Scenarios of ``ResidualUnit``: each a dict with ``held`` (``a_mult``, ``a_shift``,
    ``b_mult``, ``b_shift``), ``beats`` (``[a, b]`` lists of ``lanes`` codes; ``last`` on the
    final one), ``gap_p`` and ``stall_p``. Returns per scenario the output ``codes`` and
    ``last`` of each beat and the cycles of the input (``taken``) and output (``given``)
    handshakes."""
    rng = np.random.default_rng(seed)
    out = []
    for run in runs:
        for name, value in run["held"].items():
            io.set(name, value)
        src = StreamSource(io, "i_pairs", rng, run["gap_p"], lambda beat: {
            "a": pack_array(beat[0], a_bits), "b": pack_array(beat[1], b_bits)})
        src.load(run["beats"])
        sink = StreamSink(io, "o_sums", rng, run["stall_p"])

        async def read(sink=sink):
            word = await sink.get("codes")
            return [unpack_array(word, act_bits, lanes, True).tolist(),
                    await sink.get("last")]

        got, taken, given = await _stream(io, src, sink, len(run["beats"]), read)
        out.append({"codes": [g[0] for g in got], "last": [g[1] for g in got],
                    "taken": taken, "given": given})
    return out


async def rope_vectors(io, *, tables, coef_bits, runs, head_dim, lanes, act_bits, seed):
    """``RopeUnit``: the table rows ``tables`` (``(address, [cos_0, sin_0, ...])``, written
    one per cycle through ``lut_*`` first), then scenarios, each a dict with ``vectors``
    (``[position, codes]``, ``head_dim`` codes each, sent as ``head_dim / (2 lanes)`` beats),
    ``gap_p`` and ``stall_p``. Returns per scenario the rotated vectors (``[position,
    codes]``), each output beat's ``last`` and the cycles of the input (``taken``) and output
    (``given``) handshakes."""
    rng = np.random.default_rng(seed)
    half, beats = head_dim // 2, head_dim // (2 * lanes)
    for addr, values in tables:
        io.set("lut_we", 1)
        io.set("lut_addr", addr)
        io.set("lut_data", pack_array(values, coef_bits))
        await io.tick()
    io.set("lut_we", 0)
    out = []
    for run in runs:
        items = []
        for position, codes in run["vectors"]:
            for k in range(beats):
                lo = k * lanes
                items.append((position, codes[lo:lo + lanes], codes[half + lo:half + lo + lanes]))
        src = StreamSource(io, "i_vectors", rng, run["gap_p"], lambda beat: {
            "position": beat[0], "a": pack_array(beat[1], act_bits),
            "b": pack_array(beat[2], act_bits)}, mark_last=False)
        src.load(items)
        sink = StreamSink(io, "o_vectors", rng, run["stall_p"])

        async def read(sink=sink):
            return [await sink.get("position"),
                    unpack_array(await sink.get("a"), act_bits, lanes, True).tolist(),
                    unpack_array(await sink.get("b"), act_bits, lanes, True).tolist(),
                    await sink.get("last")]

        got, taken, given = await _stream(io, src, sink, len(items), read)
        vectors = []
        for v in range(len(run["vectors"])):
            part = got[v * beats:(v + 1) * beats]
            a = [c for g in part for c in g[1]]
            b = [c for g in part for c in g[2]]
            vectors.append([[g[0] for g in part], a + b])
        out.append({"vectors": vectors, "last": [g[3] for g in got], "taken": taken,
                    "given": given})
    return out
