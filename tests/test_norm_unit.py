"""The decoder's norm unit (``moepim.hw.norm.NormUnit``) on its own: RMSNorm and LayerNorm
rows through the ``norm_rows`` bench on Amaranth's simulator, Verilator and Icarus.

Checked per run (one build per design and simulator, several batches of rows each): every
output code bit-exact against the golden model ``moepim.models.decoder.int_norm`` (random
rows, extreme codes, all-zero rows, ``eps`` 0 and > 0, random gains, biases and
requantisations, saturating ``shift`` 0), the ``last`` flags, and without gaps and
back-pressure the cycles against ``moepim.spec.timing.norm_latency`` (first input handshake to
first output ``valid``) and the row interval ``latency + d_model / lanes``; one batch with
input gaps and output back-pressure checks the codes alone."""

from __future__ import annotations

import gc
import math

import numpy as np
import pytest

from moepim.hw.norm import NORM_SHIFT_BITS, NormUnit, const_divider
from moepim.models.decoder import NORM_FRAC_BITS, NORM_RECIP_BITS, NormQuant, int_norm
from moepim.models.quant import Requant
from moepim.sim.block_run import run_bench
from moepim.spec.checks import ParameterError
from moepim.spec.timing import norm_latency

from .conftest import need_simulator

TIME = pytest.mark.xdist_group("norm_unit")

# one design per norm kind on every simulator (two Verilator and two Icarus builds); a third
# (odd lanes, 6-bit codes) on Amaranth's simulator alone
DESIGNS = {
    "rms": dict(d_model=32, lanes=4, act_bits=8, center=False, multiplier_bits=15),
    "layer": dict(d_model=48, lanes=8, act_bits=8, center=True, multiplier_bits=15),
    "layer_small": dict(d_model=40, lanes=5, act_bits=6, center=True, multiplier_bits=12),
}
RUNS = [(name, sim) for name in ("rms", "layer") for sim in ("amaranth", "verilator", "icarus")]
RUNS.append(("layer_small", "amaranth"))


def _requant(rng, design) -> Requant:
    """A requantisation as the model would choose: outputs of a few codes per unit ``c/rms``
    at full gain (``inv ~ 2**(NORM_RECIP_BITS - NORM_FRAC_BITS) / rms``)."""
    lim = (1 << (design["act_bits"] - 1)) - 1
    ratio = float(rng.uniform(0.3, 1.5)) / (2.5 * lim * 2.0 ** (NORM_RECIP_BITS - NORM_FRAC_BITS))
    rq = Requant.from_ratio(ratio, design["multiplier_bits"])
    assert rq.shift < 1 << NORM_SHIFT_BITS
    return rq


