"""``moepim.hw.expert_engine.ExpertEngine`` on its own: seeded scenarios (ReLU and SwiGLU,
group_size 2, lanes 2 and 4, row and column tiles, several weight encodings, a calibrated ADC
window, gate weights and requantisation constants) driven through the engine's ports on
Amaranth's simulator (under its platform, every bank played by
``moepim.sim.amaranth_macro.add_bank_model``) and on Verilator (the exported Verilog, the
banks' behavioural macro loading the cell files named by ``bank_base + k``).

Every scenario checks each gate-weighted output bit-exact against the golden integer model
(``moepim.models.quant``'s expert FFN through ``moepim.models.pim.CrossbarMatmul``, times the
gate weight, as ``moe_forward_int`` accumulates it), the cycles from ``start`` to ``ready``
against ``moepim.spec.timing.job_latency`` (and by hand), and the counters ``jobs``,
``busy_cycles`` and ``dac_drives`` against values computed from the scenario.

Both simulators play one protocol driver, the bench ``expert_engine_jobs`` of
``moepim.testbenches.engine_benches``, through ``moepim.sim.block_run.run_bench``.
"""

from __future__ import annotations

import dataclasses
import gc
from types import SimpleNamespace

import numpy as np
import pytest

from moepim.hw.expert_engine import ExpertEngine, engine_job_layout
from moepim.models import quant
from moepim.models.pim import CrossbarMatmul, bank_file_words, bank_image, calibrate_shift
from moepim.sim.amaranth_macro import add_bank_model
from moepim.sim.block_run import run_bench
from moepim.spec import timing
from moepim.spec.checks import ParameterError
from moepim.spec.tile import TileSpec

from .test_matrix_bank import SIMS, popcount

# the golden model's names of the engine's matrices (``models.moe`` weight names)
MODEL_NAME = {"up": "up", "down": "down", "gate_proj": "gate"}


# ---------------------------------------------------------------------------------------------
# the scenarios

def _t(**kw) -> TileSpec:
    base = dict(n_rows=16, n_columns=16, bits_per_cell=2, weight_bits=4, input_bits=4)
    return TileSpec(**{**base, **kw})


@dataclasses.dataclass(frozen=True)
class EngineCase:
    name: str
    ffn: str
    tile: TileSpec
    d_model: int
    d_ff: int
    lanes: int
    seed: int
    slots: tuple          # the expert slot of each job
    restart: tuple        # per job, the cycle of an ignored start (-1: none)
    hand_latency: int     # job_latency worked out by hand (see test_job_latency_by_hand)
    group_size: int = 2
    gate_bits: int = 8
    multiplier_bits: int = 15
    bank_base: int = 0
    fixed: tuple = ()     # (slot, requant name, mult, shift) set instead of the fitted ones


CASES = [
    # one up row tile x 2 column tiles (12 outputs of 8 per tile), one down tile; 6-bit ADC
    # codes on column sums <= 48: an ideal ADC
    EngineCase("relu-offset-lanes4", "relu", _t(n_adcs=8, adc_bits=6), d_model=8, d_ff=12,
               lanes=4, seed=11, slots=(0, 1, 1), restart=(-1, 7, -1), hand_latency=29,
               bank_base=2),
    # up and gate_proj: 2 row tiles x 3 column tiles (4 outputs per differential tile); down:
    # 1 row tile x 5 column tiles; a 5-bit ADC truncates 7-bit line sums; banks 5, 6, 7
    EngineCase("swiglu-differential-lanes2", "swiglu",
               _t(n_adcs=4, adc_bits=5, weight_encoding="differential"), d_model=20, d_ff=10,
               lanes=2, seed=12, slots=(1, 0, 1), restart=(3, -1, 20), hand_latency=31,
               bank_base=5),
    # the reference column with calibrated ADC windows; d_ff 18 in blocks of 4 (the last one
    # half padding); up 2 x 3 tiles, down 2 x 3 tiles; 10-bit multipliers, 4-bit gates, and
    # slot 1's up requantisation without a shift (no rounding path)
    EngineCase("relu-reference_column-calibrated-lanes4", "relu",
               _t(input_bits=5, n_adcs=16, adc_bits=5, weight_encoding="reference_column",
                  adc_range="calibrated"), d_model=24, d_ff=18, lanes=4, seed=13,
               slots=(1, 0, 0), restart=(-1, -1, 2), hand_latency=25, gate_bits=4,
               multiplier_bits=10, fixed=((1, "up", 1, 0),)),
    # SwiGLU with the offset encoding and 5-bit codes of 6-bit column sums (shift 1); 4-bit
    # activations make the SiLU tables 16 entries per slot
    EngineCase("swiglu-offset-lanes4", "swiglu", _t(n_adcs=8, adc_bits=5),
               d_model=16, d_ff=8, lanes=4, seed=14, slots=(0, 1), restart=(-1, -1),
               hand_latency=2 * 12 + 2 + 2, multiplier_bits=12),
]


