"""The decoder's projection unit (``moepim.hw.projection.ProjectionUnit``) on its own: token
rows through the ``projection_rows`` bench on Amaranth's simulator (the bank played by
``moepim.sim.amaranth_macro.add_bank_model``), Verilator and Icarus (the bank's behavioural
macro loading its cell file, ``+MOEPIM_BANK<bank_id>``).

Two designs, one build each per simulator: a requantising unit (an ideal 6-bit ADC, 4 lanes,
``n_in`` 22 over 2 row tiles and ``n_out`` 14 over 2 column tiles, both with padding lanes in
the final beat) and a raw one (the LM head's logits: a differential tile whose 5-bit ADC
truncates, 1 lane, ``n_in`` 20 over 2 row tiles, ``n_out`` 7 over 2 column tiles). Checked per
run, several batches of rows each: every output bit-exact against the golden model
(``moepim.models.pim.CrossbarMatmul(tile)(x, w)``, then ``Requant(mult, shift).apply`` and
the symmetric clamp of ``moepim.models.quant``, or raw), zero padding lanes, the ``last``
flags, the counters ``rows`` and ``dac_drives``; without gaps and back-pressure the cycles
against ``moepim.spec.timing.projection_latency`` / ``projection_interval`` /
``projection_cycles``; one batch with input gaps and output back-pressure checks the values
alone."""

from __future__ import annotations

import dataclasses
import gc

import numpy as np
import pytest

from moepim.hw.projection import ProjectionUnit
from moepim.models import quant
from moepim.models.pim import CrossbarMatmul, bank_file_words, bank_image
from moepim.sim.amaranth_macro import add_bank_model
from moepim.sim.block_run import run_bench
from moepim.spec import timing
from moepim.spec.checks import ParameterError
from moepim.spec.tile import TileSpec

from .conftest import SIMULATORS, need_simulator
from .test_matrix_bank import popcount

TIME = pytest.mark.xdist_group("projection_unit")


def _t(**kw) -> TileSpec:
    base = dict(n_rows=16, n_columns=16, bits_per_cell=2, weight_bits=4, input_bits=4)
    return TileSpec(**{**base, **kw})


@dataclasses.dataclass(frozen=True)
class Design:
    tile: TileSpec
    n_in: int
    n_out: int
    lanes: int
    requant: bool
    bank_id: int
    hand_latency: int        # projection_latency worked out by hand (test_timing_by_hand)
    hand_interval: int
    act_bits: int = 6
    multiplier_bits: int = 12

    def unit(self) -> ProjectionUnit:
        return ProjectionUnit(tile=self.tile, n_in=self.n_in, n_out=self.n_out,
                              lanes=self.lanes, multiplier_bits=self.multiplier_bits,
                              act_bits=self.act_bits, requant=self.requant)


DESIGNS = {
    # offset cells, 6-bit codes of column sums <= 48: an ideal ADC; 16 rows and 8 outputs per
    # tile: 2 x 2 tiles; 6 input beats (2 padding lanes), 4 output beats (2 padding lanes)
    "requant": Design(_t(n_adcs=8, adc_bits=6), n_in=22, n_out=14, lanes=4, requant=True,
                      bank_id=3, hand_latency=20, hand_interval=16),
    # differential pairs, 4 outputs per tile, a 5-bit ADC on 7-bit line sums (truncating):
    # 2 x 2 tiles; 20 input beats and 7 output beats of one lane: the input bounds the rate
    "raw": Design(_t(n_adcs=4, adc_bits=5, weight_encoding="differential"), n_in=20, n_out=7,
                  lanes=1, requant=False, bank_id=9, hand_latency=34, hand_interval=20),
}
RUNS = [(name, sim) for name in DESIGNS for sim in SIMULATORS]


def _fit(values, lim, mb) -> quant.Requant:
    """A requantisation mapping the largest magnitude of ``values`` a little past ``lim``
    (some outputs clamp, most do not)."""
    top = max(1, int(np.abs(values).max()))
    return quant.Requant.from_ratio(1.4 * lim / top, mb)


