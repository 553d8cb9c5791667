"""Benches of the matrix bank (``moepim.hw.matrix_bank.MatrixBank``) and the expert engine
(``moepim.hw.expert_engine.ExpertEngine``) alone: their job protocols, cycle by cycle (every
cycle: sets, then gets, then tick). Plain data in and out; the golden models stay with the
tests (``tests/test_matrix_bank.py``, ``tests/test_expert_engine.py``), so the simulator's
Python imports nothing heavy here."""

from __future__ import annotations

from .bits import pack_array, unpack_array

__all__ = ["matrix_bank_jobs", "expert_engine_jobs"]


async def matrix_bank_jobs(io, *, bank_id, lanes, input_bits, out_bits, row_tiles,
                           in_blocks, out_blocks, latency, jobs):
    """Per job ``{"slot", "x" (None: keep the held input), "restart"}``: write the input
    blocks (``in_we``/``in_addr``/``in_data``), raise ``start`` for one cycle (cycle 0), and
    ``restart`` cycles later raise it again with slot ``other`` (busy: to be ignored); record
    ``busy``/``done`` every cycle until ``done``, then read every output block
    (``rd_addr`` -> ``rd_data`` one cycle later) and ``dac_drives``."""
    io.set("bank_id", bank_id)
    out = []
    for job in jobs:
        x = job["x"]
        if x is not None:
            for b in range(in_blocks):
                block = (x[b * lanes:(b + 1) * lanes] + [0] * lanes)[:lanes]
                io.set("in_we", 1)
                io.set("in_addr", b)
                io.set("in_data", pack_array(block, input_bits))
                await io.tick()
            io.set("in_we", 0)
        io.set("slot", job["slot"])
        io.set("start", 1)
        busy, done = [await io.get("busy")], [await io.get("done")]
        t0 = io.cycle
        await io.tick()
        io.set("start", 0)
        while not done[-1]:
            again = io.cycle - t0 == job["restart"]
            io.set("start", int(again))
            if again:
                io.set("slot", job["other"])
            busy.append(await io.get("busy"))
            done.append(await io.get("done"))
            await io.tick()
            if io.cycle - t0 > 4 * latency + 20:
                raise TimeoutError("no done")
        t_done = io.cycle - 1 - t0
        io.set("start", 0)
        blocks, after = [], []
        for b in range(out_blocks + 1):
            if b < out_blocks:
                io.set("rd_addr", b)
            after.append([await io.get("busy"), await io.get("done")])
            if b:
                word = await io.get("rd_data")
                blocks.append(unpack_array(word, out_bits, lanes * row_tiles, True)
                              .reshape(lanes, row_tiles).tolist())
            await io.tick()
        out.append({"t_done": t_done, "busy": busy, "done": done, "after": after,
                    "blocks": blocks, "dac_drives": await io.get("dac_drives")})
        await io.tick()
    return out


async def expert_engine_jobs(io, *, bank_base, lanes, act_bits, out_bits, in_blocks,
                             out_blocks, latency, luts, jobs):
    """Write the SiLU tables (``lut_we``/``lut_addr``/``lut_data``), then per job: the token's
    input blocks (``in_we``/``in_addr``/``in_data``), ``start`` with the job's operands for
    one cycle (cycle 0), the operands scrambled from the next cycle on (the engine latched
    them) and ``start`` raised again at cycle ``restart`` (not ready: to be ignored);
    ``ready`` recorded every cycle until it is high again, then every output block read
    (``rd_addr`` -> ``rd_data`` one cycle later) and the counters."""
    io.set("bank_base", bank_base)
    for addr, value in luts:
        io.set("lut_we", 1)
        io.set("lut_addr", addr)
        io.set("lut_data", value)
        await io.tick()
    if luts:
        io.set("lut_we", 0)
    out = []
    for job in jobs:
        x = job["x"]
        for b in range(in_blocks):
            io.set("in_we", 1)
            io.set("in_addr", b)
            io.set("in_data", pack_array((x[b * lanes:(b + 1) * lanes] + [0] * lanes)[:lanes],
                                         act_bits))
            await io.tick()
        io.set("in_we", 0)
        for name, value in job["fields"].items():
            io.set(f"job.{name}", value)
        io.set("start", 1)
        ready = [await io.get("ready")]
        t0 = io.cycle
        await io.tick()
        io.set("start", 0)
        for name, value in job["scramble"].items():
            io.set(f"job.{name}", value)
        while len(ready) == 1 or not ready[-1]:
            io.set("start", int(io.cycle - t0 == job["restart"]))
            ready.append(await io.get("ready"))
            await io.tick()
            if io.cycle - t0 > 2 * latency + 20:
                raise TimeoutError("ready never came back")
        io.set("start", 0)
        blocks, ready_after = [], []
        for b in range(out_blocks + 1):
            if b < out_blocks:
                io.set("rd_addr", b)
            ready_after.append(await io.get("ready"))
            if b:
                blocks.append(unpack_array(await io.get("rd_data"), out_bits, lanes, True)
                              .tolist())
            await io.tick()
        out.append({"t_ready": len(ready) - 1, "ready": ready, "ready_after": ready_after,
                    "blocks": blocks,
                    "counters": {name: await io.get(f"counters.{name}")
                                 for name in ("jobs", "busy_cycles", "dac_drives")}})
        await io.tick()
    return out
