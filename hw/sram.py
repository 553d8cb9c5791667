"""``Sram``: a one-write, one-read-port RAM (synchronous, non-transparent read: a read in the
cycle of a write to the same row returns the old row), as an SRAM macro or as Amaranth memory.

A black-box ``Instance`` of ``moepim_sram`` (behavioural model
``hw/verilog/moepim_sram.v``; Yosys prices it as SRAM from its ``WIDTH`` and ``DEPTH``). Large
buffers are macros because Amaranth writes every bit of a memory's initial contents into its
netlist (a 512-token layer's buffers: ~60 M bits, minutes of export), and because a compiled
SRAM is what a chip would use. Under Amaranth's simulator (``moepim.hw.params.AmaranthSimulation``,
the platform), which cannot run the Verilog model: ``amaranth.lib.memory.Memory`` with the same
ports and timing.

Ports: ``w_en``/``w_addr``/``w_data`` (write at the clock edge), ``r_en``/``r_addr`` ->
``r_data`` (the row of ``r_addr`` one cycle later when ``r_en``; held while ``r_en`` is low).
Rows start at zero.
"""

from __future__ import annotations

from amaranth import ClockSignal, Instance, Module, Shape, Signal
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from moepim.spec.checks import index_bits, need_positive

from .params import simulating

__all__ = ["Sram", "SRAM_MACRO_NAME", "read_stream"]

SRAM_MACRO_NAME = "moepim_sram"


class Sram(wiring.Component):
    def __init__(self, *, shape, depth: int):
        need_positive("depth", depth)
        self._shape, self._depth = shape, depth
        addr = index_bits(depth)
        super().__init__({
            "w_en": In(1), "w_addr": In(addr), "w_data": In(shape),
            "r_en": In(1, init=1), "r_addr": In(addr), "r_data": Out(shape),
        })

    depth = property(lambda self: self._depth)

    @property
    def width(self) -> int:
        return Shape.cast(self._shape).width

    @property
    def bits(self) -> int:
        return self.width * self._depth

    def elaborate(self, platform):
        m = Module()
        if simulating(platform):
            m.submodules.mem = mem = memory.Memory(shape=self._shape, depth=self._depth,
                                                   init=[])
            wp, rp = mem.write_port(), mem.read_port()
            m.d.comb += [wp.en.eq(self.w_en), wp.addr.eq(self.w_addr), wp.data.eq(self.w_data),
                         rp.en.eq(self.r_en), rp.addr.eq(self.r_addr), self.r_data.eq(rp.data)]
            return m
        value = lambda v: v.as_value() if isinstance(v, data.View) else v   # noqa: E731
        m.submodules.macro = Instance(
            SRAM_MACRO_NAME, p_WIDTH=self.width, p_DEPTH=self._depth,
            p_ADDR_BITS=len(self.w_addr), i_clk=ClockSignal(),
            i_w_en=self.w_en, i_w_addr=self.w_addr, i_w_data=value(self.w_data),
            i_r_en=self.r_en, i_r_addr=self.r_addr, o_r_data=value(self.r_data))
        return m


def read_stream(m: Module, name: str, ready, more):
    """A stream of an ``Sram``'s read words (its read data one cycle after the read):
    ``valid`` (the read data is the beat), ``advance`` (the read enable: no beat held, or the
    consumer ``ready``) and ``fetch`` (a new word read this cycle: advancing and ``more``
    words to read). The caller addresses the memory on ``fetch``."""
    valid = Signal(name=f"{name}_valid")
    advance, fetch = Signal(name=f"{name}_advance"), Signal(name=f"{name}_fetch")
    m.d.comb += [advance.eq(~valid | ready), fetch.eq(advance & more)]
    with m.If(advance):
        m.d.sync += valid.eq(more)
    return valid, advance, fetch
