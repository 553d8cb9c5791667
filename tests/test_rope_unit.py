"""``moepim.hw.rope.RopeUnit`` on its own: scenarios through one build per simulator
(Amaranth's simulator, Verilator, Icarus) via the ``rope_vectors`` bench
(``moepim.testbenches.decoder_unit_benches``).

Checked per scenario: every rotated code bit-exact against the golden integer model
(``moepim.models.decoder._rope_int`` with the tables of ``rope_tables``), the positions and
``last`` of the output beats, and without back-pressure each beat's latency
``moepim.spec.timing.rope_latency()`` (with no input gaps either: one beat per cycle and
``rope_cycles``)."""

from __future__ import annotations

import dataclasses
import functools
import gc

import numpy as np
import pytest

from moepim.hw.rope import COEF_BITS, RopeUnit, table_rows
from moepim.models.decoder import ROPE_FRAC_BITS, _rope_int, rope_tables
from moepim.sim.block_run import run_bench
from moepim.sim.config import REPO_ROOT, load_model
from moepim.spec import numerics
from moepim.spec.checks import ParameterError
from moepim.spec.timing import rope_beats, rope_cycles, rope_latency

from .conftest import SIMULATORS, need_simulator

HEAD_DIM, LANES, ACT_BITS, N_POSITIONS = 16, 2, 8, 12      # 4 beats per vector
HALF, BEATS = HEAD_DIM // 2, HEAD_DIM // (2 * LANES)
LIM = (1 << (ACT_BITS - 1)) - 1
CFG = dataclasses.replace(load_model(REPO_ROOT / "configs/models/reduced/tiny-swiglu-256.yaml"),
                          head_dim=HEAD_DIM)
COS, SIN = rope_tables(CFG, N_POSITIONS)
GROUP = pytest.mark.xdist_group("decoder_units")


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    vectors: tuple              # ((position, codes), ...)
    gap_p: float = 0.0
    stall_p: float = 0.0


# the hand case (test_by_hand_numbers): pair 0 at position 0 (the identity) and position 1
BY_HAND = Scenario("by_hand", ((0, [100] + [0] * (HALF - 1) + [50] + [0] * (HALF - 1)),
                               (1, [100] + [0] * (HALF - 1) + [50] + [0] * (HALF - 1))))


def _random(rng, n, positions=None):
    pos = rng.integers(0, N_POSITIONS, size=n) if positions is None else positions
    codes = rng.integers(-LIM, LIM + 1, size=(n, HEAD_DIM))
    return tuple((int(p), c.tolist()) for p, c in zip(pos, codes))


def _scenarios() -> list[Scenario]:
    rng = np.random.default_rng(3)
    signs = [[1] * HEAD_DIM, [-1] * HEAD_DIM, [1] * HALF + [-1] * HALF, [-1] * HALF + [1] * HALF,
             [1, -1] * HALF]
    extremes = tuple((p, [s * LIM for s in row]) for p in range(N_POSITIONS) for row in signs)
    return [BY_HAND,
            Scenario("extremes", extremes),
            Scenario("every_position", _random(rng, N_POSITIONS, np.arange(N_POSITIONS))),
            Scenario("random", _random(rng, 10)),
            Scenario("gaps", _random(rng, 6), gap_p=0.4),
            Scenario("gaps_back_pressure", _random(rng, 10), gap_p=0.3, stall_p=0.5)]


SCENARIOS = _scenarios()


def golden(sc: Scenario) -> list[list[int]]:
    pos = np.array([p for p, _ in sc.vectors])
    t = np.array([c for _, c in sc.vectors])[:, None, :]          # (T, 1 head, head_dim)
    return _rope_int(t, pos, CFG)[:, 0, :].tolist()


def _unit(*, used: bool = True) -> RopeUnit:
    unit = RopeUnit(head_dim=HEAD_DIM, lanes=LANES, act_bits=ACT_BITS, n_positions=N_POSITIONS)
    if not used:
        unit._MustUse__silence = True       # only its properties are read
    return unit


@functools.cache
def _run(sim: str):
    """The tables, then every scenario, through one build of the unit."""
    runs = [{"vectors": [list(v) for v in sc.vectors], "gap_p": sc.gap_p,
             "stall_p": sc.stall_p} for sc in SCENARIOS]
    res = run_bench(_unit(), top="rope_unit", bench="rope_vectors", sim=sim,
                    args=dict(tables=table_rows(COS, SIN, lanes=LANES), coef_bits=COEF_BITS,
                              runs=runs, head_dim=HEAD_DIM, lanes=LANES, act_bits=ACT_BITS,
                              seed=9))
    return dict(zip((sc.name for sc in SCENARIOS), res))


