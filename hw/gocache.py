"""``GateOutputCache``: the GO cache of the expert-choice router (functional model:
``moepim.models.gocache.GoCacheModel``).

It keeps one row of ``n_experts`` gate scores (``score_bits`` each) per earlier token: rows of
tokens ``0 .. go_cache_rows-1`` in an on-chip SRAM (``lib.memory``), later rows spilled to DRAM
through ``o_dram_req`` / ``i_dram_resp`` (row ``n`` at DRAM row ``n - go_cache_rows``).

Commands (``i_cmd``):

* ``CLEAR``: forget all rows (a new sequence).
* ``INSERT``: store the row (prompt tokens).
* ``DECIDE``: for a generated token: scan every stored row (SRAM rows one per cycle, DRAM rows
  as their responses arrive), count per expert the earlier tokens scoring ``>=`` the new one,
  send ``mask[e] = count[e] < cap`` on ``o_select`` (``cap`` = C(L) from the command), then
  store the row.

Timing without back-pressure: INSERT 1 cycle after acceptance (plus the DRAM write handshake
when spilling); DECIDE ``min(n, go_cache_rows) + 1`` cycles of SRAM scan, then the DRAM rows at the
DRAM's pace, then 1 cycle for the result. Counters as in the functional model.
"""

from __future__ import annotations

import math

from amaranth import Cat, Module, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from moepim.spec.checks import index_bits, need, need_positive

from .params import check_counter_bits

__all__ = ["GateOutputCache", "OP_CLEAR", "OP_INSERT", "OP_DECIDE"]

OP_CLEAR, OP_INSERT, OP_DECIDE = 0, 1, 2


