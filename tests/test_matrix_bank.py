"""``moepim.hw.matrix_bank.MatrixBank`` on its own: seeded scenarios (tile shapes, encodings,
slots, lanes, row and column tiles) driven through the block's ports on Amaranth's simulator
(under its platform: the bank played by ``moepim.sim.amaranth_macro.add_bank_model``) and on
Verilator (the exported Verilog with the behavioural macro
``hw/verilog/moepim_matrix_bank.v`` loading its cell file by ``bank_id``).

Every scenario checks each row tile's partial sums bit-exact against the golden integer model
(``moepim.models.tile.tile_mvm`` tile by tile), the cycles from ``start`` to ``done`` against
``moepim.spec.timing.mvm_latency``, the ``busy``/``done`` waveforms, that a ``start`` while
busy is ignored, and the ``dac_drives`` counter against a popcount of the inputs.

Both simulators play one protocol driver, the bench ``matrix_bank_jobs`` of
``moepim.testbenches.engine_benches``, through ``moepim.sim.block_run.run_bench``.
"""

from __future__ import annotations

import dataclasses
import gc

import numpy as np
import pytest

from moepim.hw.matrix_bank import MatrixBank
from moepim.models.pim import CrossbarMatmul, bank_file_words, bank_image, calibrate_shift
from moepim.models.tile import tile_mvm
from moepim.sim.amaranth_macro import add_bank_model
from moepim.sim.block_run import run_bench
from moepim.spec import timing
from moepim.spec.checks import ParameterError
from moepim.spec.tile import TileSpec

SIMS = ("amaranth", "verilator")


def popcount(values, bits: int) -> int:
    """'1' bits of ``values`` as ``bits``-bit two's complement words (the word-line pulses
    of one input vector)."""
    return sum(bin(int(v) & ((1 << bits) - 1)).count("1") for v in np.ravel(values))


# ---------------------------------------------------------------------------------------------
# the scenarios

@dataclasses.dataclass(frozen=True)
class BankCase:
    name: str
    tile: TileSpec
    n_in: int
    n_out: int
    n_slots: int
    lanes: int
    seed: int
    jobs: tuple      # (slot, new input?, cycle of an ignored second start or -1)
    hand_latency: int   # mvm_latency worked out by hand (see test_latency_formula_by_hand)
    bank_id: int = 0


def _t(**kw) -> TileSpec:
    base = dict(n_rows=16, n_columns=16, bits_per_cell=2, weight_bits=4, input_bits=4)
    return TileSpec(**{**base, **kw})


CASES = [
    # one tile, one slot, an ideal ADC (6-bit codes for column sums <= 16 * 3 = 48): the bank
    # is then the exact product x @ W as well
    BankCase("offset-1x1-slot1-lanes4", _t(n_adcs=8, adc_bits=6), n_in=16, n_out=8,
             n_slots=1, lanes=4, seed=1, jobs=((0, True, 5), (0, True, -1)), hand_latency=12,
             bank_id=3),
    # 3 row tiles (the last one partial) x 2 column tiles, 2 slots; a 4-bit ADC on 7-bit
    # signed line sums truncates (shift 3); the second job keeps the held input
    BankCase("differential-3x2-slots2-lanes4", _t(n_adcs=4, adc_bits=4, weight_encoding=
                                                  "differential"), n_in=40, n_out=6,
             n_slots=2, lanes=4, seed=2, jobs=((1, True, 3), (0, False, -1), (1, True, -1)),
             hand_latency=12, bank_id=7),
    # the reference column with a run-time (calibrated) ADC window per slot (4-bit codes of
    # line sums in [-32, 16]: saturating at small shifts), one ADC input per ADC, 2 row
    # tiles x 3 column tiles, 2 lanes
    BankCase("reference_column-calibrated-2x3-slots2-lanes2",
             _t(input_bits=5, n_adcs=16, adc_bits=4, weight_encoding="reference_column",
                adc_range="calibrated"), n_in=20, n_out=20, n_slots=2, lanes=2, seed=3,
             jobs=((0, True, -1), (1, True, 2), (1, True, -1)), hand_latency=9),
    # 8-bit weights in 4 slices, one ADC for 8 columns, a fixed truncating shift, 3 slots
    BankCase("offset-8bit-1x3-slots3-lanes2",
             _t(weight_bits=8, input_bits=3, n_adcs=2, adc_bits=4, adc_shift=2), n_in=16,
             n_out=9, n_slots=3, lanes=2, seed=4, jobs=((2, True, 10), (1, True, -1)),
             hand_latency=28),
]


