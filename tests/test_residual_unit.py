"""``moepim.hw.residual.ResidualUnit`` on its own: scenarios through one build per simulator
(Amaranth's simulator, Verilator, Icarus) via the ``residual_pairs`` bench
(``moepim.testbenches.decoder_unit_benches``).

Checked per scenario: every output code bit-exact against the golden integer model
(``moepim.models.quant.Requant.apply`` on each operand, unclamped, then the sum clamped, as
``moepim.models.decoder.decoder_forward_int``'s residual adds), ``last`` passed through, and
without back-pressure each beat's latency ``moepim.spec.timing.residual_latency()`` (with no
input gaps either: one beat per cycle and ``residual_cycles``)."""

from __future__ import annotations

import dataclasses
import functools
import gc

import numpy as np
import pytest

from moepim.hw.residual import ResidualUnit
from moepim.models.quant import Requant
from moepim.sim.block_run import run_bench
from moepim.spec.checks import ParameterError
from moepim.spec.timing import residual_cycles, residual_latency

from .conftest import SIMULATORS, need_simulator

LANES, A_BITS, B_BITS, ACT_BITS, MULT_BITS = 4, 8, 20, 8, 15
LIM = (1 << (ACT_BITS - 1)) - 1
GROUP = pytest.mark.xdist_group("decoder_units")


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    a: Requant
    b: Requant
    beats: tuple                # ((a codes, b codes), ...)
    gap_p: float = 0.0
    stall_p: float = 0.0


def _random_beats(rng, n, b_lim=1 << (B_BITS - 1)):
    a = rng.integers(-LIM, LIM + 1, size=(n, LANES))
    b = rng.integers(-b_lim, b_lim, size=(n, LANES))
    return tuple((x.tolist(), y.tolist()) for x, y in zip(a, b))


# the hand case (test_by_hand_numbers): mult 3 shift 2 on a, the res1 form (mult 1 shift 0) on b
BY_HAND = Scenario("by_hand", Requant(3, 2), Requant(1, 0),
                   (([10, -10, 127, -127], [5, 5, 100, -100]),
                    ([1, 2, -1, -2], [0, 0, 0, 0])))


def _scenarios() -> list[Scenario]:
    rng = np.random.default_rng(11)
    bmax = (1 << (B_BITS - 1)) - 1
    extremes = tuple(([s * LIM] * LANES, [t * bmax if t > 0 else -(1 << (B_BITS - 1))] * LANES)
                     for s in (1, -1) for t in (1, -1)) + (([LIM, -LIM, LIM, -LIM],
                                                             [0, 0, -1, 1]),)
    out = [BY_HAND,
           # res1 of the golden layer: x requantised, o already at the sum's scale
           Scenario("res1", Requant.from_ratio(0.83, MULT_BITS), Requant(1, 0),
                    _random_beats(rng, 12, b_lim=300)),
           Scenario("extremes", Requant((1 << MULT_BITS) - 1, 14), Requant(1, 12), extremes),
           Scenario("extremes_shift_0", Requant(1, 0), Requant(2, 0), extremes),
           Scenario("shift_31", Requant((1 << MULT_BITS) - 1, 31), Requant(12345, 21),
                    _random_beats(rng, 6))]
    for k in range(4):          # random mult / shift, shift 0 among them
        shift = 0 if k == 0 else int(rng.integers(0, 20))
        ra = Requant(int(rng.integers(1, 1 << MULT_BITS)), shift)
        rb = Requant(int(rng.integers(1, 1 << MULT_BITS)), int(rng.integers(10, 32)))
        out.append(Scenario(f"random_{k}", ra, rb, _random_beats(rng, 10)))
    out += [Scenario("gaps", Requant(7, 3), Requant(5, 16), _random_beats(rng, 16), gap_p=0.4),
            Scenario("gaps_back_pressure", Requant(300, 9), Requant(77, 18),
                     _random_beats(rng, 40), gap_p=0.3, stall_p=0.5)]
    return out


SCENARIOS = _scenarios()


def golden(sc: Scenario) -> list[list[int]]:
    a = np.array([x for x, _ in sc.beats])
    b = np.array([y for _, y in sc.beats])
    return np.clip(sc.a.apply(a) + sc.b.apply(b), -LIM, LIM).tolist()


def _unit() -> ResidualUnit:
    return ResidualUnit(lanes=LANES, a_bits=A_BITS, b_bits=B_BITS, act_bits=ACT_BITS,
                        multiplier_bits=MULT_BITS)