class GateOutputCache(wiring.Component):
    def __init__(self, *, n_experts: int, score_bits: int = 16, go_cache_rows: int,
                 max_tokens: int, counter_bits: int = 48):
        for name, value in (("n_experts", n_experts), ("score_bits", score_bits),
                            ("go_cache_rows", go_cache_rows), ("max_tokens", max_tokens)):
            need_positive(name, value)
        need(go_cache_rows <= max_tokens, "go_cache_rows", go_cache_rows, f"at most max_tokens={max_tokens}")
        check_counter_bits(counter_bits)
        self._n_experts, self._score_bits = n_experts, score_bits
        self._go_cache_rows, self._max_tokens = go_cache_rows, max_tokens
        row = data.ArrayLayout(unsigned(score_bits), n_experts)
        self._row = row
        count = unsigned(index_bits(max_tokens + 2))
        c = unsigned(counter_bits)
        super().__init__({
            "i_cmd": In(stream.Signature(data.StructLayout({
                "op": 2, "cap": count, "scores": row}))),
            "o_select": Out(stream.Signature(data.StructLayout({"mask": n_experts}))),
            "o_dram_req": Out(stream.Signature(data.StructLayout({
                "write": 1, "addr": unsigned(index_bits(max_tokens)), "data": row}))),
            "i_dram_resp": In(stream.Signature(data.StructLayout({"data": row}))),
            "n_rows": Out(count),
            "counters": Out(data.StructLayout({
                "sram_reads": c, "sram_writes": c, "sram_bits": c, "hits": c, "spills": c,
                "dram_reads": c, "dram_bytes": c})),
        })

    n_experts = property(lambda self: self._n_experts)
    go_cache_rows = property(lambda self: self._go_cache_rows)

    @property
    def row_bits(self) -> int:
        return self._n_experts * self._score_bits

    @property
    def row_bytes(self) -> int:
        return math.ceil(self.row_bits / 8)

    def elaborate(self, platform):
        m = Module()
        n_exp, cap_rows = self._n_experts, self._go_cache_rows
        m.submodules.sram = sram = Memory(shape=self._row, depth=cap_rows, init=[])
        wp, rp = sram.write_port(), sram.read_port()
        cnt = self.counters
        cmd = self.i_cmd.payload

        new = Signal(self._row)
        cap = Signal.like(cmd.cap)
        n = Signal.like(self.n_rows)                 # rows stored
        m.d.comb += self.n_rows.eq(n)
        counts = [Signal(range(self._max_tokens + 2), name=f"count{e}") for e in range(n_exp)]
        n_sram = Signal.like(n)
        m.d.comb += n_sram.eq(n)
        with m.If(n > cap_rows):
            m.d.comb += n_sram.eq(cap_rows)
        n_dram = Signal.like(n)
        m.d.comb += n_dram.eq(n - n_sram)

        # compare one stored row with the new one: SRAM data (1 cycle after its read) or a
        # DRAM response
        row_in = Signal(self._row)
        row_valid = Signal()
        sram_pending = Signal()                      # rp.data holds a row this cycle
        m.d.comb += rp.en.eq(1)
        with m.If(sram_pending):
            m.d.comb += [row_in.eq(rp.data), row_valid.eq(1)]
        with m.Elif(self.i_dram_resp.valid & self.i_dram_resp.ready):
            m.d.comb += [row_in.eq(self.i_dram_resp.payload.data), row_valid.eq(1)]
        with m.If(row_valid):
            for e in range(n_exp):
                with m.If(row_in[e] >= new[e]):
                    m.d.sync += counts[e].eq(counts[e] + 1)

        scan = Signal.like(n)                        # SRAM rows read so far
        req = Signal.like(n)                         # DRAM read requests sent
        resp = Signal.like(n)                        # DRAM responses received
        m.d.sync += sram_pending.eq(0)
        row_bits, row_bytes = self.row_bits, self.row_bytes
        with m.FSM(name="go"):
            with m.State("IDLE"):
                m.d.comb += self.i_cmd.ready.eq(1)
                with m.If(self.i_cmd.valid):
                    m.d.sync += [new.eq(cmd.scores), cap.eq(cmd.cap)]
                    with m.Switch(cmd.op):
                        with m.Case(OP_CLEAR):
                            m.d.sync += n.eq(0)
                        with m.Case(OP_INSERT):
                            m.next = "INSERT"
                        with m.Case(OP_DECIDE):
                            m.d.sync += [scan.eq(0), req.eq(0), resp.eq(0)]
                            m.d.sync += [c.eq(0) for c in counts]
                            m.next = "SCAN"
            with m.State("SCAN"):
                # SRAM rows, one read per cycle
                with m.If(scan < n_sram):
                    m.d.comb += rp.addr.eq(scan)
                    m.d.sync += [scan.eq(scan + 1), sram_pending.eq(1),
                                 cnt.sram_reads.eq(cnt.sram_reads + 1),
                                 cnt.hits.eq(cnt.hits + 1),
                                 cnt.sram_bits.eq(cnt.sram_bits + row_bits)]
                # DRAM rows: requests run ahead of responses; responses wait for the SRAM scan
                with m.Elif(req < n_dram):
                    m.d.comb += [self.o_dram_req.valid.eq(1),
                                 self.o_dram_req.payload.write.eq(0),
                                 self.o_dram_req.payload.addr.eq(req)]
                    with m.If(self.o_dram_req.ready):
                        m.d.sync += req.eq(req + 1)
                with m.If((scan == n_sram) & ~sram_pending & (resp < n_dram)):
                    m.d.comb += self.i_dram_resp.ready.eq(1)
                    with m.If(self.i_dram_resp.valid):
                        m.d.sync += [resp.eq(resp + 1),
                                     cnt.dram_reads.eq(cnt.dram_reads + 1),
                                     cnt.dram_bytes.eq(cnt.dram_bytes + row_bytes)]
                with m.If((scan == n_sram) & ~sram_pending & (resp == n_dram)):
                    m.next = "RESULT"
            with m.State("RESULT"):
                m.d.comb += [self.o_select.valid.eq(1),
                             self.o_select.payload.mask.eq(Cat(counts[e] < cap
                                                               for e in range(n_exp)))]
                with m.If(self.o_select.ready):
                    m.next = "INSERT"
            with m.State("INSERT"):
                with m.If(n < cap_rows):
                    m.d.comb += [wp.addr.eq(n), wp.data.eq(new), wp.en.eq(1)]
                    m.d.sync += [n.eq(n + 1), cnt.sram_writes.eq(cnt.sram_writes + 1),
                                 cnt.sram_bits.eq(cnt.sram_bits + row_bits)]
                    m.next = "IDLE"
                with m.Else():
                    m.d.comb += [self.o_dram_req.valid.eq(1),
                                 self.o_dram_req.payload.write.eq(1),
                                 self.o_dram_req.payload.addr.eq(n - cap_rows),
                                 self.o_dram_req.payload.data.eq(new)]
                    with m.If(self.o_dram_req.ready):
                        m.d.sync += [n.eq(n + 1), cnt.spills.eq(cnt.spills + 1),
                                     cnt.dram_bytes.eq(cnt.dram_bytes + row_bytes)]
                        m.next = "IDLE"
        return m
