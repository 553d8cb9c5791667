"""``StreamingTopK``: the selection core of the routers (top-k of a token, top-C of an expert).

Items (index, score) stream in, one per cycle; a sorted list of ``k`` registers keeps the best
so far. Each item is compared with the ``k`` entries in parallel (``k`` comparators, not an
``n x n`` mesh) and inserted with a shift. After the item flagged ``last``, the first ``count``
entries stream out in rank order (``count`` is taken with the window's first item, 1..k; 0 is
read as 1; a window shorter than ``count`` yields all its items).

Order: higher score first; among equal scores the item that arrived first wins (items arrive
in index order, so the lower index wins: the tie-break of ``moepim.models.routing``).

Timing: one item per cycle; the first result is valid the cycle after ``last`` is accepted,
then one result per cycle under no back-pressure. A window of ``n`` items therefore occupies
the unit for ``n + count`` cycles (``window_cycles``); the next window's first item is accepted
in the cycle after the last result is taken.
"""

from __future__ import annotations

from amaranth import Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from moepim.spec import timing
from moepim.spec.checks import index_bits, need, need_positive

from .params import tree_sum

__all__ = ["StreamingTopK", "item_layout", "selected_layout"]


def item_layout(n_items: int, score_bits: int, signed_scores: bool, k: int):
    return data.StructLayout({
        "index": unsigned(index_bits(n_items)),
        "score": signed(score_bits) if signed_scores else unsigned(score_bits),
        "count": unsigned(index_bits(k + 1)),
        "last": 1,
    })


def selected_layout(n_items: int, score_bits: int, signed_scores: bool):
    return data.StructLayout({
        "index": unsigned(index_bits(n_items)),
        "score": signed(score_bits) if signed_scores else unsigned(score_bits),
        "last": 1,
    })


# k registers, k comparators and a k-way output multiplexer: the cost grows linearly (Yosys
# prices it); an expert-choice window of 512 tokens over 4 experts asks for k = 512
MAX_K = 1024


class StreamingTopK(wiring.Component):
    """Ports: ``i_items`` (index, score, count, last), ``o_selected`` (index, score, last)."""

    def __init__(self, *, n_items: int, k: int, score_bits: int, signed_scores: bool = True):
        need_positive("n_items", n_items)
        need_positive("k", k)
        need(k <= MAX_K, "k", k, f"an integer from 1 to {MAX_K}")
        need(isinstance(score_bits, int) and 1 <= score_bits <= 64, "score_bits", score_bits,
             "an integer from 1 to 64")
        self._n_items, self._k = n_items, k
        self._score_bits, self._signed = score_bits, bool(signed_scores)
        super().__init__({
            "i_items": In(stream.Signature(item_layout(n_items, score_bits, signed_scores, k))),
            "o_selected": Out(stream.Signature(selected_layout(n_items, score_bits,
                                                               signed_scores))),
        })

    n_items = property(lambda self: self._n_items)
    k = property(lambda self: self._k)
    score_bits = property(lambda self: self._score_bits)
    signed_scores = property(lambda self: self._signed)

    def window_cycles(self, n: int, count: int) -> int:
        return timing.topk_window_cycles(n, count)

    def elaborate(self, platform):
        m = Module()
        k = self._k
        shape = signed(self._score_bits) if self._signed else unsigned(self._score_bits)
        idx_shape = unsigned(index_bits(self._n_items))
        scores = [Signal(shape, name=f"score{j}") for j in range(k)]
        indices = [Signal(idx_shape, name=f"index{j}") for j in range(k)]
        valid = [Signal(name=f"valid{j}") for j in range(k)]
        count = Signal(range(k + 1))
        first = Signal(init=1)              # the next item opens a window
        out_pos = Signal(range(k + 1))
        item, i_s = self.i_items.payload, self.i_items
        o = self.o_selected

        with m.FSM(name="topk"):
            with m.State("COLLECT"):
                m.d.comb += i_s.ready.eq(1)
                with m.If(i_s.valid):
                    # entry j keeps its place iff it beats the newcomer (ties: it came first)
                    keeps = [valid[j] & (scores[j] >= item.score) for j in range(k)]
                    for j in range(k):
                        above = keeps[j - 1] if j else 1
                        with m.If(first):
                            m.d.sync += [valid[j].eq(j == 0), scores[j].eq(item.score),
                                         indices[j].eq(item.index)]
                        with m.Elif(keeps[j]):
                            pass                                   # stays
                        with m.Elif(above):                        # newcomer lands here
                            m.d.sync += [valid[j].eq(1), scores[j].eq(item.score),
                                         indices[j].eq(item.index)]
                        with m.Else():                             # shifted down by one
                            m.d.sync += [valid[j].eq(valid[j - 1]), scores[j].eq(scores[j - 1]),
                                         indices[j].eq(indices[j - 1])]
                    with m.If(first):
                        m.d.sync += count.eq(item.count)
                    m.d.sync += first.eq(item.last)
                    with m.If(item.last):
                        m.d.sync += out_pos.eq(0)
                        m.next = "EMIT"
            with m.State("EMIT"):
                limit = Signal(range(k + 1))
                n_valid = tree_sum(valid[j] for j in range(k))
                m.d.comb += limit.eq(count)
                with m.If(n_valid < count):
                    m.d.comb += limit.eq(n_valid)
                with m.If(count == 0):
                    m.d.comb += limit.eq(1)
                m.d.comb += o.valid.eq(1)
                with m.Switch(out_pos):
                    for j in range(k):
                        with m.Case(j):
                            m.d.comb += [o.payload.index.eq(indices[j]),
                                         o.payload.score.eq(scores[j])]
                m.d.comb += o.payload.last.eq(out_pos == limit - 1)
                with m.If(o.ready):
                    m.d.sync += out_pos.eq(out_pos + 1)
                    with m.If(out_pos == limit - 1):
                        m.next = "COLLECT"
        return m