@GROUP
@pytest.mark.parametrize("sim", SIMULATORS)
@pytest.mark.parametrize("sc", SCENARIOS, ids=lambda s: s.name)
def test_rope_unit_against_the_golden_model(sc, sim):
    if sim != "amaranth":
        need_simulator(sim)
    got = _run(sim)[sc.name]
    n = len(sc.vectors) * BEATS
    assert [codes for _, codes in got["vectors"]] == golden(sc)
    assert [positions for positions, _ in got["vectors"]] == [[p] * BEATS for p, _ in sc.vectors]
    assert got["last"] == [int(k % BEATS == BEATS - 1) for k in range(n)]
    assert len(got["taken"]) == len(got["given"]) == n
    if sc.stall_p == 0:
        lat = [o - i for i, o in zip(got["taken"], got["given"])]
        assert lat == [rope_latency()] * n, "latency of each beat"
    if sc.stall_p == 0 and sc.gap_p == 0:
        t0 = got["taken"][0]
        assert got["taken"] == list(range(t0, t0 + n)), "one beat per cycle"
        assert got["given"][-1] + 1 - t0 == rope_cycles(len(sc.vectors), HEAD_DIM, LANES)


def test_extremes_clamp():
    """The extreme vectors do clamp (a rotated pair of +-127 codes reaches +-179)."""
    want = np.array(golden(SCENARIOS[1]))
    assert np.abs(want).max() == LIM
    t = np.array([c for _, c in SCENARIOS[1].vectors])
    cos, sin = COS[[p for p, _ in SCENARIOS[1].vectors]], SIN[[p for p, _ in SCENARIOS[1].vectors]]
    raw = (t[:, :HALF] * cos - t[:, HALF:] * sin + (1 << 13)) >> 14
    assert np.abs(raw).max() > LIM


def test_by_hand_numbers():
    """Pair 0 (frequency 1) at position 1: ``cos 1 = 0.5403 -> round(0.5403 * 2**14) =
    8852``, ``sin 1 = 0.8415 -> 13787``. With ``a = 100, b = 50``:
    ``a' = (100*8852 - 50*13787 + 8192) >> 14 = 204042 >> 14 = 12`` (float 11.96) and
    ``b' = (100*13787 + 50*8852 + 8192) >> 14 = 1829492 >> 14 = 111`` (float 111.16). At
    position 0 (``cos = 2**14``, ``sin = 0``) the vector is unchanged."""
    assert ROPE_FRAC_BITS == numerics.ROPE_FRAC_BITS == 14
    assert (COS[1, 0], SIN[1, 0]) == (8852, 13787)
    rest = [0] * (HALF - 1)
    want = [[100] + rest + [50] + rest, [12] + rest + [111] + rest]
    assert golden(BY_HAND) == want
    assert [codes for _, codes in _run("amaranth")["by_hand"]["vectors"]] == want


def test_rope_timing_by_hand():
    """16 codes in beats of 2 pairs: 4 beats a vector; 3 register stages: 2 vectors back to
    back, the last beat taken in cycle 7, leave by cycle 10: 11 cycles to the cycle after."""
    assert rope_beats(16, 2) == 4 and rope_latency() == 3
    assert rope_cycles(2, 16, 2) == 11


def test_table_rows_layout():
    """Row ``p * beats + k`` holds position ``p``'s pairs ``k lanes ..``, cos and sin
    interleaved."""
    rows = table_rows(COS, SIN, lanes=LANES)
    assert len(rows) == N_POSITIONS * BEATS == _unit(used=False).table_depth
    addr, values = rows[1 * BEATS + 2]
    assert addr == BEATS + 2
    assert values == [COS[1, 4], SIN[1, 4], COS[1, 5], SIN[1, 5]]


@pytest.mark.filterwarnings("ignore:.*created but never used")
def test_rope_unit_refuses_bad_parameters():
    good = dict(head_dim=16, lanes=2, act_bits=8, n_positions=12)
    for name, bad in (("head_dim", 15), ("head_dim", 0), ("lanes", 3), ("lanes", 0),
                      ("act_bits", 1), ("n_positions", 0), ("n_positions", 2.5)):
        with pytest.raises(ParameterError, match=name) as err:
            RopeUnit(**{**good, name: bad})
        assert err.value.name == name
    with pytest.raises(TypeError):
        RopeUnit(16, 2, 8, 12)                  # keyword-only
    del err
    gc.collect()            # the refused objects' unused-elaboratable warnings, filtered here
    unit = _unit(used=False)
    assert (unit.head_dim, unit.lanes, unit.act_bits, unit.n_positions, unit.beats) == (
        HEAD_DIM, LANES, ACT_BITS, N_POSITIONS, BEATS)
    assert unit.latency() == rope_latency()
