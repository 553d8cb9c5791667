"""``CombineUnit``: the MoE layer's combine and read-out arithmetic.

Per lane, the adder tree over the groups' engine results (``results``; a group whose bit of
``mask`` is clear adds 0) plus the token's accumulator row (``acc``) gives ``acc_next``, which
the layer writes back; and the accumulator row requantised to the activation width,
``clamp(requant(acc, mult, shift))`` (``moepim.hw.expert_engine.requantize``), gives ``out``,
the layer's output beat. Combinational: the layer's FSM decides when each is used (its
COMBINE and OUTPUT states).
"""

from __future__ import annotations

from amaranth import Module, Mux, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from moepim.spec.checks import need_positive

from .expert_engine import SHIFT_BITS, requantize
from .params import check_multiplier_bits, tree_sum

__all__ = ["CombineUnit"]


class CombineUnit(wiring.Component):
    def __init__(self, *, n_groups: int, lanes: int, result_bits: int, acc_bits: int,
                 act_bits: int, multiplier_bits: int):
        for name, value in (("n_groups", n_groups), ("lanes", lanes),
                            ("result_bits", result_bits), ("acc_bits", acc_bits),
                            ("act_bits", act_bits)):
            need_positive(name, value)
        check_multiplier_bits(multiplier_bits)
        self._n_groups, self._lanes, self._act_bits = n_groups, lanes, act_bits
        row = data.ArrayLayout(signed(acc_bits), lanes)
        super().__init__({
            "results": In(data.ArrayLayout(data.ArrayLayout(signed(result_bits), lanes),
                                           n_groups)),
            "mask": In(n_groups),
            "acc": In(row),
            "acc_next": Out(row),
            "mult": In(unsigned(multiplier_bits)),
            "shift": In(unsigned(SHIFT_BITS)),
            "out": Out(data.ArrayLayout(signed(act_bits), lanes)),
        })

    def elaborate(self, platform):
        m = Module()
        for i in range(self._lanes):
            terms = [Mux(self.mask[g], self.results[g][i], 0) for g in range(self._n_groups)]
            m.d.comb += [self.acc_next[i].eq(self.acc[i] + tree_sum(terms)),
                         self.out[i].eq(requantize(self.acc[i], self.mult, self.shift,
                                                   self._act_bits))]
        return m