def _batch(rng, d: Design, matmul, w, xs, *, requant=None, gap_p=0.0, stall_p=0.0):
    """A bench batch (rows padded with junk lanes) and its golden outputs."""
    t = d.tile
    half, lim = 1 << (t.input_bits - 1), (1 << (d.act_bits - 1)) - 1
    xs = np.asarray(xs, dtype=np.int64).reshape(-1, d.n_in)
    acc = matmul(xs, w)
    if d.requant:
        rq = requant or _fit(acc, lim, d.multiplier_bits)
        assert rq.mult < 1 << d.multiplier_bits and rq.shift < 32
        want = quant._clamp(rq.apply(acc), d.act_bits)
        mult, shift = rq.mult, rq.shift
    else:
        want, mult, shift = acc, None, None
    pad = -(-d.n_in // d.lanes) * d.lanes - d.n_in
    rows = np.hstack([xs, rng.integers(-half, half, (len(xs), pad))])
    batch = {"mult": mult, "shift": shift, "rows": rows.tolist(), "gap_p": gap_p,
             "stall_p": stall_p}
    return batch, xs, np.asarray(want)


def _scenarios(d: Design, seed):
    """``(name, batch, inputs, expected)`` and the weights: random rows, extreme rows with a
    shift-0 requantisation, and a batch with gaps and back-pressure."""
    rng = np.random.default_rng(seed)
    t = d.tile
    half, wh = 1 << (t.input_bits - 1), 1 << (t.weight_bits - 1)
    w = rng.integers(-wh, wh, (d.n_in, d.n_out))
    w[0] = wh - 1
    w[-1, :] = -wh                                    # extreme weights in both row tiles
    matmul = CrossbarMatmul(t)
    rand = lambda n: rng.integers(-half, half, (n, d.n_in))     # noqa: E731
    alt = np.where(np.arange(d.n_in) % 2, half - 1, -half)
    extremes = [np.full(d.n_in, -half), np.full(d.n_in, half - 1), np.zeros(d.n_in), alt,
                alt[::-1] if d.n_in % 2 else -1 - alt]
    out = [
        ("random", *_batch(rng, d, matmul, w, rand(5))),
        ("extremes", *_batch(rng, d, matmul, w, extremes, requant=quant.Requant(3, 0))),
        ("gaps_back_pressure", *_batch(rng, d, matmul, w, rand(6), gap_p=0.3, stall_p=0.4)),
    ]
    return out, w


@TIME
@pytest.mark.parametrize(("name", "sim"), RUNS, ids=[f"{n}-{s}" for n, s in RUNS])
def test_projection_unit_against_the_golden_model(name, sim, tmp_path):
    if sim != "amaranth":
        need_simulator(sim)
    d = DESIGNS[name]
    t = d.tile
    seed = 21
    scenarios, w = _scenarios(d, seed)
    unit = d.unit()
    image = bank_image([w], 1, d.n_in, d.n_out, t)
    path = tmp_path / f"bank{d.bank_id}.bin"
    bank_file_words(image, t, 1).tofile(path)

    def setup(s):
        add_bank_model(s, unit.bank, image)

    ib, ob = unit.in_blocks, unit.out_blocks
    got = run_bench(unit, top=f"projection_unit_{name}", bench="projection_rows", sim=sim,
                    args=dict(batches=[b for _, b, _, _ in scenarios], lanes=d.lanes,
                              in_bits=t.input_bits, out_bits=unit.out_bits, in_blocks=ib,
                              out_blocks=ob, seed=seed),
                    setup=setup, plusargs=[f"+MOEPIM_BANK{d.bank_id}={path}"],
                    preset={"bank_id": d.bank_id})

    mvm = timing.mvm_latency(t.input_bits, t.columns_per_adc)
    latency = timing.projection_latency(mvm, ib)
    interval = timing.projection_interval(mvm, ib, ob)
    assert (unit.latency, unit.interval) == (latency, interval) == (d.hand_latency,
                                                                     d.hand_interval)
    n_rows = dac = 0
    for (scenario, batch, xs, want), res in zip(scenarios, got):
        outs = np.asarray(res["outputs"])
        np.testing.assert_array_equal(outs[:, :d.n_out], want, err_msg=scenario)
        assert not outs[:, d.n_out:].any(), scenario
        assert res["lasts"] == [[0] * (ob - 1) + [1]] * len(xs), scenario
        n_rows += len(xs)
        dac += popcount(xs, t.input_bits) * unit.bank.col_tiles
        assert (res["rows"], res["dac_drives"]) == (n_rows, dac), scenario
        if d.requant:      # not degenerate: most outputs neither zero nor clamped
            lim = (1 << (d.act_bits - 1)) - 1
            assert (np.abs(want) < lim).any() and np.count_nonzero(want) > want.size // 4
        if batch["gap_p"] or batch["stall_p"]:
            continue            # the cycle formulas hold without gaps and back-pressure
        t0 = res["first_in"][0]
        assert [f - t0 for f in res["first_out"]] == [latency + r * interval
                                                      for r in range(len(xs))], scenario
        assert res["end"] - t0 == timing.projection_cycles(len(xs), mvm, ib, ob), scenario
        # the second row's beats follow the first's at once; later rows' first beats are
        # taken in the previous row's start cycle, one interval apart
        firsts = res["first_in"]
        assert firsts[1] - t0 == ib
        assert np.diff(firsts[1:]).tolist() == [interval] * (len(xs) - 2), scenario


def test_timing_by_hand():
    """``requant``: mvm_latency = 4 input planes x (16 lines / 8 ADCs) + 4 = 12; 22 inputs in
    6 beats of 4, 14 outputs in 4: first beat 0, beats 0..5, start 6, done 18 (block 0
    read), block 0 registered at 19, valid at 20 = 6 + 12 + 2. The bank's output buffer is
    free when block 3 is registered (cycle 18 + 4 = 22 = start + 16): an MVM every
    max(6, 12 + 4) = 16 cycles; 5 rows: 20 + 4 + 4 * 16 = 88 cycles.

    ``raw``: 8 line pairs / 4 ADCs = 2, mvm_latency 12; 20 beats of 1: 20 + 12 + 2 = 34, an
    MVM every max(20, 12 + 7) = 20 cycles (the input bounds the rate)."""
    assert DESIGNS["requant"].tile.mvm_latency == 12
    assert timing.projection_latency(12, 6) == DESIGNS["requant"].hand_latency == 20
    assert timing.projection_interval(12, 6, 4) == DESIGNS["requant"].hand_interval == 16
    assert timing.projection_cycles(5, 12, 6, 4) == 88
    assert timing.projection_cycles(1, 12, 6, 4) == 24
    assert DESIGNS["raw"].tile.mvm_latency == 12
    assert timing.projection_latency(12, 20) == DESIGNS["raw"].hand_latency == 34
    assert timing.projection_interval(12, 20, 7) == DESIGNS["raw"].hand_interval == 20
    from moepim.sim.build import silence_unused

    for name, d in DESIGNS.items():
        unit = d.unit()
        silence_unused(unit)
        assert (unit.bank.row_tiles, unit.bank.col_tiles) == (2, 2), name
        assert (unit.latency, unit.interval) == (d.hand_latency, d.hand_interval), name
    raw = DESIGNS["raw"].unit()
    silence_unused(raw)
    # the raw output: a row tile's output_bits plus one bit for the sum of 2 row tiles
    assert raw.out_bits == raw.acc_bits == DESIGNS["raw"].tile.output_bits + 1
    assert not DESIGNS["raw"].tile.ideal_adc and DESIGNS["requant"].tile.ideal_adc


BAD = [
    (dict(n_in=0), "n_in"),
    (dict(n_out=-3), "n_out"),
    (dict(lanes=0), "lanes"),
    (dict(tile={"n_rows": 16}), "tile"),
    (dict(multiplier_bits=0), "multiplier_bits"),
    (dict(multiplier_bits=32), "multiplier_bits"),
    (dict(act_bits=1), "act_bits"),
    (dict(act_bits=True), "act_bits"),
    (dict(requant=1), "requant"),
    (dict(counter_bits=4), "counter_bits"),
]


@pytest.mark.filterwarnings("ignore:.*created but never used")
@pytest.mark.parametrize("kwargs, name", BAD, ids=[f"{n}-{i}" for i, (_, n) in enumerate(BAD)])
def test_projection_unit_parameter_errors_name_the_argument(kwargs, name):
    d = DESIGNS["requant"]
    good = dict(tile=d.tile, n_in=d.n_in, n_out=d.n_out, lanes=d.lanes, multiplier_bits=12,
                act_bits=6, requant=True, counter_bits=48)
    with pytest.raises(ParameterError, match=f"^{name}=") as e:
        ProjectionUnit(**{**good, **kwargs})
    got = e.value.name
    del e
    gc.collect()
    assert got == name
