"""The bench I/O protocol: ``io.wait_high`` lets cycles pass without per-cycle Python and
still lands on the same cycles, with the same cycle count, as reading every cycle."""

import pytest
from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from moepim.sim.block_run import run_bench

from .conftest import need_icarus


class Pulser(wiring.Component):
    """A free-running 16-bit counter; ``flag`` is high when it is a multiple of 37 or of 53
    (gaps of 1 to 37 cycles, sometimes back to back); ``never`` stays 0."""

    count: Out(16)
    flag: Out(1)
    never: Out(1)

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.count.eq(self.count + 1)
        m.d.comb += self.flag.eq((self.count % 37 == 0) | (self.count % 53 == 0)
                                 | (self.count % 53 == 1))
        return m


@pytest.mark.parametrize("sim", ["amaranth", "verilator", "icarus"])
def test_wait_high_lands_on_the_cycles_polling_finds(sim):
    if sim == "icarus":
        need_icarus()
    runs = {wait: run_bench(Pulser(), top="pulser", bench="wait_pulses",
                            args={"n": 40, "wait": wait}, sim=sim)
            for wait in (False, True)}
    polled, waited = runs[False]["seen"], runs[True]["seen"]
    assert waited == polled
    # the bench's cycle count follows the design's own counter, back-to-back pulses included
    assert all(b[0] - a[0] == (b[1] - a[1]) % (1 << 16) for a, b in zip(polled, polled[1:]))
    assert any(b[0] - a[0] == 1 for a, b in zip(polled, polled[1:]))
    # a wait that never sees its port high gives up after exactly its limit
    assert runs[True]["short"] == runs[False]["short"] == [False, 7]
