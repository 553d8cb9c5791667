"""``TileGroup``: ``group_size`` crossbars sharing one ``PeripheralSet`` (the tile experiment's top)."""

from __future__ import annotations

from amaranth import Module
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from moepim.spec.tile import TileSpec

from .crossbar import CrossbarArray, crossbar_counters_layout, weight_row_layout
from .peripherals import PeripheralSet, peripheral_counters_layout, request_layout, result_layout

__all__ = ["TileGroup"]


class TileGroup(wiring.Component):
    """Crossbar-level multiplexing: ``group_size`` crossbars, one set of peripherals.

    Ports
    -----
    i_weights : stream of ``weight_row_layout(n_crossbars=group_size)``
        Programs one row of one crossbar per transfer (1 per cycle); a crossbar's rows are
        refused (``ready`` low) while it holds the peripherals.
    i_requests : ``group_size`` request streams (one per crossbar), see ``PeripheralSet``.
    o_results : result stream, see ``PeripheralSet``.
    adc_shifts : each crossbar's run-time ADC window (``adc_range="calibrated"`` only).
    counters : ``{"peripherals": ..., "crossbars": [...]}``.

    Timing is the peripheral set's: ``mvm_latency = input_bits * n_columns/n_adcs + 4``;
    simultaneous requests of different crossbars are served one after the other.
    """

    def __init__(self, *, tile: TileSpec, group_size=1, core="macro", counter_bits=48):
        self.peripherals = PeripheralSet(tile=tile, group_size=group_size,
                                         counter_bits=counter_bits)
        self.crossbars = [CrossbarArray(tile=tile, core=core, counter_bits=counter_bits)
                          for _ in range(group_size)]
        self._core = core
        g = self.peripherals.geometry
        extra = ({"adc_shifts": In(self.peripherals.signature.members["adc_shifts"].shape)}
                 if g.calibrated else {})
        super().__init__({**extra,
            "i_weights": In(stream.Signature(weight_row_layout(g, n_crossbars=group_size))),
            "i_requests": In(stream.Signature(request_layout(g))).array(group_size),
            "o_results": Out(stream.Signature(result_layout(g, group_size))),
            "counters": Out(data.StructLayout({
                "peripherals": peripheral_counters_layout(counter_bits, group_size),
                "crossbars": data.ArrayLayout(crossbar_counters_layout(counter_bits),
                                              group_size),
            })),
        })

    geometry = property(lambda self: self.peripherals.geometry)
    group_size = property(lambda self: self.peripherals.group_size)
    core = property(lambda self: self._core)
    mvm_latency = property(lambda self: self.peripherals.mvm_latency)

    def elaborate(self, platform):
        m = Module()
        m.submodules.peripherals = per = self.peripherals
        for i, xb in enumerate(self.crossbars):
            m.submodules[f"xbar{i}"] = xb
            wiring.connect(m, per.xbars[i], xb.analog)
            wiring.connect(m, wiring.flipped(self.i_requests[i]), per.i_requests[i])
            m.d.comb += self.counters.crossbars[i].eq(xb.counters)

        # weight port: demultiplex by crossbar index
        w = self.i_weights
        for i, xb in enumerate(self.crossbars):
            m.d.comb += [
                xb.i_weights.valid.eq(w.valid & (w.payload.xbar == i)),
                xb.i_weights.payload.row.eq(w.payload.row),
                xb.i_weights.payload.w.eq(w.payload.w),
            ]
            with m.If(w.payload.xbar == i):
                m.d.comb += w.ready.eq(xb.i_weights.ready)

        wiring.connect(m, per.o_results, wiring.flipped(self.o_results))
        if self.geometry.calibrated:
            m.d.comb += per.adc_shifts.eq(self.adc_shifts)
        m.d.comb += self.counters.peripherals.eq(per.counters)
        return m