def _batch(rng, design, rows, *, eps=0, requant=None, gap_p=0.0, stall_p=0.0):
    """A bench batch and its golden outputs."""
    d, lanes, ab, center = (design[k] for k in ("d_model", "lanes", "act_bits", "center"))
    lim = (1 << (ab - 1)) - 1
    gamma = rng.integers(-lim, lim + 1, size=d)
    beta = rng.integers(-lim, lim + 1, size=d) if center else None
    rq = requant or _requant(rng, design)
    nq = NormQuant(gamma=gamma, beta=beta, eps=eps, requant=rq, center=center)
    rows = np.asarray(rows, dtype=np.int64)
    expected = int_norm(rows, nq, ab).tolist()
    params = [[gamma[a * lanes:(a + 1) * lanes].tolist()]
              + ([beta[a * lanes:(a + 1) * lanes].tolist()] if center else [])
              for a in range(d // lanes)]
    batch = {"params": params, "eps": eps, "mult": rq.mult, "shift": rq.shift,
             "rows": rows.tolist(), "gap_p": gap_p, "stall_p": stall_p}
    return batch, expected


def _scenarios(design, seed):
    """``(name, batch, expected)``: random rows, extremes, eps, saturation, back-pressure."""
    rng = np.random.default_rng(seed)
    d, ab = design["d_model"], design["act_bits"]
    lim = (1 << (ab - 1)) - 1
    rand = lambda n, hi=lim: rng.integers(-hi, hi + 1, size=(n, d))      # noqa: E731
    alt = np.where(np.arange(d) % 2, lim, -lim)
    one = np.zeros(d, dtype=np.int64)
    one[3] = 1
    spike = np.full(d, -lim)
    spike[d // 2] = lim
    extremes = [np.full(d, lim), np.full(d, -lim), alt, np.zeros(d, dtype=np.int64), one,
                spike, rng.choice([-lim, lim], size=d), np.full(d, 5),
                np.where(np.arange(d) % 3, lim, -lim - 1)]     # the port's -2**(act_bits-1) too
    out = [
        ("random", *_batch(rng, design, rand(5))),
        ("extremes", *_batch(rng, design, extremes)),
        ("eps", *_batch(rng, design, np.vstack([rand(3, 6), np.zeros((1, d))]), eps=37)),
        ("eps_max", *_batch(rng, design, rand(2), eps=(1 << (2 * ab)) - 1)),
        ("shift_0", *_batch(rng, design, rand(2, 3), requant=Requant(3, 0))),
        ("gaps_back_pressure", *_batch(rng, design, rand(4), eps=3, gap_p=0.3, stall_p=0.4)),
    ]
    return out


def _run(name, sim, *, seed=11, scenarios=None):
    design = DESIGNS[name]
    scenarios = scenarios or _scenarios(design, seed)
    unit = NormUnit(**design)
    got = run_bench(unit, top=f"norm_unit_{name}", bench="norm_rows", sim=sim,
                    args=dict(batches=[b for _, b, _ in scenarios], lanes=design["lanes"],
                              act_bits=design["act_bits"], seed=seed))
    return unit, scenarios, got


@TIME
@pytest.mark.parametrize(("name", "sim"), RUNS, ids=[f"{n}-{s}" for n, s in RUNS])
def test_norm_unit_against_the_golden_model(name, sim):
    if sim != "amaranth":
        need_simulator(sim)
    unit, scenarios, got = _run(name, sim)
    n_beats = unit.beats
    latency = norm_latency(unit.d_model, unit.lanes, unit.act_bits, unit.center)
    assert unit.latency == latency
    for (scenario, batch, expected), res in zip(scenarios, got):
        for r, (want, have) in enumerate(zip(expected, res["outputs"])):
            assert have == want, f"{scenario}: row {r}"
        assert res["lasts"] == [[0] * (n_beats - 1) + [1]] * len(expected), scenario
        if batch["gap_p"] or batch["stall_p"]:
            continue            # the cycle formulas hold without gaps and back-pressure
        firsts = res["first_in"]
        for r, (t_in, t_out) in enumerate(zip(firsts, res["first_out"])):
            assert t_out - t_in == latency, f"{scenario}: row {r} latency"
        assert np.diff(firsts).tolist() == [latency + n_beats] * (len(firsts) - 1), scenario


def test_norm_unit_by_hand():
    """Two rows worked by hand (gain 1, ``mult`` 1, ``shift`` 20, ``eps`` 0, 2 beats each).

    RMSNorm, ``d_model = 4``, 2 lanes, row ``[3, -4, 0, 0]``: ``ms = 25 // 4 = 6``,
    ``r = isqrt(6 << 16) = 627``, ``inv = 2**30 // 627 = 1712506``; ``y = (c * inv + 2**19)
    >> 20``: ``3 -> 5``, ``-4 -> floor(-6.03) = -7``. Latency: 2 beats + 17 root bits
    (``8 + 1 + 8``) + 31 reciprocal bits + 4 = 53 cycles.

    LayerNorm, ``d_model = 2``, 1 lane, row ``[3, 6]``, bias ``[10, -10]``: ``mean =
    floor((18 + 2) / 4) = 5``, ``c = [-2, 1]``, ``ms = 5 // 2 = 2``, ``r = isqrt(2 << 16) =
    362``, ``inv = 2966137``: ``(-2 * inv + 2**19) >> 20 = -6``, ``+ 10 = 4``; ``(inv + 2**19)
    >> 20 = 3``, ``- 10 = -7``. Latency: one cycle more for the mean: 54."""
    assert math.isqrt(6 << 16) == 627 and (1 << 30) // 627 == 1712506
    assert math.isqrt(2 << 16) == 362 and (1 << 30) // 362 == 2966137
    rms = dict(d_model=4, lanes=2, act_bits=8, center=False, multiplier_bits=15)
    ln = dict(d_model=2, lanes=1, act_bits=8, center=True, multiplier_bits=15)
    for design, params, row, want, latency in (
            (rms, [[[1, 1]], [[1, 1]]], [3, -4, 0, 0], [5, -7, 0, 0], 53),
            (ln, [[[1], [10]], [[1], [-10]]], [3, 6], [4, -7], 54)):
        DESIGNS["by_hand"] = design
        batch = {"params": params, "eps": 0, "mult": 1, "shift": 20, "rows": [row],
                 "gap_p": 0.0, "stall_p": 0.0}
        try:
            unit, _, got = _run("by_hand", "amaranth", scenarios=[("by_hand", batch, None)])
        finally:
            del DESIGNS["by_hand"]
        assert got[0]["outputs"] == [want]
        assert got[0]["first_out"][0] - got[0]["first_in"][0] == latency == unit.latency


def test_constant_divider_is_exact():
    """The unit's divisions by ``2 * d_model`` and ``d_model`` (multiply and shift) equal the
    floor division over every numerator of the width, for awkward divisors."""
    for divisor in (1, 2, 3, 5, 7, 48, 80, 96, 4095):
        mult, k = const_divider(divisor, 14)
        n = np.arange(1 << 14, dtype=object)
        assert ((n * mult) >> k == n // divisor).all(), divisor


@pytest.mark.filterwarnings("ignore:.*created but never used")
def test_norm_unit_refuses_bad_parameters():
    ok = dict(d_model=32, lanes=4, act_bits=8, center=False, multiplier_bits=15)
    for name, value in (("d_model", 0), ("lanes", 0), ("lanes", 3), ("act_bits", 1),
                        ("act_bits", 17), ("center", 1), ("multiplier_bits", 0),
                        ("multiplier_bits", 40)):
        with pytest.raises(ParameterError, match=f"^{name}="):
            NormUnit(**{**ok, name: value})
    gc.collect()        # the half-built units' unused-elaboratable warnings, filtered here