@functools.cache
def _run(sim: str):
    """Every scenario through one build of the unit."""
    runs = [{"held": {"a_mult": sc.a.mult, "a_shift": sc.a.shift, "b_mult": sc.b.mult,
                      "b_shift": sc.b.shift},
             "beats": [list(beat) for beat in sc.beats], "gap_p": sc.gap_p,
             "stall_p": sc.stall_p} for sc in SCENARIOS]
    res = run_bench(_unit(), top="residual_unit", bench="residual_pairs", sim=sim,
                    args=dict(runs=runs, lanes=LANES, a_bits=A_BITS, b_bits=B_BITS,
                              act_bits=ACT_BITS, seed=5))
    return dict(zip((sc.name for sc in SCENARIOS), res))


@GROUP
@pytest.mark.parametrize("sim", SIMULATORS)
@pytest.mark.parametrize("sc", SCENARIOS, ids=lambda s: s.name)
def test_residual_unit_against_the_golden_model(sc, sim):
    if sim != "amaranth":
        need_simulator(sim)
    got = _run(sim)[sc.name]
    n = len(sc.beats)
    assert got["codes"] == golden(sc)
    assert got["last"] == [int(k == n - 1) for k in range(n)]
    assert len(got["taken"]) == len(got["given"]) == n
    if sc.stall_p == 0:
        lat = [o - i for i, o in zip(got["taken"], got["given"])]
        assert lat == [residual_latency()] * n, "latency of each beat"
    if sc.stall_p == 0 and sc.gap_p == 0:
        t0 = got["taken"][0]
        assert got["taken"] == list(range(t0, t0 + n)), "one beat per cycle"
        assert got["given"][-1] + 1 - t0 == residual_cycles(n)


def test_by_hand_numbers():
    """Beat 0, a requantised with mult 3 shift 2, b as is (the res1 form):
    lane 0: ``(10*3 + 2) >> 2 = 8``, ``8 + 5 = 13``; lane 1: ``(-30 + 2) >> 2 = -7``,
    ``-7 + 5 = -2``; lane 2: ``(381 + 2) >> 2 = 95``, ``95 + 100 = 195`` clamps to 127 (the
    requantised operand alone is not clamped: ``(127*3 + 2) >> 2 = 95`` is in range anyway);
    lane 3: ``(-381 + 2) >> 2 = -95``, ``-195`` clamps to -127. Beat 1: ``(3+2)>>2 = 1``,
    ``(6+2)>>2 = 2``, ``(-3+2)>>2 = -1``, ``(-6+2)>>2 = -1`` (round half up)."""
    want = [[13, -2, 127, -127], [1, 2, -1, -1]]
    assert golden(BY_HAND) == want
    assert _run("amaranth")["by_hand"]["codes"] == want


def test_operands_are_not_clamped_before_the_sum():
    """a = 127 with mult 4 (508) plus b = -400: 108, though 508 alone is out of range."""
    sc = Scenario("unclamped", Requant(4, 0), Requant(1, 0),
                  (([127, -127, 0, 0], [-400, 400, 0, 0]),))
    assert golden(sc) == [[108, -108, 0, 0]]
    runs = [{"held": {"a_mult": 4, "a_shift": 0, "b_mult": 1, "b_shift": 0},
             "beats": [list(b) for b in sc.beats], "gap_p": 0.0, "stall_p": 0.0}]
    got = run_bench(_unit(), top="residual_unit", bench="residual_pairs", sim="amaranth",
                    args=dict(runs=runs, lanes=LANES, a_bits=A_BITS, b_bits=B_BITS,
                              act_bits=ACT_BITS, seed=1))
    assert got[0]["codes"] == [[108, -108, 0, 0]]


def test_residual_timing_by_hand():
    """Two register stages: a beat taken in cycle 0 is offered in cycle 2; 5 beats back to
    back, the last taken in cycle 4, leave by cycle 6: 7 cycles to the cycle after."""
    assert residual_latency() == 2 and residual_cycles(5) == 7


@pytest.mark.filterwarnings("ignore:.*created but never used")
def test_residual_unit_refuses_bad_parameters():
    good = dict(lanes=4, a_bits=8, b_bits=16, act_bits=8)
    for name, bad in (("lanes", 0), ("a_bits", -1), ("b_bits", 0), ("act_bits", 1),
                      ("multiplier_bits", 0)):
        with pytest.raises(ParameterError, match=name) as err:
            ResidualUnit(**{**good, name: bad})
        assert err.value.name == name
    del err
    gc.collect()            # the refused objects' unused-elaboratable warnings, filtered here
    unit = _unit()
    unit._MustUse__silence = True
    assert (unit.lanes, unit.a_bits, unit.b_bits, unit.act_bits, unit.multiplier_bits) == (
        LANES, A_BITS, B_BITS, ACT_BITS, MULT_BITS)
