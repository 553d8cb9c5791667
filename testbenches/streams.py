"""Bench components, each written once: a stream source with seeded idle gaps, a stream sink
with seeded back-pressure, a table writer and a DRAM responder. Benches compose them
(``moepim.testbenches.benches``); they drive a block through the simulator-independent
``io`` of :mod:`moepim.testbenches.harness`.

A bench's components share one seeded generator, and each draws from it at a fixed point of
the cycle, so a bench's stimulus is a pure function of its seed under every simulator.
"""

from __future__ import annotations

__all__ = ["StreamSource", "StreamSink", "DramResponder", "write_table"]


class StreamSource:
    """Offers the items of a queue on stream ``port``, one per handshake: in a cycle with an
    item left (and ``enabled``) the source offers the head with probability ``1 - gap_p``
    (one draw), setting ``valid`` and the payload (``payload(item)``: ``{field path: value}``
    under ``port.payload``; ``last`` is set on the queue's final item when ``mark_last``)."""

    def __init__(self, io, port: str, rng, gap_p: float, payload, *, mark_last: bool = True):
        self.io, self.port, self.rng, self.gap_p = io, port, rng, gap_p
        self.payload, self.mark_last = payload, mark_last
        self.items: list = []
        self.offered = False

    def load(self, items) -> None:
        self.items = list(items)

    def offer(self, enabled: bool = True) -> bool:
        """The cycle's sets (before any get): offer the head or not."""
        self.offered = enabled and bool(self.items) and self.rng.random() >= self.gap_p
        self.io.set(f"{self.port}.valid", int(self.offered))
        if self.offered:
            if self.mark_last:
                self.io.set(f"{self.port}.payload.last", int(len(self.items) == 1))
            for path, value in self.payload(self.items[0]).items():
                self.io.set(f"{self.port}.payload.{path}", value)
        return self.offered

    async def taken(self) -> bool:
        """The cycle's gets: whether the offered head was handed over (then it is dropped)."""
        if self.offered and await self.io.get(f"{self.port}.ready"):
            self.items.pop(0)
            return True
        return False

    def close(self) -> None:
        self.io.set(f"{self.port}.valid", 0)
        self.offered = False


class StreamSink:
    """Takes beats from stream ``port``: each cycle ``ready`` with probability ``1 - stall_p``
    (one draw; with ``draw_at_zero`` False no draw while ``stall_p`` is 0)."""

    def __init__(self, io, port: str, rng, stall_p: float, *, draw_at_zero: bool = True):
        self.io, self.port, self.rng, self.stall_p = io, port, rng, stall_p
        self.draw_at_zero = draw_at_zero
        self.is_ready = False

    def ready(self) -> bool:
        """The cycle's sets: ready or back-pressure."""
        draw = self.stall_p or self.draw_at_zero
        self.is_ready = not draw or self.rng.random() >= self.stall_p
        self.io.set(f"{self.port}.ready", int(self.is_ready))
        return self.is_ready

    async def beat(self) -> bool:
        """The cycle's gets: whether a beat is handed over this cycle (read its payload with
        :meth:`get` before the tick)."""
        return self.is_ready and bool(await self.io.get(f"{self.port}.valid"))

    async def get(self, path: str) -> int:
        return await self.io.get(f"{self.port}.payload.{path}")

    def close(self) -> None:
        self.io.set(f"{self.port}.ready", 0)
        self.is_ready = False


class DramResponder:
    """A DRAM (a dict memory) on ports ``o_dram_req`` / ``i_dram_resp`` (the GO cache's; the
    KV cache's ``o_kv_dram_req`` / ``i_kv_dram_resp`` by ``req`` / ``resp``): it takes every
    request, stores written words and answers a read the cycle after its request, oldest
    first (the DRAM's timing is the run's timeline's, ``moepim.models.dram``); a read of an
    address never written fails. ``writes`` / ``reads``: requests taken, by address."""

    def __init__(self, io, *, req: str = "o_dram_req", resp: str = "i_dram_resp"):
        self.io, self.req, self.resp = io, req, resp
        self.store: dict[int, int] = {}
        self.answers: list[int] = []
        self.writes: list[int] = []
        self.reads: list[int] = []
        self._offered = False
        self._taken = False
        self._ports_set = None         # (ready, valid) as last set: a port is set on change

    def offer(self) -> None:
        """The cycle's sets: take requests, offer the oldest answer."""
        self._offered = bool(self.answers)
        if self._ports_set != (1, self._offered):
            self.io.set(f"{self.req}.ready", 1)
            self.io.set(f"{self.resp}.valid", int(self._offered))
            self._ports_set = (1, self._offered)
        if self._offered:
            self.io.set(f"{self.resp}.payload.data", self.answers[0])

    async def serve(self) -> None:
        """The cycle's gets: store a write, queue a read's answer, note whether the offered
        answer was taken (it leaves the queue at :meth:`tick`)."""
        io, req = self.io, self.req
        if await io.get(f"{req}.valid"):
            addr = await io.get(f"{req}.payload.addr")
            if await io.get(f"{req}.payload.write"):
                self.store[addr] = await io.get(f"{req}.payload.data")
                self.writes.append(addr)
            else:
                if addr not in self.store:
                    raise KeyError(f"{req}: a read of DRAM address {addr}, never written")
                self.answers.append(self.store[addr])
                self.reads.append(addr)
        self._taken = self._offered and bool(await io.get(f"{self.resp}.ready"))

    def tick(self) -> None:
        """After the clock edge."""
        if self._taken:
            self.answers.pop(0)
        self._taken = False

    @property
    def idle(self) -> bool:
        return not self.answers

    def close(self) -> None:
        self.io.set(f"{self.req}.ready", 0)
        self.io.set(f"{self.resp}.valid", 0)
        self._ports_set = (0, False)


async def write_table(io, port: str, fields, writes, rng, gap_p: float) -> None:
    """Stream table writes (each a tuple of ``fields``) into ``port`` with the input gaps,
    before a run (SiLU, tanh and sigmoid tables)."""
    src = StreamSource(io, port, rng, gap_p, lambda w: dict(zip(fields, w)), mark_last=False)
    src.load(writes)
    while src.items:
        src.offer()
        await src.taken()
        await io.tick()
    src.close()