def _fit(values, lim, mb):
    """A requantisation (``quant.Requant``) that maps the largest magnitude of ``values`` a
    little past ``lim`` (some outputs clamp, most do not)."""
    top = max(1, int(np.abs(values).max()))
    rq = quant.Requant.from_ratio(1.4 * lim / top, mb)
    assert rq.mult < 1 << mb and rq.shift < 32
    return rq


@dataclasses.dataclass
class Prepared:
    engine: ExpertEngine
    ql: object             # a moepim.models.quant.QuantLayer of the group's slots
    matmul: CrossbarMatmul
    xs: np.ndarray
    gates: np.ndarray
    images: dict           # bank id -> cell image
    args: dict


def prepare(case: EngineCase) -> Prepared:
    t, ab = case.tile, case.tile.input_bits
    rng = np.random.default_rng(case.seed)
    half, lim = 1 << (ab - 1), (1 << (ab - 1)) - 1
    wh = 1 << (t.weight_bits - 1)
    engine = ExpertEngine(d_model=case.d_model, d_ff=case.d_ff, group_size=case.group_size,
                          lanes=case.lanes, tile=t, gate_bits=case.gate_bits,
                          multiplier_bits=case.multiplier_bits, ffn=case.ffn)
    shapes = {"up": (case.d_model, case.d_ff), "down": (case.d_ff, case.d_model),
              "gate_proj": (case.d_model, case.d_ff)}
    weights = {name: [rng.integers(-wh, wh, shapes[name]) for _ in range(case.group_size)]
               for name in engine.bank_names}
    xs = rng.integers(-half, half, (len(case.slots), case.d_model))
    gates = rng.integers(1, 1 << case.gate_bits, len(case.slots))
    gates[0] = (1 << case.gate_bits) - 1                    # full scale once
    matmul = CrossbarMatmul(t)
    if t.calibrated:
        # each matrix's window from a batch of its kind of inputs (tokens, or activations)
        for name, ws in weights.items():
            lo = 0 if (name == "down" and case.ffn == "relu") else -lim
            cal = rng.integers(lo, lim + 1, (16, shapes[name][0]))
            for w in ws:
                matmul.set_shifts(w, calibrate_shift(cal, w, t, clip_fraction=0.02))

    cfg = SimpleNamespace(quant=SimpleNamespace(act_bits=ab), ffn=case.ffn)
    ql = quant.QuantLayer(cfg=cfg, s_x=1.0, s_y=1.0)
    mb = case.multiplier_bits
    for k in range(case.group_size):
        p = f"s{k}"
        for name, ws in weights.items():
            ql.tensors[f"{p}.{MODEL_NAME[name]}.weight"] = ws[k]
        # requantisations fitted to this slot's products of the scenario's tokens
        u_acc = matmul(xs, weights["up"][k])
        ql.requant[f"{p}.up"] = _fit(u_acc, lim, mb)
        if case.ffn == "swiglu":
            g_acc = matmul(xs, weights["gate_proj"][k])
            ql.requant[f"{p}.gate"] = _fit(g_acc, lim, mb)
            # SiLU over the gate codes, a different input scale per slot
            s_g = (3.0 + 2 * k) / lim
            ql.luts[f"{p}.silu"] = quant._lut(quant._silu, s_g, s_g, ab)
        for slot, name, mult, shift in case.fixed:
            if slot == k:
                ql.requant[f"{p}.{MODEL_NAME[name]}"] = quant.Requant(mult, shift)
        if case.ffn == "swiglu":
            u = quant._clamp(ql.requant[f"{p}.up"].apply(u_acc), ab)
            g = quant._clamp(ql.requant[f"{p}.gate"].apply(g_acc), ab)
            ql.requant[f"{p}.mul"] = _fit(quant._lut_apply(ql.luts[f"{p}.silu"], g, ab) * u,
                                          lim, mb)
        hidden = quant.ffn_hidden_int(xs, ql, p, matmul)
        ql.requant[f"{p}.down"] = _fit(matmul(hidden, weights["down"][k]), lim, mb)

    images = {}
    for k, name in enumerate(engine.bank_names):
        ws = weights[name]
        shifts = [matmul.shift_for(w) for w in ws] if t.calibrated else None
        images[case.bank_base + k] = bank_image(ws, case.group_size, *shapes[name], t, shifts)

    requants = {"up": "up", "down": "down", "gate_proj": "gate", "mul": "mul"}
    layout = engine_job_layout(group_size=case.group_size, gate_bits=case.gate_bits,
                               multiplier_bits=mb, ffn=case.ffn)
    jobs = []
    for j, slot in enumerate(case.slots):
        fields = {"slot": slot, "gate": int(gates[j])}
        for field, model in requants.items():
            if f"{field}_mult" in {member for member, _ in layout}:
                rq = ql.requant[f"s{slot}.{model}"]
                fields[f"{field}_mult"], fields[f"{field}_shift"] = rq.mult, rq.shift
        # after start: another slot, no gate, no multipliers
        scramble = {name: 0 for name in fields} | {"slot": (slot + 1) % case.group_size}
        jobs.append({"x": xs[j].tolist(), "fields": fields, "scramble": scramble,
                     "restart": case.restart[j]})
    luts = []
    if case.ffn == "swiglu":
        luts = [[k * (1 << ab) + i, int(v)] for k in range(case.group_size)
                for i, v in enumerate(ql.luts[f"s{k}.silu"])]
    args = dict(bank_base=case.bank_base, lanes=case.lanes, act_bits=ab,
                out_bits=engine.out_bits, in_blocks=engine.up.in_blocks,
                out_blocks=engine.down.out_blocks, latency=engine.job_latency, luts=luts,
                jobs=jobs)
    return Prepared(engine, ql, matmul, xs, gates, images, args)


