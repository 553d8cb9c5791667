"""``PeripheralSet``: DACs, column-muxed ADCs, shift-and-add and output buffer shared by a group.

One peripheral set serves ``group_size`` crossbars (crossbar-level multiplexing): a
round-robin arbiter grants it to one requesting crossbar at a time; the other requests wait
and their stall cycles are counted.

Sequence of one MVM (cycle 0 = the request's handshake)::

    0                  latch x, grant the crossbar, clear the accumulators
    1                  drive bit plane 0 (DACs -> word lines, sample-and-hold)
    2 .. 1+B*M         convert: column m of every ADC's group, for m = 0..M-1 per plane;
                       the last conversion of plane b also drives plane b+1
    3 .. 2+B*M         ADC quantisation + shift-and-add of the previous cycle's sample
    3+B*M              combine slices, subtract the offset term, write the output buffer
    4+B*M              o_results.valid

with B = ``input_bits`` and M = ``columns_per_adc`` (the ADC's lines: ``n_columns // n_adcs``,
or ``n_columns // 2 // n_adcs`` column pairs for ``differential``). So ``mvm_latency = B*M + 4``; the set
accepts its next request in the cycle ``o_results.valid`` rises, so back-to-back MVMs start
every ``B*M + 4`` cycles. If the output buffer is still full (back-pressure), the combine
step waits, and so does the next request.

ADC (exact): ``code = clip(sum >> adc_shift, code_min, code_max)`` (unsigned
``0 .. 2**adc_bits - 1`` for the ``offset`` encoding, signed ``-2**(adc_bits-1) ..
2**(adc_bits-1) - 1`` for ``differential`` and ``reference_column``, whose line sums the
crossbar subtracts before the ADC), value ``code << adc_shift``. ``adc_range="calibrated"``:
the shift is a run-time input, ``adc_shifts[crossbar][slice]`` (the granted crossbar's window,
one shift per weight slice; held constant while the set works). The combine step subtracts
``offset_correction * sum(x)`` (``2**(weight_bits-1)`` for ``offset``, 0 for ``differential``;
see ``moepim.models.tile``).
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from moepim.spec.checks import index_bits, signed_bits
from moepim.spec.tile import TileSpec

from .crossbar import CrossbarPort
from .params import check_counter_bits, check_group_size, check_tile, tree_sum

__all__ = ["PeripheralSet", "request_layout", "result_layout", "peripheral_counters_layout",
           "adc_window_layout"]


def adc_window_layout(g: TileSpec):
    """A crossbar's calibrated ADC window: one shift per weight slice."""
    return data.ArrayLayout(unsigned(g.shift_bits), g.slices_per_weight)


def request_layout(g: TileSpec):
    return data.StructLayout({"x": data.ArrayLayout(signed(g.input_bits), g.n_rows)})


def result_layout(g: TileSpec, group_size: int):
    return data.StructLayout({
        "xbar": unsigned(index_bits(group_size)),
        "y": data.ArrayLayout(signed(g.output_bits), g.n_outputs),
    })


def peripheral_counters_layout(counter_bits: int, group_size: int):
    c = unsigned(counter_bits)
    return data.StructLayout({
        "mvms": c,                                        # results written to the buffer
        "dac_drives": c,                                  # word-line pulses ('1' input bits)
        "adc_conversions": c,                             # one per ADC per conversion cycle
        "shift_adds": c,                                  # one per converted value
        "busy_cycles": c,                                 # handshake to result cycles
        "stall_cycles": data.ArrayLayout(c, group_size),  # request valid but not accepted
    })


