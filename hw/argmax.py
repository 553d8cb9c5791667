"""``ArgmaxUnit``: greedy decoding's argmax over a streamed vector (the LM head's logits).

A vector arrives on ``i_values``, ``lanes`` signed ``value_bits`` values per beat (element
``b * lanes + i`` in lane ``i`` of beat ``b``), ``last`` on its final beat; vectors follow each
other back to back. After the final beat ``o_index`` carries ``index``, the position of the
vector's maximum (the lowest among equal maxima: ``numpy.argmax``), and ``value``, the maximum.
Elements at positions ``max_items`` and beyond are ignored (the padding lanes of a final beat,
e.g. a ``ProjectionUnit``'s beyond ``n_out``): vectors hold at most ``max_items`` elements
that count, and element 0 always counts.

Per beat, a comparison tree over the lanes (the right operand wins only when strictly
greater, so the lower index wins ties) and one comparison with the running maximum of the
earlier beats (again strictly greater), in the handshake's cycle.

Latency: ``o_index.valid`` rises the cycle after the handshake of a vector's last beat
(``moepim.spec.timing.argmax_latency`` = 1). Throughput: one beat per cycle, no bubble between
vectors. Back-pressure: ``i_values.ready`` is low only while a result waits in the output
register and ``o_index.ready`` is low.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from moepim.spec import timing
from moepim.spec.checks import index_bits, need, need_positive

__all__ = ["ArgmaxUnit", "argmax_values_layout", "argmax_result_layout"]


def argmax_values_layout(*, value_bits: int, lanes: int):
    """One beat of a vector: ``lanes`` signed values, ``last`` on the vector's final beat."""
    return data.StructLayout({"values": data.ArrayLayout(signed(value_bits), lanes),
                              "last": 1})


def argmax_result_layout(*, value_bits: int, max_items: int):
    """A vector's result: the index of its (first) maximum and the maximum."""
    return data.StructLayout({"index": unsigned(index_bits(max_items)),
                              "value": signed(value_bits)})


class ArgmaxUnit(wiring.Component):
    def __init__(self, *, lanes: int, value_bits: int, max_items: int):
        need_positive("lanes", lanes)
        need(isinstance(value_bits, int) and not isinstance(value_bits, bool)
             and 2 <= value_bits <= 64, "value_bits", value_bits, "an integer from 2 to 64")
        need_positive("max_items", max_items)
        self._lanes, self._value_bits, self._max_items = lanes, value_bits, max_items
        super().__init__({
            "i_values": In(stream.Signature(argmax_values_layout(value_bits=value_bits,
                                                                 lanes=lanes))),
            "o_index": Out(stream.Signature(argmax_result_layout(value_bits=value_bits,
                                                                 max_items=max_items))),
        })

    lanes = property(lambda self: self._lanes)
    value_bits = property(lambda self: self._value_bits)
    max_items = property(lambda self: self._max_items)
    index_bits = property(lambda self: index_bits(self._max_items))

    @property
    def latency(self) -> int:
        """Cycles from the handshake of a vector's last beat to its ``o_index.valid``."""
        return timing.argmax_latency()

    def elaborate(self, platform):
        m = Module()
        lanes, vb, n = self._lanes, self._value_bits, self._max_items
        ib = self.index_bits
        inp, out = self.i_values, self.o_index
        take = Signal()
        out_valid = Signal()
        m.d.comb += [inp.ready.eq(~out_valid | out.ready), take.eq(inp.valid & inp.ready),
                     out.valid.eq(out_valid)]

        # position of the beat's lane 0 (saturates past max_items: later lanes never count)
        base = Signal(range(n + lanes))
        first = base == 0

        # the beat: a comparison tree over the counting lanes, lower index on ties
        nodes = []
        for i in range(lanes):
            ok, val, idx = Signal(name=f"ok{i}"), Signal(signed(vb), name=f"val{i}"), \
                Signal(ib, name=f"idx{i}")
            m.d.comb += [ok.eq(base + i < n), val.eq(inp.payload.values[i]),
                         idx.eq(base + i)]
            nodes.append((ok, val, idx))
        level = 0
        while len(nodes) > 1:
            merged = []
            for j in range(0, len(nodes) - 1, 2):
                (ok_a, val_a, idx_a), (ok_b, val_b, idx_b) = nodes[j], nodes[j + 1]
                pick_b = ok_b & (~ok_a | (val_b > val_a))
                ok, val, idx = Signal(name=f"ok_l{level}_{j}"), \
                    Signal(signed(vb), name=f"val_l{level}_{j}"), Signal(ib, name=f"idx_l{level}_{j}")
                m.d.comb += [ok.eq(ok_a | ok_b), val.eq(Mux(pick_b, val_b, val_a)),
                             idx.eq(Mux(pick_b, idx_b, idx_a))]
                merged.append((ok, val, idx))
            nodes = merged + ([nodes[-1]] if len(nodes) % 2 else [])
            level += 1
        beat_ok, beat_val, beat_idx = nodes[0]

        # the running maximum: replaced by the beat's on the first beat or a strictly greater
        best_val, best_idx = Signal(signed(vb)), Signal(ib)
        new = Signal()
        new_val, new_idx = Signal(signed(vb)), Signal(ib)
        m.d.comb += [new.eq(first | (beat_ok & (beat_val > best_val))),
                     new_val.eq(Mux(new, beat_val, best_val)),
                     new_idx.eq(Mux(new, beat_idx, best_idx))]
        with m.If(take):
            m.d.sync += [best_val.eq(new_val), best_idx.eq(new_idx),
                         base.eq(Mux(inp.payload.last, 0, Mux(base >= n, base, base + lanes)))]

        # result: registered after the last beat, held until taken
        with m.If(out.ready):
            m.d.sync += out_valid.eq(0)
        with m.If(take & inp.payload.last):
            m.d.sync += [out_valid.eq(1), out.payload.index.eq(new_idx),
                         out.payload.value.eq(new_val)]
        return m
