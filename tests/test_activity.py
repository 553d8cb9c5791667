"""Switching activity from Verilator's SAIF: a counter's bits toggle as computed by hand."""

import pytest
from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from moepim.sim.activity import SaifError, per_module, read_saif
from moepim.sim.block_run import run_bench


class Counter(wiring.Component):
    """An 8-bit free-running counter: bit i toggles once every 2**i cycles."""

    count: Out(8)

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.count.eq(self.count + 1)
        return m


@pytest.mark.xdist_group("verilator-small")
def test_counter_toggles(tmp_path):
    n = 1000
    saif = tmp_path / "counter.saif"
    run_bench(Counter(), top="counter", bench="free_run", args={"cycles": n},
              sim="verilator", trace="saif", trace_to=saif)
    counts = read_saif(saif)
    for i in range(8):
        # the counter runs n cycles after reset (plus the reset edge itself)
        assert abs(counts[f"counter/count[{i}]"] - n / 2 ** i) <= 1, (i, counts)
    modules = per_module(counts)
    assert set(modules) == {"counter"}
    assert modules["counter"] >= sum(counts[f"counter/count[{i}]"] for i in range(8))


def test_bad_saif(tmp_path):
    p = tmp_path / "x.saif"
    p.write_text("(NOTSAIF)")
    with pytest.raises(SaifError, match="not a SAIF"):
        read_saif(p)
    p.write_text("(SAIFILE (INSTANCE a")
    with pytest.raises(SaifError, match="unbalanced"):
        read_saif(p)