class PeripheralSet(wiring.Component):
    """Shared peripherals of one crossbar group.

    Ports
    -----
    i_requests : ``group_size`` streams of ``request_layout``
        Request ``i`` asks for one MVM on crossbar ``i``. Round-robin arbitration among the
        valid requests; ``ready`` may depend on ``valid``.
    o_results : stream of ``result_layout``
        One result per accepted request, in acceptance order, tagged with the crossbar index.
        Honors back-pressure.
    xbars : ``group_size`` :class:`~moepim.hw.crossbar.CrossbarPort`
        To the crossbars; only the granted one is driven, selected and read.
    adc_shifts : ``group_size`` x ``adc_window_layout`` (only with ``adc_range="calibrated"``)
        Each crossbar's run-time ADC window, a shift per weight slice.
    counters : see ``peripheral_counters_layout``.

    Latency ``mvm_latency = input_bits * columns_per_adc + 4`` cycles (see the module
    docstring); throughput one MVM per ``mvm_latency`` cycles per set.
    """

    def __init__(self, *, tile: TileSpec, group_size=1, counter_bits=48):
        check_tile(tile)
        check_group_size(group_size)
        check_counter_bits(counter_bits)
        self._geometry = tile
        self._group_size = group_size
        self._counter_bits = counter_bits
        g = self._geometry
        ports = {
            "i_requests": In(stream.Signature(request_layout(g))).array(group_size),
            "o_results": Out(stream.Signature(result_layout(g, group_size))),
            "xbars": Out(CrossbarPort(g)).array(group_size),
            "counters": Out(peripheral_counters_layout(counter_bits, group_size)),
        }
        if g.calibrated:
            ports["adc_shifts"] = In(data.ArrayLayout(adc_window_layout(g), group_size))
        super().__init__(ports)

    geometry = property(lambda self: self._geometry)
    group_size = property(lambda self: self._group_size)
    counter_bits = property(lambda self: self._counter_bits)
    n_adcs = property(lambda self: self._geometry.n_adcs)
    adc_bits = property(lambda self: self._geometry.adc_bits)
    adc_shift = property(lambda self: self._geometry.resolved_adc_shift)
    mvm_latency = property(lambda self: self._geometry.mvm_latency)

    def elaborate(self, platform):
        m = Module()
        g, n_groups = self._geometry, self._group_size
        cpa, n_bits = g.columns_per_adc, g.input_bits
        reqs, xbars, cnt = self.i_requests, self.xbars, self.counters

        x_q = Signal(request_layout(g).members["x"])
        grant = Signal(range(n_groups) if n_groups > 1 else 1)
        last = Signal.like(grant)                   # last grant, for round-robin priority
        plane_idx = Signal(range(n_bits))           # plane being converted
        col = Signal(range(cpa) if cpa > 1 else 1)  # column being converted
        pending = Signal()                          # sums hold a sample to quantise this cycle
        pend_plane = Signal.like(plane_idx)
        accs = [Signal(signed(g.acc_bits), name=f"acc{c}") for c in range(g.n_lines)]
        pend_col = Signal.like(col)
        drive = Signal()
        drive_plane = Signal.like(plane_idx)
        convert = Signal()

        # arbitration: round-robin over the valid requests, only when idle
        take = Signal()
        winner = Signal.like(grant)
        any_valid = Signal()
        with m.Switch(last):
            for prev in range(n_groups):
                with m.Case(prev):
                    order = [(prev + 1 + k) % n_groups for k in range(n_groups)]
                    with m.If(reqs[order[0]].valid):
                        m.d.comb += [winner.eq(order[0]), any_valid.eq(1)]
                    for i in order[1:]:
                        with m.Elif(reqs[i].valid):
                            m.d.comb += [winner.eq(i), any_valid.eq(1)]
        for i in range(n_groups):
            m.d.comb += reqs[i].ready.eq(take & (winner == i))

        # crossbar side: only the granted crossbar is selected, driven and sampled
        x_bits = x_q.as_value()
        x_planes = [Cat(x_bits[r * n_bits + b] for r in range(g.n_rows)) for b in range(n_bits)]
        wl = Signal(g.n_rows)
        with m.Switch(drive_plane):
            for b in range(n_bits):
                with m.Case(b):
                    m.d.comb += wl.eq(x_planes[b])
        sums = Signal.like(xbars[0].sums)
        for i in range(n_groups):
            sel = grant == i
            m.d.comb += [
                xbars[i].drive.eq(drive & sel),
                xbars[i].wl.eq(wl),
                xbars[i].convert.eq(convert & sel),
                xbars[i].col.eq(col),
            ]
            with m.If(sel):
                m.d.comb += sums.eq(xbars[i].sums)

        # ADC: truncate then saturate (a fixed or, calibrated, the granted crossbar's run-time
        # shift of the sampled line's weight slice); shift-and-add into the line accumulators
        lo_code, hi_code = g.code_range
        lo_sum, hi_sum = g.sum_range
        conv_lo, conv_hi = g.converted_bounds
        term_shape = (signed(signed_bits(conv_lo << (n_bits - 1), conv_hi << (n_bits - 1)))
                      if g.signed_sums else
                      unsigned((g.max_converted << (n_bits - 1)).bit_length()))
        spw = g.slices_per_weight
        window = Signal(adc_window_layout(g)) if g.calibrated else None
        if window is not None:
            with m.Switch(grant):
                for i in range(n_groups):
                    with m.Case(i):
                        m.d.comb += window.eq(self.adc_shifts[i])
        terms = []
        for a in range(g.n_adcs):
            s = sums[a]
            code = Signal((signed if g.signed_sums else unsigned)(g.code_bits),
                          name=f"adc{a}_code")
            if window is None:
                shift = g.resolved_adc_shift
                saturates = ((hi_sum >> shift) > hi_code or (lo_sum >> shift) < lo_code)
            else:
                shift = Signal(g.shift_bits, name=f"adc{a}_shift")
                with m.Switch(pend_col):
                    for c in range(cpa):
                        with m.Case(c):
                            m.d.comb += shift.eq(window[(a * cpa + c) % spw])
                saturates = True
            truncated = s >> shift
            if saturates:
                clipped = Mux(truncated > hi_code, hi_code, truncated)
                if g.signed_sums:
                    clipped = Mux(truncated < lo_code, Const(lo_code, signed(g.adc_bits)),
                                  clipped)
                m.d.comb += code.eq(clipped)
            else:
                m.d.comb += code.eq(truncated)
            term = Signal(term_shape, name=f"adc{a}_term")
            m.d.comb += term.eq((code << shift) << pend_plane)
            terms.append(term)
        sign_plane = pend_plane == n_bits - 1
        for c, acc in enumerate(accs):
            term = terms[c // cpa]
            with m.If(pending & (pend_col == c % cpa)):
                m.d.sync += acc.eq(Mux(sign_plane, acc - term, acc + term))

        # combine slices and subtract the offset term into the output buffer
        combined = []
        x_sum = Signal(signed(g.input_bits + index_bits(g.n_rows) + 1))
        m.d.comb += x_sum.eq(tree_sum(x_q[r] for r in range(g.n_rows)))
        offset = g.offset_correction
        for o in range(g.n_outputs):
            total = sum(accs[o * g.slices_per_weight + j] << (j * g.bits_per_cell)
                        for j in range(g.slices_per_weight))
            y = Signal(signed(g.output_bits), name=f"y{o}")
            m.d.comb += y.eq(total - x_sum * offset if offset else total)
            combined.append(y)
        out_free = ~self.o_results.valid | self.o_results.ready
        with m.If(self.o_results.valid & self.o_results.ready):
            m.d.sync += self.o_results.valid.eq(0)

        # sequencing
        m.d.sync += pending.eq(convert)
        m.d.sync += [pend_plane.eq(plane_idx), pend_col.eq(col)]
        with m.FSM(name="seq") as fsm:
            with m.State("IDLE"):
                m.d.comb += take.eq(1)
                with m.If(any_valid):
                    with m.Switch(winner):
                        for i in range(n_groups):
                            with m.Case(i):
                                m.d.sync += x_q.eq(reqs[i].payload.x)
                    m.d.sync += [grant.eq(winner), last.eq(winner)]
                    m.d.sync += [acc.eq(0) for acc in accs]
                    m.next = "DRIVE"
            with m.State("DRIVE"):
                m.d.comb += [drive.eq(1), drive_plane.eq(0)]
                m.d.sync += [plane_idx.eq(0), col.eq(0)]
                m.next = "CONVERT"
            with m.State("CONVERT"):
                m.d.comb += convert.eq(1)
                last_col = col == cpa - 1
                with m.If(last_col):
                    m.d.sync += col.eq(0)
                    with m.If(plane_idx == n_bits - 1):
                        m.next = "FLUSH"
                    with m.Else():
                        m.d.comb += [drive.eq(1), drive_plane.eq(plane_idx + 1)]
                        m.d.sync += plane_idx.eq(plane_idx + 1)
                with m.Else():
                    m.d.sync += col.eq(col + 1)
            with m.State("FLUSH"):
                m.next = "COMBINE"
            with m.State("COMBINE"):
                with m.If(out_free):
                    m.d.sync += [
                        self.o_results.valid.eq(1),
                        self.o_results.payload.xbar.eq(grant),
                        self.o_results.payload.y.as_value().eq(Cat(*combined)),
                        cnt.mvms.eq(cnt.mvms + 1),
                    ]
                    m.next = "IDLE"
            # busy from the handshake cycle on: mvm_latency cycles per MVM without back-pressure
            busy = ~fsm.ongoing("IDLE") | any_valid

        # event counters
        n_pulses = Signal(range(g.n_rows + 1))
        m.d.comb += n_pulses.eq(tree_sum(wl[r] for r in range(g.n_rows)))
        with m.If(drive):
            m.d.sync += cnt.dac_drives.eq(cnt.dac_drives + n_pulses)
        with m.If(pending):
            m.d.sync += [cnt.adc_conversions.eq(cnt.adc_conversions + g.n_adcs),
                         cnt.shift_adds.eq(cnt.shift_adds + g.n_adcs)]
        with m.If(busy):
            m.d.sync += cnt.busy_cycles.eq(cnt.busy_cycles + 1)
        for i in range(n_groups):
            with m.If(reqs[i].valid & ~reqs[i].ready):
                m.d.sync += cnt.stall_cycles[i].eq(cnt.stall_cycles[i] + 1)
            m.d.comb += xbars[i].select.eq(~fsm.ongoing("IDLE") & (grant == i))
        return m
