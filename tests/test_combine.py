"""``moepim.hw.combine.CombineUnit`` on its own (Amaranth's simulator): the masked adder tree
plus the accumulator row, and the output requantisation, against the golden integer model
(``moepim.models.quant.Requant`` and the symmetric clamp) on seeded random rows, and one
case worked by hand."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from moepim.hw.combine import CombineUnit
from moepim.models.quant import Requant
from moepim.spec.checks import ParameterError

G, LANES, RESULT_BITS, ACC_BITS, ACT_BITS, MULT_BITS = 3, 4, 12, 16, 8, 10


def _run(cases):
    """Per case ``(results, mask, acc, mult, shift)``: the unit's ``acc_next`` and ``out``."""
    cu = CombineUnit(n_groups=G, lanes=LANES, result_bits=RESULT_BITS, acc_bits=ACC_BITS,
                     act_bits=ACT_BITS, multiplier_bits=MULT_BITS)
    got = []

    async def tb(ctx):
        for results, mask, acc, mult, shift in cases:
            for g in range(G):
                for i in range(LANES):
                    ctx.set(cu.results[g][i], int(results[g][i]))
            ctx.set(cu.mask, int(mask))
            for i in range(LANES):
                ctx.set(cu.acc[i], int(acc[i]))
            ctx.set(cu.mult, mult)
            ctx.set(cu.shift, shift)
            got.append(([ctx.get(cu.acc_next[i]) for i in range(LANES)],
                        [ctx.get(cu.out[i]) for i in range(LANES)]))

    sim = Simulator(cu)
    sim.add_testbench(tb)
    sim.run()
    return got


def _golden(results, mask, acc, mult, shift):
    on = np.array([(mask >> g) & 1 for g in range(G)], dtype=bool)
    acc_next = np.asarray(acc) + np.asarray(results)[on].sum(axis=0)
    lim = (1 << (ACT_BITS - 1)) - 1
    out = np.clip(Requant(mult, shift).apply(acc), -lim, lim)
    return acc_next.tolist(), out.tolist()


def test_combine_unit_against_the_golden_model():
    rng = np.random.default_rng(7)
    rlim, alim = 1 << (RESULT_BITS - 1), 1 << (ACC_BITS - 3)
    cases = [(rng.integers(-rlim, rlim, size=(G, LANES)), int(rng.integers(0, 1 << G)),
              rng.integers(-alim, alim, size=LANES), int(rng.integers(1, 1 << MULT_BITS)),
              int(rng.integers(0, 12))) for _ in range(40)]
    for case, (acc_next, out) in zip(cases, _run(cases)):
        assert (acc_next, out) == _golden(*case)


def test_combine_unit_by_hand():
    """Groups 0 and 2 working (mask 0b101): lane 0 adds 5 + 7 to 100 -> 112; requantised
    with mult 3, shift 2: (100 * 3 + 2) >> 2 = 75; lane 1's -400 * 3 / 4 = -300 clamps to
    -127; shift 0 multiplies only."""
    results = [[5, 1, 0, 0], [1000, 1000, 0, 0], [7, -2, 0, 0]]
    (acc_next, out), (_, out0) = _run([(results, 0b101, [100, -400, 0, 1], 3, 2),
                                       (results, 0b000, [20, -30, 0, 1], 2, 0)])
    assert acc_next == [112, -401, 0, 1]
    assert out == [75, -127, 0, 1]
    assert out0 == [40, -60, 0, 2]


@pytest.mark.filterwarnings("ignore:.*created but never used")
def test_combine_unit_refuses_bad_parameters():
    with pytest.raises(ParameterError, match="n_groups"):
        CombineUnit(n_groups=0, lanes=4, result_bits=8, acc_bits=8, act_bits=8,
                    multiplier_bits=8)
    with pytest.raises(ParameterError, match="multiplier_bits"):
        CombineUnit(n_groups=2, lanes=4, result_bits=8, acc_bits=8, act_bits=8,
                    multiplier_bits=0)
