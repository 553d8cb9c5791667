"""One testbench, three simulators: a small I/O protocol over Amaranth's simulator and cocotb.

A bench is ``async def bench(io, **args) -> result`` that, every cycle, first sets inputs
(``io.set(path, value)``), then reads (``await io.get(path)``), then ``await io.tick()``.
``await io.wait_high(path, limit)`` (in place of the cycle's reads) lets cycles pass with the
inputs unchanged until a 1-bit output reads 1, returning in that cycle's read phase: a bench
with nothing to do but wait skips its per-cycle Python.
Paths name ports and payload fields with dots: ``"i_items.valid"``,
``"i_items.payload.score"``, ``"o_issue.2.ready"``, ``"o_timestamps.payload.tokens.3"``,
``"counters.busy.1"``; a path ending at a whole payload or array reads/writes its raw bits.

* :class:`AmaranthIO` resolves paths on the component (Amaranth testbench context).
* :class:`CocotbIO` maps them onto the exported Verilog's flattened ports
  (``o_issue__2__ready``) and the payload field maps of ``moepim.sim.ports``; reads wait for
  the cycle's ``ReadOnly`` phase, so all sets of a cycle must come before its first get.
"""

from __future__ import annotations

__all__ = ["AmaranthIO", "CocotbIO"]


class AmaranthIO:
    def __init__(self, component, ctx):
        self._c, self._ctx = component, ctx
        self.cycle = 0
        self._cache = {}

    def _resolve(self, path: str):
        obj = self._cache.get(path)
        if obj is None:
            obj = self._c
            for part in path.split("."):
                obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
            self._cache[path] = obj
        return obj

    def set(self, path: str, value: int) -> None:
        obj = self._resolve(path)
        self._ctx.set(obj.as_value() if hasattr(obj, "as_value") else obj, int(value))

    async def get(self, path: str) -> int:
        obj = self._resolve(path)
        return int(self._ctx.get(obj.as_value() if hasattr(obj, "as_value") else obj))

    async def tick(self) -> None:
        await self._ctx.tick()
        self.cycle += 1

    async def wait_high(self, path: str, limit: int) -> bool:
        """Cycles pass (inputs unchanged) until ``path`` reads 1, at most ``limit`` of them;
        whether it did."""
        start = self.cycle
        while not await self.get(path):
            if self.cycle - start >= limit:
                return False
            await self.tick()
        return True


class CocotbIO:
    def __init__(self, dut, ports: list[dict], period_ns: float = 10.0):
        self._dut = dut
        self._period = period_ns
        self._ports = {p["name"]: p for p in ports}
        self._shadow = {}
        self._readonly = False
        self._cache = {}
        self.cycle = 0

    def _resolve(self, path: str):
        """(port name, offset, width, signed) of a path."""
        hit = self._cache.get(path)
        if hit is not None:
            return hit
        parts = path.split(".")
        for cut in range(len(parts), 0, -1):
            name = "__".join(parts[:cut])
            if name in self._ports:
                port, rest = self._ports[name], parts[cut:]
                break
        else:
            raise KeyError(f"no port for {path!r}")
        offset, width, signed = 0, port["width"], False
        if rest:
            fields = port.get("fields", {})
            for k in range(len(rest), 0, -1):
                key = ".".join(rest[:k])
                if key in fields:
                    f_off, f_w, count, signed = fields[key]
                    tail = rest[k:]
                    if tail:                       # one element of an array field
                        offset, width = f_off + int(tail[0]) * f_w, f_w
                    else:
                        offset, width = f_off, f_w * count if count else f_w
                        signed = signed and not count
                    break
            else:
                raise KeyError(f"no field for {path!r} in port {port['name']}")
        hit = (port["name"], offset, width, signed)
        self._cache[path] = hit
        return hit

    def set(self, path: str, value: int) -> None:
        if self._readonly:
            raise RuntimeError(f"set({path!r}) after a get in the same cycle")
        name, offset, width, _ = self._resolve(path)
        mask = ((1 << width) - 1) << offset
        word = self._shadow.get(name, 0)
        word = (word & ~mask) | ((int(value) << offset) & mask)
        self._shadow[name] = word
        getattr(self._dut, name).value = word

    async def get(self, path: str) -> int:
        from cocotb.triggers import ReadOnly

        if not self._readonly:
            await ReadOnly()
            self._readonly = True
        name, offset, width, signed = self._resolve(path)
        word = int(getattr(self._dut, name).value)   # Logic (1 bit) or LogicArray: unsigned
        value = (word >> offset) & ((1 << width) - 1)
        if signed and value >> (width - 1):
            value -= 1 << width
        return value

    async def tick(self) -> None:
        from cocotb.triggers import RisingEdge

        await RisingEdge(self._dut.clk)
        self._readonly = False
        self.cycle += 1

    async def wait_high(self, path: str, limit: int) -> bool:
        """Cycles pass (inputs unchanged) until the 1-bit ``path`` reads 1 in a cycle's read
        phase, at most ``limit`` of them; whether it did. Between reads the simulator runs
        freely until the port's rising edge (or the limit): ``cycle`` counts the clock edges
        passed, from the simulation time. A port that rises and falls again within a time
        step (a glitch) is read again and waited for again."""
        from cocotb.triggers import First, ReadOnly, RisingEdge, Timer
        from cocotb.utils import get_sim_time

        name, offset, width, _ = self._resolve(path)
        handle = getattr(self._dut, name)
        start = self.cycle
        while True:
            if not self._readonly:
                await ReadOnly()
                self._readonly = True
            if (int(handle.value) >> offset) & 1:
                return True
            left = limit - (self.cycle - start)
            if left <= 0:
                return False
            if width != 1 or offset:            # a bit inside a wider port: cycle by cycle
                await self.tick()
                continue
            t0 = get_sim_time(unit="ns")        # the read phase of the current cycle
            await First(RisingEdge(handle), Timer(left * self._period, unit="ns"))
            self._readonly = False
            self.cycle += round((get_sim_time(unit="ns") - t0) / self._period)
