"""The greedy argmax unit (``moepim.hw.argmax.ArgmaxUnit``) on its own: vectors through the
``argmax_vectors`` bench on Amaranth's simulator, Verilator and Icarus.

One design on every simulator (4 lanes of 8-bit values, ``max_items`` 22: the sixth beat's
last two lanes are padding and must not count), a second (3 lanes, 5-bit values, ``max_items``
7) on Amaranth's simulator alone. Checked per run, several batches: every result's index and
value against ``numpy.argmax`` (the first maximum) over the elements that count (ties within a
beat and across beats, all-equal and all-negative vectors, the most negative value, maxima in
the padding lanes, single-beat vectors back to back, short vectors, vectors longer than
``max_items``); without gaps and back-pressure the cycles against
``moepim.spec.timing.argmax_latency`` (last-beat handshake to result valid) and one beat per
cycle with no bubble between vectors; one batch with input gaps and back-pressure checks the
results alone."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from moepim.hw.argmax import ArgmaxUnit
from moepim.sim.block_run import run_bench
from moepim.spec.checks import ParameterError
from moepim.spec.timing import argmax_latency

from .conftest import SIMULATORS, need_simulator

TIME = pytest.mark.xdist_group("argmax_unit")

DESIGNS = {
    "lanes4": dict(lanes=4, value_bits=8, max_items=22),
    "lanes3": dict(lanes=3, value_bits=5, max_items=7),
}
RUNS = [("lanes4", sim) for sim in SIMULATORS] + [("lanes3", "amaranth")]


def _beats(flat, lanes):
    """A vector's elements as beats of ``lanes`` (a short final beat padded with junk)."""
    flat = list(flat)
    flat += [flat[-1]] * (-len(flat) % lanes)
    return [flat[i:i + lanes] for i in range(0, len(flat), lanes)]


def _golden(vector, max_items):
    """``numpy.argmax`` (first maximum) over the elements that count."""
    v = np.asarray(vector).reshape(-1)[:max_items]
    i = int(np.argmax(v))
    return [i, int(v[i])]


def _scenarios(design, seed):
    """``(name, batch)``: per batch the vectors as beats."""
    rng = np.random.default_rng(seed)
    lanes, vb, n = design["lanes"], design["value_bits"], design["max_items"]
    lo, hi = -(1 << (vb - 1)), (1 << (vb - 1)) - 1
    beats_full = -(-n // lanes)
    full = beats_full * lanes                         # elements of a full-length vector

    def rand(k, a=lo, b=hi):
        return rng.integers(a, b + 1, k)

    ties = rand(full, lo, 2)
    ties[[3, 5, min(n - 1, 9)]] = hi                  # equal maxima: the lowest index wins
    cross = rand(full, lo, 0)
    cross[lanes - 1] = cross[lanes] = hi - 1          # a tie across a beat boundary
    negative = rand(full, lo, -1)
    negative[n:] = hi                                 # maxima in the padding: ignored
    padded_max = rand(full, lo, hi - 1)
    padded_max[n:] = hi
    low = np.full(full, lo)                           # every value the most negative
    last_max = rand(full, lo, hi - 1)
    last_max[n - 1] = hi                              # the last element that counts
    long = rand(full + 2 * lanes, lo, hi - 1)         # longer than max_items
    long[n:] = hi
    vectors = [ties, cross, negative, padded_max, low, last_max, long,
               np.zeros(full, dtype=np.int64)]
    singles = [rand(lanes) for _ in range(5)]         # single-beat vectors, back to back
    singles[1][:] = rand(1)[0]                        # all equal: index 0
    singles[2][:] = lo
    shorts = [rand(k * lanes) for k in (1, 2, 1, 3, 2)]
    randoms = [rand(full) for _ in range(6)] + [rand(lanes * k) for k in (1, 2)]

    def batch(vs, gap_p=0.0, stall_p=0.0):
        return {"vectors": [_beats(np.asarray(v).tolist(), lanes) for v in vs],
                "gap_p": gap_p, "stall_p": stall_p}

    return [("edge_cases", batch(vectors)), ("singles", batch(singles)),
            ("shorts", batch(shorts)),
            ("gaps_back_pressure", batch(randoms + vectors[:3] + singles, 0.3, 0.4))]


@TIME
@pytest.mark.parametrize(("name", "sim"), RUNS, ids=[f"{n}-{s}" for n, s in RUNS])
def test_argmax_unit_against_numpy(name, sim):
    if sim != "amaranth":
        need_simulator(sim)
    design = DESIGNS[name]
    seed = 5
    scenarios = _scenarios(design, seed)
    unit = ArgmaxUnit(**design)
    got = run_bench(unit, top=f"argmax_unit_{name}", bench="argmax_vectors", sim=sim,
                    args=dict(batches=[b for _, b in scenarios],
                              value_bits=design["value_bits"], seed=seed))
    assert unit.latency == argmax_latency() == 1
    for (scenario, batch), res in zip(scenarios, got):
        want = [_golden(v, design["max_items"]) for v in batch["vectors"]]
        assert res["results"] == want, scenario
        if batch["gap_p"] or batch["stall_p"]:
            continue            # the cycle formulas hold without gaps and back-pressure
        assert [v - t for t, v in zip(res["t_last"], res["t_valid"])] == \
            [argmax_latency()] * len(want), scenario
        # one beat per cycle, no bubble between vectors; the last result then taken at once
        n_beats = sum(len(v) for v in batch["vectors"])
        assert res["t_last"][-1] - res["first_in"] == n_beats - 1, scenario
        assert res["end"] - res["first_in"] == n_beats + argmax_latency(), scenario
    # the scenarios are not degenerate: ties resolved to the lowest index, padding ignored
    edge = [_golden(v, design["max_items"]) for v in scenarios[0][1]["vectors"]]
    assert edge[0][0] == 3 and edge[4] == [0, -(1 << (design["value_bits"] - 1))]


BAD = [
    (dict(lanes=0), "lanes"),
    (dict(value_bits=1), "value_bits"),
    (dict(value_bits=65), "value_bits"),
    (dict(value_bits=8.0), "value_bits"),
    (dict(max_items=0), "max_items"),
    (dict(max_items=True), "max_items"),
]


@pytest.mark.filterwarnings("ignore:.*created but never used")
@pytest.mark.parametrize("kwargs, name", BAD, ids=[f"{n}-{i}" for i, (_, n) in enumerate(BAD)])
def test_argmax_unit_parameter_errors_name_the_argument(kwargs, name):
    with pytest.raises(ParameterError, match=f"^{name}=") as e:
        ArgmaxUnit(**{**DESIGNS["lanes4"], **kwargs})
    got = e.value.name
    del e
    gc.collect()
    assert got == name