@dataclasses.dataclass
class Prepared:
    bank: MatrixBank
    weights: list          # per slot (n_in, n_out)
    shifts: list | None    # per slot, the ADC window (calibrated)
    image: np.ndarray
    xs: list               # per job, the held input vector
    args: dict


def prepare(case: BankCase) -> Prepared:
    t = case.tile
    rng = np.random.default_rng(case.seed)
    wh, xh = 1 << (t.weight_bits - 1), 1 << (t.input_bits - 1)
    weights = [rng.integers(-wh, wh, (case.n_in, case.n_out)) for _ in range(case.n_slots)]
    shifts = None
    if t.calibrated:
        cal = rng.integers(-xh, xh, (16, case.n_in))
        # a window that clips a few per cent of the conversions: both paths of the ADC
        shifts = [calibrate_shift(cal, w, t, clip_fraction=0.05) for w in weights]
    image = bank_image(weights, case.n_slots, case.n_in, case.n_out, t, shifts)
    xs, jobs, x = [], [], None
    for slot, fresh, restart in case.jobs:
        if fresh:
            x = rng.integers(-xh, xh, case.n_in)
        xs.append(x)
        jobs.append({"slot": slot, "x": x.tolist() if fresh else None, "restart": restart,
                     "other": (slot + 1) % case.n_slots})
    bank = MatrixBank(tile=t, n_in=case.n_in, n_out=case.n_out, n_slots=case.n_slots,
                      lanes=case.lanes)
    args = dict(bank_id=case.bank_id, lanes=case.lanes, input_bits=t.input_bits,
                out_bits=t.output_bits, row_tiles=bank.row_tiles, in_blocks=bank.in_blocks,
                out_blocks=bank.out_blocks, latency=bank.mvm_latency, jobs=jobs)
    return Prepared(bank, weights, shifts, image, xs, args)


