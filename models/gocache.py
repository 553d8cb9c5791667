"""Functional model of the gate-output (GO) cache, the golden reference of ``hw.GateOutputCache``.

What the expert-choice decode rule needs from earlier tokens is their gate scores (one row of
``n_experts`` Q0.16 scores per token, ``moepim.models.quant``): for a new token, expert ``e``
takes it iff fewer than ``C(L)`` earlier tokens score ``>=`` it on ``e``
(:func:`moepim.models.routing.expert_choice_decode`). The cache keeps those rows.

Storage: rows of tokens ``0 .. go_cache_rows-1`` live in the on-chip SRAM; later rows spill to DRAM
(appended, row ``n`` at DRAM row ``n - go_cache_rows``). A decision scans every stored row once:
SRAM rows are hits, DRAM rows are read back. Then the new row is inserted.

Event counts (what the hardware counters must report): ``sram_reads`` / ``sram_writes``
(rows), ``sram_bits``, ``hits`` (rows served by the SRAM during scans), ``spills`` (rows
written to DRAM), ``dram_reads`` (rows read back), ``dram_bytes`` (both directions).
"""

from __future__ import annotations

import math

import numpy as np

from .routing import expert_choice_capacity

__all__ = ["GoCacheModel"]


class GoCacheModel:
    def __init__(self, *, n_experts: int, score_bits: int, go_cache_rows: int):
        if go_cache_rows < 1:
            raise ValueError(f"go_cache_rows={go_cache_rows} is not allowed: a positive integer")
        if n_experts < 1:
            raise ValueError(f"n_experts={n_experts} is not allowed: a positive integer")
        self.n_experts, self.score_bits, self.go_cache_rows = n_experts, score_bits, go_cache_rows
        self.rows: list[np.ndarray] = []
        self.counters = dict.fromkeys(("sram_reads", "sram_writes", "sram_bits", "hits",
                                       "spills", "dram_reads", "dram_bytes"), 0)

    @property
    def row_bits(self) -> int:
        return self.n_experts * self.score_bits

    @property
    def row_bytes(self) -> int:
        return math.ceil(self.row_bits / 8)

    def insert(self, scores) -> None:
        row = np.asarray(scores, dtype=np.int64).reshape(self.n_experts)
        if row.min() < 0 or row.max() >= 1 << self.score_bits:
            raise ValueError(f"scores must be unsigned {self.score_bits}-bit integers")
        c = self.counters
        if len(self.rows) < self.go_cache_rows:
            c["sram_writes"] += 1
            c["sram_bits"] += self.row_bits
        else:
            c["spills"] += 1
            c["dram_bytes"] += self.row_bytes
        self.rows.append(row)

    def decide(self, scores, cap: int) -> np.ndarray:
        """Experts that take the new token (``cap`` = C(L) for the window including it)."""
        new = np.asarray(scores, dtype=np.int64).reshape(self.n_experts)
        c = self.counters
        n_sram = min(len(self.rows), self.go_cache_rows)
        n_dram = len(self.rows) - n_sram
        c["sram_reads"] += n_sram
        c["hits"] += n_sram
        c["sram_bits"] += n_sram * self.row_bits
        c["dram_reads"] += n_dram
        c["dram_bytes"] += n_dram * self.row_bytes
        if self.rows:
            at_least = (np.stack(self.rows) >= new[None, :]).sum(axis=0)
        else:
            at_least = np.zeros(self.n_experts, dtype=np.int64)
        return at_least < cap

    def decide_and_insert(self, scores, factor: float) -> np.ndarray:
        cap = expert_choice_capacity(len(self.rows) + 1, self.n_experts, factor)
        mask = self.decide(scores, cap)
        self.insert(scores)
        return mask
