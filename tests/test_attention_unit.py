"""``moepim.hw.attention.AttentionUnit`` on its own: one head of one query row over its keys
and values, on Amaranth's simulator, Verilator and Icarus through the same bench
(``moepim.testbenches.attention_benches``).

Checked per query: every output code against the golden attention core
(``moepim.models.decoder.attend_int``: integer scores, the Q0.16 softmax, the weighted sum),
and, with every stream offered each cycle, the cycles from the query's hand-over to the first
output beat against ``moepim.spec.timing.attention_latency``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from moepim.hw.attention import AttentionUnit
from moepim.models.decoder import attend_int, init_decoder_weights, quantize_decoder
from moepim.models.quant import Requant
from moepim.models.workload import hidden_states
from moepim.sim.block_run import run_bench
from moepim.sim.config import REPO_ROOT, load_model
from moepim.spec.checks import ParameterError
from moepim.spec.numerics import RECIP_BITS
from moepim.spec.timing import attention_job_cycles, attention_latency
from moepim.testbenches.bits import unpack_array

from .conftest import need_simulator

ACT_BITS, MULT_BITS = 8, 16
LIM = (1 << (ACT_BITS - 1)) - 1
TIME = pytest.mark.xdist_group("attention_unit")


@dataclasses.dataclass(frozen=True)
class Unit:
    name: str
    head_dim: int
    lanes: int
    n_keys_max: int


WIDE = Unit("b4", head_dim=16, lanes=4, n_keys_max=40)      # 4 beats per vector
NARROW = Unit("b1", head_dim=8, lanes=8, n_keys_max=9)      # one beat per vector


def _model_index() -> Requant:
    """The table-index requantisation a decoder layer's calibration gives (the reduced
    LLaMA-shaped model of the golden tests)."""
    cfg = load_model(REPO_ROOT / "configs" / "models" / "reduced" / "tiny-swiglu-256.yaml")
    w = init_decoder_weights(cfg, seed=3)
    dq = quantize_decoder(w, cfg, hidden_states(cfg, 8, seed=4))
    return dq.attn_index


def _queries(unit: Unit, lengths, seed: int):
    """Random queries with the given key counts; the first is all-extreme codes, one uses
    the calibrated model's index requantisation, the others random ``mult``/``shift``
    (``shift`` 0 among them)."""
    rng = np.random.default_rng(seed)
    hd = unit.head_dim
    model = _model_index()
    out = []
    for n, L in enumerate(lengths):
        if n == 0:
            q = np.full(hd, LIM)
            k = rng.choice([-LIM, LIM], size=(L, hd))
            v = rng.choice([-LIM, LIM], size=(L, hd))
        else:
            q, k, v = (rng.integers(-LIM, LIM + 1, size=s) for s in (hd, (L, hd), (L, hd)))
        if n == 1 and model.mult < (1 << MULT_BITS):
            mult, shift = model.mult, model.shift
        elif n == 2:
            mult, shift = int(rng.integers(0, 4)), 0
        else:
            mult, shift = int(rng.integers(1, 1 << MULT_BITS)), int(rng.integers(10, 30))
        out.append({"q": q.tolist(), "k": k.tolist(), "v": v.tolist(), "mult": mult,
                    "shift": shift})
    return out


def _golden(query) -> list[int]:
    q, k, v = (np.asarray(query[n]) for n in ("q", "k", "v"))
    L = len(k)
    a = attend_int(q[None, None, :], k[:, None, :], v[:, None, :], np.array([L - 1]),
                   Requant(query["mult"], query["shift"]), ACT_BITS)
    return a[0, 0].tolist()


def _run(unit: Unit, sim: str, queries, *, gap_p=0.0, stall_p=0.0, seed=1):
    if sim != "amaranth":
        need_simulator(sim)
    au = AttentionUnit(head_dim=unit.head_dim, lanes=unit.lanes, act_bits=ACT_BITS,
                       n_keys_max=unit.n_keys_max, multiplier_bits=MULT_BITS)
    got = run_bench(au, top=f"attention_unit_{unit.name}", bench="attention_queries", sim=sim,
                    args=dict(queries=queries, lanes=unit.lanes, act_bits=ACT_BITS,
                              gap_p=gap_p, stall_p=stall_p, seed=seed))
    return au, got


def _check(unit: Unit, au, queries, got, *, timed: bool):
    assert len(got) == len(queries)
    for n, (query, res) in enumerate(zip(queries, got)):
        codes = np.concatenate([unpack_array(w, ACT_BITS, unit.lanes, True)
                                for w in res["codes"]]).tolist()
        assert codes == _golden(query), f"query {n} (L = {len(query['k'])}): outputs"
        if timed:
            assert res["valid_at"] - res["handed"] == au.latency(len(query["k"])), \
                f"query {n}: cycles"
            if n + 1 < len(got):        # back to back: the next query's first beat
                assert got[n + 1]["first"] - res["first"] == attention_job_cycles(
                    len(query["k"]), unit.head_dim // unit.lanes), f"query {n}: period"


@TIME
@pytest.mark.parametrize("sim", ["amaranth", "verilator", "icarus"])
def test_attention_unit_outputs_and_cycles(sim):
    queries = _queries(WIDE, [3, 5, 1, 2, 40, 33], seed=11)
    au, got = _run(WIDE, sim, queries)
    _check(WIDE, au, queries, got, timed=True)


@TIME
@pytest.mark.parametrize("sim", ["amaranth", "verilator"])
def test_attention_unit_with_gaps_and_back_pressure(sim):
    """Seeded input gaps on all three input streams and output back-pressure: the same
    outputs (the cycles then depend on the draws)."""
    queries = _queries(WIDE, [4, 1, 17], seed=12)
    au, got = _run(WIDE, sim, queries, gap_p=0.3, stall_p=0.4, seed=5)
    _check(WIDE, au, queries, got, timed=False)


@TIME
@pytest.mark.parametrize("sim", ["amaranth", "verilator"])
def test_attention_unit_one_beat_per_vector(sim):
    """``head_dim == lanes``: a V row is one beat, so the weighted sum reads the next row's
    probability while it takes the current row."""
    queries = _queries(NARROW, [1, 9, 2, 5], seed=13)
    au, got = _run(NARROW, sim, queries)
    _check(NARROW, au, queries, got, timed=True)
    queries = _queries(NARROW, [6, 3], seed=14)
    au, got = _run(NARROW, sim, queries, gap_p=0.5, stall_p=0.3, seed=6)
    _check(NARROW, au, queries, got, timed=False)


def test_attention_latency_by_hand():
    """Two keys of 4 beats: scores 8, exp 2 + 2, reciprocal 18 + 1, probabilities 2 + 1,
    the read of p_0 1, the weighted sum 8, the hand-over 1: 44 cycles."""
    assert RECIP_BITS == 18
    assert attention_latency(2, 4) == 8 + 4 + 19 + 3 + 1 + 8 + 1 == 44


def test_attend_int_by_hand():
    """One key: p = min(2**16, 2**16 - 1) = 65535; a = (65535 v + 2**15) >> 16 = v for every
    code (65535 v / 2**16 rounds back to v). Two equal keys: p = 32768 each, a = (v0 + v1)/2
    rounded half up."""
    index = Requant(1, 0)
    v = np.array([[[-127, -1, 0, 5]]])
    a = attend_int(np.array([[[1, 2, 3, 4]]]), np.array([[[9, 9, 9, 9]]]), v, np.array([0]),
                   index, 8)
    assert a.tolist() == [[[-127, -1, 0, 5]]]
    k2 = np.array([[[1, 0, 0, 0]], [[1, 0, 0, 0]]])
    v2 = np.array([[[3, -3, 10, 1]], [[4, -4, 0, 2]]])
    a = attend_int(np.array([[[1, 0, 0, 0]]]), k2, v2, np.array([1]), index, 8)
    assert a.tolist() == [[[4, -3, 5, 2]]]        # 3.5 -> 4, -3.5 -> -3, 5, 1.5 -> 2


@pytest.mark.filterwarnings("ignore:.*created but never used")
def test_attention_unit_refuses_bad_parameters():
    with pytest.raises(ParameterError, match="lanes"):
        AttentionUnit(head_dim=12, lanes=5, act_bits=8, n_keys_max=4)
    with pytest.raises(ParameterError, match="n_keys_max"):
        AttentionUnit(head_dim=8, lanes=4, act_bits=8, n_keys_max=0)
    with pytest.raises(ParameterError, match="act_bits"):
        AttentionUnit(head_dim=8, lanes=4, act_bits=1, n_keys_max=4)
    with pytest.raises(ParameterError, match="multiplier_bits"):
        AttentionUnit(head_dim=8, lanes=4, act_bits=8, n_keys_max=4, multiplier_bits=0)