def golden_partials(x, w, tile: TileSpec, window=None) -> np.ndarray:
    """``(n_out, row_tiles)``: each row tile's partial outputs, tile by tile with
    ``tile_mvm`` (zero-padded inputs and weights), independent of the bank's layout."""
    rt, ct = -(-len(x) // tile.n_rows), -(-w.shape[1] // tile.n_outputs)
    xp = np.zeros(rt * tile.n_rows, dtype=np.int64)
    xp[:len(x)] = x
    wp = np.zeros((rt * tile.n_rows, ct * tile.n_outputs), dtype=np.int64)
    wp[:w.shape[0], :w.shape[1]] = w
    out = np.zeros((ct * tile.n_outputs, rt), dtype=np.int64)
    kw = dataclasses.asdict(tile)
    for i in range(rt):
        rows = slice(i * tile.n_rows, (i + 1) * tile.n_rows)
        for j in range(ct):
            cols = slice(j * tile.n_outputs, (j + 1) * tile.n_outputs)
            out[cols, i] = tile_mvm(xp[rows], wp[rows, cols], window, **kw)
    return out[:w.shape[1]]


def test_latency_formula_by_hand():
    """The formula, checked against numbers worked out by hand, so that a drift of
    ``mvm_latency`` fails here and in the scenario tests."""
    # CASES[0]: 4-bit weights in 2-bit cells = 2 slices, 16 columns = 16 ADC inputs over 8
    # ADCs = 2 conversions per ADC per plane; 4 input planes: 4 * 2 conversions, + 1 latch,
    # + 1 first drive, + 1 last shift-add, + 1 slice combine = 12 cycles
    assert timing.mvm_latency(4, 2) == CASES[0].hand_latency == 12
    # CASES[1]: differential: 16 columns = 8 pairs over 4 ADCs = 2 each: 4 * 2 + 4 = 12
    assert CASES[1].hand_latency == 12
    # CASES[2]: 16 lines over 16 ADCs, 5 planes: 5 * 1 + 4 = 9
    assert CASES[2].hand_latency == 9
    # CASES[3]: 16 columns over 2 ADCs = 8 each, 3 planes: 3 * 8 + 4 = 28
    assert CASES[3].hand_latency == 28
    for case in CASES:
        t = case.tile
        assert timing.mvm_latency(t.input_bits, t.columns_per_adc) == t.mvm_latency \
            == case.hand_latency


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bank_bit_exact_cycles_and_counters(case, sim, tmp_path):
    t = case.tile
    p = prepare(case)
    bank = p.bank
    # geometry by hand from the case: row tiles over n_rows, column tiles over n_outputs
    assert (bank.row_tiles, bank.col_tiles) == (-(-case.n_in // 16),
                                                -(-case.n_out // t.n_outputs))
    assert bank.n_crossbars == case.n_slots * bank.row_tiles * bank.col_tiles
    # the macro's cell file (Verilator), named by a plusarg; the bank model (Amaranth)
    path = tmp_path / f"bank{case.bank_id}.bin"
    bank_file_words(p.image, t, case.n_slots).tofile(path)
    got = run_bench(bank, top="matrix_bank", bench="matrix_bank_jobs", args=p.args, sim=sim,
                    setup=lambda s: add_bank_model(s, bank, p.image),
                    plusargs=[f"+MOEPIM_BANK{case.bank_id}={path}"],
                    preset={"bank_id": case.bank_id})

    latency = timing.mvm_latency(t.input_bits, t.columns_per_adc)
    matmul = CrossbarMatmul(t)
    dac = 0
    for (slot, _, restart), x, res in zip(case.jobs, p.xs, got):
        window = None if p.shifts is None else p.shifts[slot]
        want = golden_partials(x, p.weights[slot], t, window)
        # the golden models agree: the row tiles' sum is the tiled product
        if window is not None:
            matmul.set_shifts(p.weights[slot], window)
        np.testing.assert_array_equal(want.sum(axis=1), matmul(x, p.weights[slot]))
        if t.ideal_adc:
            np.testing.assert_array_equal(want.sum(axis=1), x @ p.weights[slot])
        # every output lane of every block, each row tile's partial sum; lanes past n_out 0
        blocks = np.array(res["blocks"])                     # (out_blocks, lanes, row_tiles)
        flat = blocks.reshape(-1, bank.row_tiles)
        np.testing.assert_array_equal(flat[:case.n_out], want)
        assert not flat[case.n_out:].any()
        # cycles: done exactly mvm_latency cycles after the start cycle, one cycle long; busy
        # in between; a second start while busy changes nothing
        assert res["t_done"] == latency == bank.mvm_latency == case.hand_latency
        assert res["busy"] == [0] + [1] * (latency - 1) + [0]
        assert res["done"] == [0] * latency + [1]
        assert all(a == [0, 0] for a in res["after"])
        # one word-line pulse per '1' input bit per tile position (row tile x column tile):
        # the inputs' popcount once per column tile; the ignored start adds nothing
        dac += popcount(x, t.input_bits) * bank.col_tiles
        assert res["dac_drives"] == dac
        assert restart < 0 or 0 < restart < latency      # the restart did fall in busy


def test_geometry_by_hand():
    """CASES[0]: one slot of 1 x 1 crossbars of 16 x 16 cells, 16 inputs and 8 outputs in
    blocks of 4 lanes."""
    from moepim.sim.build import silence_unused

    case = CASES[0]
    p = prepare(case)
    silence_unused(p.bank)         # built for its properties only
    assert p.image.size == 1 * 1 * 1 * 16 * 16
    assert p.bank.n_peripheral_sets == 1 and p.bank.n_cells == 256
    assert (p.bank.in_blocks, p.bank.out_blocks) == (4, 2)
    # the counter's rule on a hand example: 4-bit words 1111, 0001, 0010, 1000
    assert popcount([-1, 1, 2, -8], 4) == 7


@pytest.mark.filterwarnings("ignore:.*created but never used")
@pytest.mark.parametrize("kwargs, name, shown", [
    (dict(n_in=0), "n_in", "n_in=0"),
    (dict(n_out=-3), "n_out", "n_out=-3"),
    (dict(n_slots=True), "n_slots", "n_slots=True"),
    (dict(lanes=2.0), "lanes", "lanes=2.0"),
    (dict(counter_bits=7), "counter_bits", "counter_bits=7"),
    (dict(counter_bits=65), "counter_bits", "counter_bits=65"),
    (dict(tile={"n_rows": 16}), "tile", "tile="),
])
def test_bank_parameter_errors_name_the_argument(kwargs, name, shown):
    good = dict(tile=CASES[0].tile, n_in=16, n_out=8, n_slots=1, lanes=4)
    with pytest.raises(ParameterError, match=shown) as e:
        MatrixBank(**{**good, **kwargs})
    got = e.value.name
    del e          # its traceback holds the half-built component
    assert got == name
    gc.collect()   # half-built components warn here, under this test's filter