def test_job_latency_by_hand():
    """``job_latency = 2 * mvm_latency + hidden_blocks + 2``, against numbers worked out by
    hand, so that a drift of the formula fails here and in the scenario tests."""
    # relu-offset-lanes4: mvm_latency = 4 input planes x (16 ADC inputs / 8 ADCs) + 4 = 12;
    # d_ff 12 in blocks of 4 lanes = 3 hidden blocks: cycle 0 start, 12 up done, 13..15 the
    # hidden blocks, 16 start down, 28 down done, 29 ready: 2 * 12 + 3 + 2 = 29
    assert CASES[0].tile.mvm_latency == 12
    assert timing.job_latency(12, 3) == CASES[0].hand_latency == 29
    # swiglu-differential-lanes2: 8 column pairs / 4 ADCs = 2, 4 planes: 12; 10 / 2 = 5 blocks
    assert timing.job_latency(CASES[1].tile.mvm_latency, 5) == CASES[1].hand_latency == 31
    # relu-reference_column-calibrated-lanes4: 1 input per ADC, 5 planes: 9; 18 / 4 -> 5
    assert timing.job_latency(CASES[2].tile.mvm_latency, 5) == CASES[2].hand_latency == 25
    for case in CASES:
        blocks = -(-case.d_ff // case.lanes)
        assert timing.job_latency(case.tile.mvm_latency, blocks) == case.hand_latency


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_engine_bit_exact_cycles_and_counters(case, sim, tmp_path):
    t, ab = case.tile, case.tile.input_bits
    p = prepare(case)
    engine = p.engine
    # the banks' cell files (Verilator), named by plusargs; the bank models (Amaranth)
    plusargs = []
    for bank_id, image in p.images.items():
        path = tmp_path / f"bank{bank_id}.bin"
        bank_file_words(image, t, case.group_size).tofile(path)
        plusargs.append(f"+MOEPIM_BANK{bank_id}={path}")

    def setup(s):
        for k, name in enumerate(engine.bank_names):
            add_bank_model(s, engine.banks[name], p.images[case.bank_base + k])

    got = run_bench(engine, top="expert_engine", bench="expert_engine_jobs", args=p.args,
                    sim=sim, setup=setup, plusargs=plusargs,
                    preset={"bank_base": case.bank_base})

    hidden_blocks = -(-case.d_ff // case.lanes)
    latency = timing.job_latency(timing.mvm_latency(ab, t.columns_per_adc), hidden_blocks)
    assert latency == engine.job_latency == case.hand_latency
    dac = 0
    for j, (slot, res) in enumerate(zip(case.slots, got)):
        x, prefix = p.xs[j:j + 1], f"s{slot}"
        # golden: the expert's FFN output (requantised down product) times the gate weight,
        # the term moe_forward_int accumulates for this (token, expert)
        want = int(p.gates[j]) * quant._ffn_int(x, p.ql, prefix, p.matmul)[0]
        if t.ideal_adc:        # then the crossbars compute the exact integer layer
            np.testing.assert_array_equal(
                want, int(p.gates[j]) * quant._ffn_int(x, p.ql, prefix)[0])
        blocks = np.array(res["blocks"]).reshape(-1)
        np.testing.assert_array_equal(blocks[:case.d_model], want)
        assert not blocks[case.d_model:].any()
        # cycles: ready again exactly job_latency cycles after the start cycle, low between
        # (the restart in that time ignored), high while the results are read
        assert res["t_ready"] == latency
        assert res["ready"] == [1] + [0] * (latency - 1) + [1]
        assert all(res["ready_after"])
        # counters: one job each; job_latency - 1 busy cycles each; word-line pulses of the
        # token in every column tile of up (and gate_proj), of the hidden vector in every
        # column tile of down
        hidden = quant.ffn_hidden_int(x, p.ql, prefix, p.matmul)[0]
        assert len(hidden) == case.d_ff and np.abs(hidden).max() <= (1 << (ab - 1)) - 1
        dac += popcount(hidden, ab) * engine.down.col_tiles
        dac += sum(popcount(x, ab) * engine.banks[name].col_tiles
                   for name in engine.bank_names if name != "down")
        assert res["counters"] == {"jobs": j + 1, "busy_cycles": (j + 1) * (latency - 1),
                                   "dac_drives": dac}
        # the scenario is not degenerate: a quarter of the outputs at least are not zero,
        # and not all of them clamp
        assert np.count_nonzero(want) >= case.d_model // 4
        assert (np.abs(want) < ((1 << (ab - 1)) - 1) * p.gates[j]).any()


def test_counters_by_hand_for_the_smallest_case():
    """relu-offset-lanes4 by hand: 3 jobs of job_latency 29 keep the engine busy 3 x 28 = 84
    cycles; its up bank is 1 x 2 tiles (d_model 8 <= 16 rows, d_ff 12 > 8 outputs of a
    tile), its down bank 1 x 1 (12 rows, 8 outputs): each token's '1' bits are driven twice,
    each hidden vector's once."""
    from moepim.sim.build import silence_unused

    case = CASES[0]
    p = prepare(case)
    silence_unused(p.engine)       # built for its properties only
    assert (p.engine.up.row_tiles, p.engine.up.col_tiles) == (1, 2)
    assert (p.engine.down.row_tiles, p.engine.down.col_tiles) == (1, 1)
    assert len(case.slots) * (case.hand_latency - 1) == 84
    # gate-weighted outputs: 4-bit activations (clamp 7) times 8-bit gates (255): 12 bits
    assert p.engine.out_bits == 12


BAD = [
    (dict(d_model=0), "d_model", "d_model=0"),
    (dict(d_ff=-4), "d_ff", "d_ff=-4"),
    (dict(lanes=0), "lanes", "lanes=0"),
    (dict(gate_bits=True), "gate_bits", "gate_bits=True"),
    (dict(multiplier_bits=0), "multiplier_bits", "multiplier_bits=0"),
    (dict(multiplier_bits=32), "multiplier_bits", "multiplier_bits=32"),
    (dict(ffn="gelu"), "ffn", "ffn='gelu'"),
    (dict(tile={"n_rows": 16}), "tile", "tile="),
    (dict(counter_bits=4), "counter_bits", "counter_bits=4"),
    (dict(group_size=0), "group_size", "group_size=0"),
    (dict(group_size=17), "group_size", "group_size=17"),
]


@pytest.mark.filterwarnings("ignore:.*created but never used")
@pytest.mark.parametrize("kwargs, name, shown", BAD)
def test_engine_parameter_errors_name_the_argument(kwargs, name, shown):
    good = dict(d_model=8, d_ff=12, group_size=2, lanes=4, tile=CASES[0].tile)
    with pytest.raises(ParameterError, match=shown) as e:
        ExpertEngine(**{**good, **kwargs})
    got = e.value.name
    del e          # its traceback holds the half-built component
    gc.collect()   # half-built components warn here, under this test's filter
    assert got == name
