"""A decoder experiment (``kind: decoder``, ``moepim run``): generation through one decoder
layer under the cache modes ``none`` / ``kv`` / ``go`` / ``kv_go``, and the primary paper's
comparison of them.

What is simulated and what is computed:

* **values**: the golden generation loop (``moepim.models.generation``) in every mode, on the
  tile's crossbar arithmetic; every mode must generate the same tokens and output rows (the
  KV- and GO-cached decode equal to recomputation), a failed check is a mismatch;
* **the MoE layer**: its RTL (``moepim.hw.moe_layer``, under the experiment's simulator) on
  the decoder's own MoE inputs (the MoE norm's output codes of every token, routed by the
  prompt window and the decode rule): the prompt window and one GO-cached window per decode
  step, bit-exact against the golden model; the windows without the GO cache (``none``,
  ``kv``: the whole sequence again) by the layer's cycle formula, which the tests check
  against the RTL;
* **the attention half** (attention norm, Q/K/V projections, RoPE, attention over the KV
  store, O projection, first residual): one RTL design, ``moepim.hw.attention_block``
  (``AttentionBlock``), under the experiment's simulator (not with ``--sim model``): the
  ``kv_go`` generation's windows in one simulation, the prompt (``P`` rows at position 0)
  then each decode step's new row (position ``P + k - 1``), the KV store carrying over, on
  the tokens' embedding codes with the generator's own weights and constants (the Q/K/V/O
  cell images with the golden ``CrossbarMatmul``'s ADC windows); every output code
  bit-exact against the golden first residual ``x1`` of every token, every window's cycles
  against ``moepim.spec.timing.attention_block_cycles`` (report: ``attention_block``). Every
  step of every mode is priced by that block's formula (``dense_cycles``), which the
  simulated windows equal for the prompt and the ``kv_go`` steps; the ``none``, ``kv`` and
  ``go`` steps (other windows) use the same formula, not simulated;
* **the rest of the layer** (embedding, MoE norm, second residual add, final norm, LM head,
  argmax): the cycle formulas of their RTL units (``moepim.spec.timing``; each unit's RTL is
  tested bit- and cycle-exact against them: ``tests/test_norm_unit.py``,
  ``test_projection_unit.py``, ``test_residual_unit.py``, ``test_argmax_unit.py``), composed
  in the order below. From the attention norm to the second residual this is ``DecoderLayer``
  (``moepim.hw.decoder_layer``: the attention block, the MoE norm, the MoE layer and the
  second residual as one RTL design, tested bit- and cycle-exact against
  ``decoder_layer_phases`` in ``tests/test_decoder_layer.py``): the MoE layer's share of a
  step is its window less the token and output beats the MoE norm and the second residual
  stream (``moe_phase_cycles``), so a KV+GO step's layer cycles are
  ``decoder_layer_cycles`` (a property test). The embedding before it and the final norm,
  LM head and argmax after it are not in that design.

A step's phases, one after another (rows pipelined inside each unit): embedding (one crossbar
row tile per token: a one-hot input), attention norm, the Q and K/V projections (separate
crossbars, in parallel), RoPE on Q and K (one unit each), the new K/V rows written to DRAM
(``kv_spill``, rows at positions from ``kv_cache_rows`` on) and the earlier ones read back
into the on-chip KV store (``kv_fetch``), each lasting at least its DRAM transfer, attention
(``n_attention_units`` units, each a head of a row at a time, over the KV store), the O
projection, the first residual add,
the MoE norm, the MoE layer (after the GO-cache rows it reads back from DRAM), the second
residual add, then the final norm, the LM head and the argmax on the new row. Every DRAM
transfer of a mode's run (the prompt's tokens, K/V rows written and read back, GO-cache rows
read back and spilled, the generated tokens) goes on one channel model
(``moepim.models.dram``, first come first served), so they contend: ``_step_timeline``.

Energy per step: crossbar events of every dense matrix (cells, ADC conversions, shift-adds,
DAC drives counted from the golden inputs' bits, the ADCs' leakage over their MVMs), the
digital units' operations (Horowitz's per-operation figures), the KV store's SRAM bits, the
MoE layer's energy (its own events, without its DRAM term), DRAM active power over the KV,
GO-cache and token transfers and idle power over the rest of the step, and the digital units' static
power over the step (the figure and the way Gao & Yang's simulator charges it).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import math
import os
import platform
import time
from pathlib import Path

import numpy as np

from moepim.models.decoder import init_decoder_weights, kv_row_bytes
from moepim.models.dram import DramChannel
from moepim.models.generation import build_generator, decoder_accuracy, generate
from moepim.models.pim import CrossbarMatmul, MemoMatmul, tiles_of
from moepim.models.quant import int_matmul
from moepim.models.workload import workload_of_inputs
from moepim.spec import timing as T
from moepim.spec.numerics import RECIP_BITS, SCORE_BITS

from .build import default_build_root, silence_unused
from .config import DecoderExperiment, resolved_dict
from .golden import Golden
from .layer_report import adc_split
from .layer_run import _headline as moe_headline
from .layer_run import check_layer, plan_layer, simulate_layer, summarize_layer
from .report import REPORT_VERSION, write_report
from .timing_run import bit_ones

__all__ = ["run_decoder_experiment", "simulate_attention_block", "dense_cycles",
           "decoder_unit_specs", "summary_line", "steps_csv", "PHASES"]

PHASES = ("embedding", "attn_norm", "qkv_projection", "rope", "kv_spill", "kv_fetch",
          "attention", "o_projection", "residual", "moe_norm", "moe", "moe_residual",
          "final_norm", "lm_head")
RATIO_PAIRS = (("none", "kv_go"), ("kv", "kv_go"), ("go", "kv_go"), ("none", "kv"))


class _DecoderGolden(Golden):
    """The MoE part's golden model, made from the decoder's generation: never written to the
    golden cache (the decoder's own inputs are not a seeded workload of its key)."""

    def save(self, root: Path) -> None:
        pass


def _prompt(exp: DecoderExperiment) -> list[int]:
    rng = np.random.default_rng(exp.workload.seed)
    return rng.integers(0, exp.model.vocab_size, exp.workload.n_prompt).tolist()


def _golden(exp: DecoderExperiment, say, root: Path):
    """The generation in every mode on the tile's arithmetic, and whether they agree (the
    ADC windows kept under the build root ``root``)."""
    cfg, wl = exp.model, exp.workload
    mm = CrossbarMatmul(exp.tile.spec())
    prompt = _prompt(exp)
    say(f"golden generation: {cfg.name}, {wl.n_prompt}-token prompt + {wl.n_generate} "
        f"tokens, modes {', '.join(wl.modes)}")
    gen = build_generator(cfg, prompt, wl.seed, matmul=mm,
                          calibration_cache=Path(root) / "cache" / "calibration")
    results = {m: generate(gen, prompt, wl.n_generate, m) for m in wl.modes}
    base = results[wl.modes[0]]
    disagree = []
    for m, r in results.items():
        same = (r.tokens == base.tokens
                and all(np.array_equal(a, b) for a, b in zip(r.rows, base.rows))
                and np.array_equal(r.moe_x, base.moe_x) and np.array_equal(r.y, base.y))
        if not same:
            disagree.append(m)
    return gen, prompt, results, base, disagree


# ---------------------------------------------------------------------------------------------
# the attention half on its RTL (``moepim.hw.attention_block.AttentionBlock``)

ATTENTION_BANK_BASE = 0       # the block's Q, K, V and O cell images: banks 0 .. 3


def attention_block_kwargs(exp: DecoderExperiment) -> dict:
    """``AttentionBlock``'s constructor arguments at the experiment's size (positions for
    the whole generation)."""
    m, wl = exp.model, exp.workload
    return dict(tile=exp.tile.spec(), d_model=m.d_model, n_heads=m.n_heads,
                n_kv_heads=m.kv_heads, head_dim=m.head_size, lanes=exp.layer.lanes,
                act_bits=m.quant.act_bits, multiplier_bits=m.quant.multiplier_bits,
                n_positions=wl.n_prompt + wl.n_generate,
                n_attention_units=exp.layer.n_attention_units,
                center=m.norm == "layernorm", rope=m.rope_theta is not None)


def _attention_block(exp: DecoderExperiment, **extra):
    """``AttentionBlock`` at the experiment's size and its constructor arguments (the build
    cache's key); ``extra``: more arguments (``kv_cache_rows``)."""
    from moepim.hw.attention_block import AttentionBlock

    kw = {**attention_block_kwargs(exp), **extra}
    return AttentionBlock(**kw), {**kw, "tile": dataclasses.asdict(kw["tile"])}


def _attention_block_args(exp: DecoderExperiment, gen, x_rows: np.ndarray) -> tuple:
    """The bench's arguments: the attention norm's gains (and biases), the RoPE table, the
    requantisation constants of ``gen.dq`` and the ``kv_go`` windows (the prompt at position
    0, then each decode step's new row at ``P + k - 1``; ``x_rows``: every token's embedding
    codes). Returns the arguments and the windows as ``(first_position, rows)``."""
    from moepim.hw.rope import COEF_BITS, table_rows
    from moepim.models.decoder import rope_tables

    m, wl, dq = exp.model, exp.workload, gen.dq
    lanes, ab = exp.layer.lanes, m.quant.act_bits
    nq = dq.norms["attn_norm"]
    params = [[nq.gamma[i:i + lanes].tolist()]
              + ([nq.beta[i:i + lanes].tolist()] if nq.center else [])
              for i in range(0, m.d_model, lanes)]
    held = {"norm_eps": int(nq.eps), "norm_mult": nq.requant.mult,
            "norm_shift": nq.requant.shift, "index_mult": dq.attn_index.mult,
            "index_shift": dq.attn_index.shift}
    for name, key in (("q", "attn.q"), ("k", "attn.k"), ("v", "attn.v"), ("o", "attn.o"),
                      ("res", "res1.x")):
        held[f"{name}_mult"], held[f"{name}_shift"] = dq.requant[key].mult, \
            dq.requant[key].shift
    held = {k: int(v) for k, v in held.items()}
    rope = []
    if m.rope_theta is not None:
        cos, sin = rope_tables(m, wl.n_prompt + wl.n_generate)
        rope = table_rows(cos, sin, lanes=lanes)
    P = wl.n_prompt
    spans = [(0, P)] + [(P + k - 1, 1) for k in range(1, wl.n_generate)]
    windows = [{"first_position": p0, "rows": x_rows[p0:p0 + n].tolist(), "gap_p": 0.0,
                "stall_p": 0.0} for p0, n in spans]
    args = dict(norm_params=params, rope_table=rope, coef_bits=COEF_BITS, held=held,
                windows=windows, lanes=lanes, act_bits=ab, seed=exp.workload.seed)
    return args, spans


def simulate_attention_block(exp: DecoderExperiment, gen, prompt: list[int], base, sim: str,
                             *, build_root=None, say=lambda msg: None) -> dict:
    """The attention half of the ``kv_go`` generation on ``AttentionBlock``'s RTL in one
    simulation: the prompt window, then each decode step's new row, the KV store carrying
    over; inputs the tokens' embedding codes, weights and constants the generator's own
    (``gen.dq``; the Q/K/V/O cell images with ``gen.matmul``'s ADC windows). Every output
    code is checked against the golden first residual (``base.x1``), each window's cycles
    against ``attention_block_cycles``.

    The block keeps ``exp.layer.kv_cache_rows`` positions' K/V on chip and the rest in the
    bench's DRAM (``AttentionBlock(kv_cache_rows=...)``; every position on chip when it is at
    least the run's positions): each window's KV DRAM words written and read are checked
    against ``_kv_traffic``'s rows of the ``kv_go`` step (``kv_dram_match_priced``). The
    window's cycles include the block's ``kv_spill``/``kv_fetch`` phases (``kv_dram_cycles``,
    under a DRAM answering the cycle after a request); the generation's timeline prices the
    same phases (``dense_cycles``), each lasting at least its transfer on the DRAM channel
    model."""
    from moepim.models.generation import step_work
    from moepim.models.pim import bank_file_words, bank_image

    from .amaranth_macro import add_bank_model
    from .block_run import run_bench
    from .build import scratch_dir

    t0 = time.monotonic()
    build_root = Path(build_root) if build_root is not None else None
    wl, shape = exp.workload, exp.tile.spec()
    n_positions = wl.n_prompt + wl.n_generate
    kv_rows = exp.layer.kv_cache_rows if exp.layer.kv_cache_rows < n_positions else None
    block, key = _attention_block(exp, kv_cache_rows=kv_rows)
    silence_unused(block)           # a cached build does not elaborate it
    x_rows = gen.embed(list(prompt) + list(base.tokens[:wl.n_generate - 1]))
    want = np.asarray(base.x1)
    assert len(x_rows) == len(want) == wl.n_prompt + wl.n_generate - 1
    args, spans = _attention_block_args(exp, gen, x_rows)
    if kv_rows is not None:
        args["kv_dram"] = True
    calibrated = shape.adc_range == "calibrated"
    mm = gen.matmul if getattr(gen.matmul, "shape", None) is not None and \
        gen.matmul.shape.arithmetic == shape.arithmetic else None
    images = {}
    for name, unit in block.projections.items():
        w = gen.dq.tensors[f"attn.{name}.weight"]
        images[name] = bank_image([w], 1, unit.n_in, unit.n_out, shape,
                                  [gen.matmul.shift_for(w)] if calibrated else None, mm)

    def setup(s):
        for name, unit in block.projections.items():
            add_bank_model(s, unit.bank, images[name])

    say(f"attention block ({sim}): {len(spans)} windows ({wl.n_prompt}-row prompt, "
        f"{len(spans) - 1} decode rows)")
    info: dict = {}
    with scratch_dir(build_root) as tmp:
        plusargs = []
        for k, name in enumerate(block.projections):
            path = Path(tmp) / f"bank{ATTENTION_BANK_BASE + k}.bin"
            bank_file_words(images[name], shape, 1).tofile(path)
            plusargs.append(f"+MOEPIM_BANK{ATTENTION_BANK_BASE + k}={path}")
        got = run_bench(block, top="attention_block", bench="attention_block_windows",
                        sim=sim, args=args, setup=setup, plusargs=plusargs,
                        preset={"bank_base": ATTENTION_BANK_BASE}, build_root=build_root,
                        key_params=None if sim == "amaranth" else key, info=info,
                        progress=say)
    shape_t = dict(d_model=block.d_model, n_heads=block.n_heads, n_kv_heads=block.n_kv_heads,
                   head_dim=block.head_dim, lanes=block.lanes, act_bits=block.act_bits,
                   center=block.center, mvm=shape.mvm_latency, rope=block.rope,
                   n_attention_units=block.n_attention_units, kv_cache_rows=kv_rows)
    mismatches, windows = 0, []
    words = block.kv_dram_words_per_row
    for step, ((p0, n), res) in enumerate(zip(spans, got)):
        out = np.asarray(res["outputs"], dtype=np.int64).reshape(n, -1)
        mismatches += int(np.count_nonzero(out != want[p0:p0 + n]))
        phases = T.attention_block_phases(n, p0, **shape_t)
        priced = _kv_traffic(exp, step_work("kv_go", step, wl.n_prompt), "kv_go")
        kv = {"written": len(res.get("kv_writes", ())), "read": len(res.get("kv_reads", ()))}
        windows.append({"first_position": p0, "rows": n, "cycles": res["end"] - res["first_in"],
                        "formula_cycles": sum(phases.values()),
                        "kv_dram_cycles": phases["kv_spill"] + phases["kv_fetch"],
                        "kv_dram_words_written": kv["written"],
                        "kv_dram_words_read": kv["read"],
                        "kv_dram_rows_priced": {"written": priced["write_rows"],
                                                "read": priced["read_rows"]},
                        "kv_dram_match_priced": kv["written"] == priced["write_rows"] * words
                        and kv["read"] == priced["read_rows"] * words})
    ok = mismatches == 0 and len(got) == len(spans)
    cycles_ok = all(w["cycles"] == w["formula_cycles"] for w in windows)
    kv_ok = all(w["kv_dram_match_priced"] for w in windows)
    say(f"attention block ({sim}): {'bit-exact' if ok else f'{mismatches} MISMATCHES'}, "
        f"cycles {'equal to' if cycles_ok else 'DIFFER from'} the formula "
        f"({time.monotonic() - t0:.1f} s); KV DRAM words "
        f"{'equal to' if kv_ok else 'DIFFER from'} the priced rows "
        f"(kv_cache_rows={kv_rows})")
    return {"sim": sim, "golden_match": ok, "n_mismatches": mismatches,
            "cycles_match_formula": cycles_ok, "windows": windows,
            "kv_cache_rows": kv_rows, "kv_dram_match_priced": kv_ok,
            "wall_s": {"build": info.get("build_s", 0.0), "build_cached": info.get("cached"),
                       "simulation": info.get("sim_s", 0.0),
                       "total": time.monotonic() - t0}}


def _moe_golden(exp: DecoderExperiment, gen, base) -> Golden:
    cfg, wl = exp.model, exp.workload
    weights = {k: v for k, v in init_decoder_weights(cfg, wl.seed).items()
               if not k.startswith(("attn", "moe_norm"))}
    work = workload_of_inputs(cfg, seed=wl.seed, n_prompt=wl.n_prompt, x_q=base.moe_x,
                              quant=gen.dq.moe, weights=weights, mask=base.mask,
                              matmul=gen.matmul)
    key = hashlib.sha256(repr(("decoder", resolved_dict(exp.model), wl.seed, wl.n_prompt,
                               wl.n_generate, exp.tile.spec().arithmetic)).encode()).hexdigest()
    return _DecoderGolden(dataclasses.replace(work, weights={}), gen.matmul,
                          MemoMatmul(int_matmul), key, "computed")


# ---------------------------------------------------------------------------------------------
# the dense part of a step: cycles and events from the unit formulas

@dataclasses.dataclass(frozen=True)
class _Shapes:
    d: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    lanes: int
    units: int
    act_bits: int
    mvm: int
    center: bool
    rope: bool

    @property
    def blocks(self) -> int:
        return self.d // self.lanes


def _shapes(exp: DecoderExperiment) -> _Shapes:
    m = exp.model
    return _Shapes(d=m.d_model, heads=m.n_heads, kv_heads=m.kv_heads, head_dim=m.head_size,
                   vocab=m.vocab_size, lanes=exp.layer.lanes, units=exp.layer.n_attention_units,
                   act_bits=m.quant.act_bits, mvm=exp.tile.spec().mvm_latency,
                   center=m.norm == "layernorm", rope=m.rope_theta is not None)


def _matrices(exp: DecoderExperiment) -> dict:
    """``(n_in, n_out)`` of every dense crossbar matrix; the embedding's is one row tile."""
    m, spec = exp.model, exp.tile.spec()
    hd = m.head_size
    return {"q": (m.d_model, m.n_heads * hd), "k": (m.d_model, m.kv_heads * hd),
            "v": (m.d_model, m.kv_heads * hd), "o": (m.n_heads * hd, m.d_model),
            "embedding": (spec.n_rows, m.d_model), "lm_head": (m.d_model, m.vocab_size)}


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _query_positions(work) -> list[int]:
    """Positions of the rows a step sends through attention (all, or the new one)."""
    L = work.n_tokens
    return list(range(L - work.attn_rows, L))


def dense_cycles(sh: _Shapes, mats: dict, work, *, embedding: bool, lm_head: bool,
                 kv: dict | None = None) -> dict:
    """Per phase, the cycles of a step's dense units (everything but the MoE layer and the
    DRAM), from the unit formulas of ``moepim.spec.timing`` in the controller's order
    (module docstring). ``work``: the step's :class:`moepim.models.generation.StepWork`.

    The attention half (``attn_norm`` .. the first residual) is ``AttentionBlock``'s
    (``moepim.hw.attention_block``, RTL): each phase its units' formula, plus
    ``ATTENTION_BLOCK_PHASE_OVERHEAD`` for a buffer-fed phase; for a window whose query and
    K/V rows are the same (the prompt, ``none``, ``kv_go``) this is exactly
    ``moepim.spec.timing.attention_block_phases``, the block's tested formula; ``kv`` and
    ``go`` steps (different query and K/V rows) compose the same units the same way. The
    rest follows the same rule (a phase fed from a buffer starts one cycle after its
    predecessor ends). ``kv``: the step's K/V rows through DRAM (:func:`_kv_traffic`), the
    block's ``kv_spill`` (the new rows written) and ``kv_fetch`` (the earlier rows read
    back) phases at one word a cycle (``attention_block_phases``); the DRAM channel's own
    time bounds them in the step's timeline."""
    lanes, hd = sh.lanes, sh.head_dim
    over = T.ATTENTION_BLOCK_PHASE_OVERHEAD

    def proj(rows, name):
        n_in, n_out = mats[name]
        return T.projection_cycles(rows, sh.mvm, _ceil(n_in, lanes),
                                   _ceil(n_out, lanes)) if rows else 0

    def norm(rows):
        return T.norm_cycles(rows, sh.d, lanes, sh.act_bits, sh.center) if rows else 0

    def fed(cycles):
        return cycles + over if cycles else 0

    rounds = _ceil(sh.heads, sh.units)
    attention = rounds * sum(T.attention_job_cycles(t + 1, hd // lanes)
                             for t in _query_positions(work))
    rope = 0
    if sh.rope:
        rope = max(T.rope_cycles(work.q_rows * sh.heads, hd, lanes),
                   T.rope_cycles(work.kv_rows * sh.kv_heads, hd, lanes))
    kv = kv or {"read_rows": 0, "write_rows": 0}
    words = T.kv_dram_words_per_row(hd, lanes)
    return {
        "embedding": proj(work.embed_rows, "embedding") if embedding else 0,
        "attn_norm": fed(norm(work.attn_norm_rows)) if embedding else norm(work.attn_norm_rows),
        "qkv_projection": fed(max(proj(work.q_rows, "q"), proj(work.kv_rows, "k"))),
        "rope": fed(rope),
        "kv_spill": fed(kv["write_rows"] * words),
        "kv_fetch": (kv["read_rows"] * words + T.KV_DRAM_READ_LATENCY
                     if kv["read_rows"] else 0),
        "attention": fed(attention),
        "o_projection": fed(proj(work.o_rows, "o")),
        "residual": fed(T.residual_cycles(work.o_rows * sh.blocks)),
        "moe_norm": fed(norm(work.moe_rows)),
        "moe_residual": fed(T.residual_cycles(work.moe_rows * sh.blocks)),
        "final_norm": fed(norm(1)) if lm_head else 0,
        "lm_head": fed(proj(1, "lm_head") + T.argmax_latency()) if lm_head else 0,
    }


def moe_phase_cycles(window_cycles: int, n_rows: int, blocks: int) -> int:
    """The MoE layer's share of a decoder step: its routing, plan and timestamps
    (``route + jobs + experts`` of ``moepim.spec.timing.decoder_layer_phases``, as
    ``DecoderLayer`` composes it). A stand-alone MoE window (``window_cycles``: token
    beats, routing, plan, timestamps, output beats, hand-over; ``LayerTiming.window_cycles``)
    less its ``n_rows * blocks`` token beats (the MoE norm's phase streams them), its output
    beats (the second residual's phase reads them) and its hand-over."""
    return window_cycles - 2 * n_rows * blocks - T.WINDOW_OVERHEAD


def _kv_traffic(exp: DecoderExperiment, work, mode: str) -> dict:
    """K/V rows of the step through DRAM: the earlier steps' rows read back once, the new
    rows written (rows of tokens at or beyond ``kv_cache_rows`` are in DRAM; earlier ones
    stay in the on-chip KV SRAM)."""
    if mode not in ("kv", "kv_go"):
        return {"read_rows": 0, "write_rows": 0}
    C, L = exp.layer.kv_cache_rows, work.n_tokens
    read = range(L - 1 - work.kv_read_rows, L - 1)      # the earlier steps' rows, once
    new = range(L - work.kv_write_rows, L)
    return {"read_rows": sum(1 for t in read if t >= C),
            "write_rows": sum(1 for t in new if t >= C)}


def dense_crossbars(exp: DecoderExperiment) -> dict:
    """Per dense matrix the experiment includes, ``(crossbars, peripheral sets)``: one set
    per crossbar, but the embedding's row tiles share their column's set (a one-hot input
    drives one row tile at a time, as the experts of a group share theirs)."""
    shape = exp.tile.spec()
    out = {}
    for name, (n_in, n_out) in _matrices(exp).items():
        if name == "embedding":
            if exp.workload.embedding:
                ct = _ceil(n_out, shape.n_outputs)
                out[name] = (_ceil(exp.model.vocab_size, shape.n_rows) * ct, ct)
        elif name != "lm_head" or exp.workload.lm_head:
            n = math.prod(tiles_of(n_in, n_out, shape))
            out[name] = (n, n)
    return out


def _matrix_energy(exp, name, n_in, n_out, rows, drives, *, requant: bool) -> dict:
    """Crossbar events and the partial-sum/requantisation arithmetic of ``rows`` MVMs of one
    dense matrix (``drives``: DAC pulses)."""
    tech, tile = exp.tech, exp.tile
    shape = tile.spec()
    rt, ct = tiles_of(n_in, n_out, shape) if name != "embedding" else (1, _ceil(n_out,
                                                                                 shape.n_outputs))
    mvms = rows * rt * ct
    planes = mvms * tile.input_bits
    adc, leak_mw = adc_split(tech, tile.adc_bits)
    crossbar = (planes * shape.cells_per_crossbar * tech.cell_read_energy_fj.value * 1e-3
                + planes * shape.n_lines * (adc + tech.shift_add_energy_pj.value)
                + drives * tech.dac_drive_energy_pj.value)
    digital = rows * ((rt - 1) * n_out * tech.int_add_energy_pj.value
                      + (n_out * tech.int_mult_energy_pj.value if requant else 0))
    leakage = 0.0
    if exp.layer.power_gating == "idle":
        leakage = mvms * shape.mvm_latency * tech.clock_ns.value * tile.n_adcs * leak_mw
    return {"crossbar": crossbar, "digital": digital, "leakage": leakage, "tile_mvms": mvms}


def _digital_energy(exp, sh: _Shapes, work, lm_head: bool) -> dict:
    """The digital units' operations in pJ (Horowitz's per-operation figures, as the tech
    file's sources say which operation each prices)."""
    t = exp.tech
    m8, a8 = t.int8_mult_energy_pj.value, t.int8_add_energy_pj.value
    m32, a32 = t.int_mult_energy_pj.value, t.int_add_energy_pj.value
    sram = t.sram_energy_pj_per_bit.value
    d, hd, ab = sh.d, sh.head_dim, sh.act_bits
    from moepim.spec.numerics import NORM_FRAC_BITS, NORM_RECIP_BITS

    serial = (ab + 1 + NORM_FRAC_BITS) + (NORM_RECIP_BITS + 1)
    norm_row = d * (2 * m8 + 2 * m32 + 3 * a32 + (a8 if sh.center else 0)) + serial * a32
    norm_rows = work.attn_norm_rows + work.moe_rows + (1 if lm_head else 0)
    residual = (work.o_rows + work.moe_rows) * d * (2 * m32 + a8)
    rope = 0.0
    if sh.rope:
        rope = (work.q_rows * sh.heads + work.kv_rows * sh.kv_heads) * hd * (4 * m8 + a32)
    lim = (1 << (ab - 1)) - 1
    from moepim.spec.checks import signed_bits

    entry_bits = max(signed_bits(-lim * lim * hd, lim * lim * hd), SCORE_BITS + 1) + 1
    keys = sum(t_ + 1 for t_ in _query_positions(work)) * sh.heads      # (head, key) pairs
    jobs = work.attn_rows * sh.heads
    attention = (keys * hd * (m8 + a32)                      # scores
                 + keys * (a32 + (SCORE_BITS + 1) * sram)    # exp table read, the sum
                 + jobs * RECIP_BITS * a32                   # the reciprocal
                 + keys * (2 * m32 + a32)                    # the probabilities
                 + keys * hd * (2 * m8 + a32)                # the weighted sum
                 + keys * 6 * entry_bits * sram              # score buffer: 3 writes, 3 reads
                 + jobs * hd * a32)                          # the output rounding
    row_bits = 2 * sh.kv_heads * hd * ab
    # the step's K/V rows (projected, or read back from DRAM) written once, read per key
    kv_sram = ((work.kv_rows + work.kv_read_rows) * row_bits + keys * 2 * hd * ab) * sram
    argmax = sh.vocab * a32 if lm_head else 0.0
    return {"norms": norm_rows * norm_row, "residual": residual, "rope": rope,
            "attention": attention, "kv_sram": kv_sram, "argmax": argmax}


MOE_EXPERT_KEYS = ("crossbar", "dac", "adc", "shift_add", "digital_arithmetic", "wakeup",
                   "digital_switching")


def _host_bytes(exp: DecoderExperiment, rows: int) -> int:
    """Bytes of ``rows`` tokens between the host and the accelerator: token ids with the
    embedding on chip, else their ``d_model`` input codes."""
    m = exp.model
    if exp.workload.embedding:
        return rows * _ceil(max(1, (m.vocab_size - 1).bit_length()), 8)
    return rows * m.d_model * _ceil(m.quant.act_bits, 8)


def _step_timeline(exp: DecoderExperiment, channel: DramChannel, t0: float, cycles: dict,
                   work, kv: dict, go: dict, *, last: bool) -> dict:
    """Lay one step's phases out in time from ``t0`` (ns), its DRAM transfers on the mode's
    one ``channel`` (``moepim.models.dram``: first come, first served, so a transfer waits
    for every one queued before it, whatever its kind):

    * the step's new tokens from the host (``tokens_in``) before the embedding;
    * the new K/V rows (``kv_write``) when the ``kv_spill`` phase starts (after RoPE): the
      phase ends no earlier than their transfer;
    * the earlier K/V rows (``kv_read``) when the ``kv_fetch`` phase starts (before
      attention, as ``AttentionBlock`` does): the phase ends no earlier than their arrival;
    * the GO-cache rows the router reads back (``go_cache_read``) and the rows it spills
      (``go_cache_spill``, posted) when the MoE phase starts: the MoE layer starts on them;
    * the generated token (or the output row) to the host (``token_out``, posted) at the end.

    A posted write does not hold the step up but occupies the channel, so later transfers
    queue behind it; the last step also waits for the channel to drain. Returns the step's
    start and end, its stall (time beyond its phases' cycles) and its requests."""
    clock, m = exp.tech.clock_ns.value, exp.model
    row_bytes = kv_row_bytes(m)
    reqs = []

    def submit(kind, n_bytes, at):
        if not n_bytes:
            return None
        r = channel.submit(kind, n_bytes, at)
        reqs.append(r)
        return r

    t = t0
    if work.step == 0 or not exp.workload.embedding:
        r = submit("tokens_in", _host_bytes(exp, work.embed_rows or 1), t)
        t = r.done_ns if r else t
    for phase in PHASES:
        n = cycles.get(phase, 0)
        if phase == "kv_spill":
            r = submit("kv_write", kv["write_rows"] * row_bytes, t)
            t = max(t + n * clock, r.done_ns - channel.latency_ns if r else t)
            continue
        if phase == "kv_fetch":
            r = submit("kv_read", kv["read_rows"] * row_bytes, t)
            t = max(t + n * clock, r.done_ns if r else t)
            continue
        if phase == "moe":
            r = submit("go_cache_read", go["read_rows"] * go["row_bytes"], t)
            submit("go_cache_spill", go["write_rows"] * go["row_bytes"], t)
            t = r.done_ns if r else t
        t += n * clock
    submit("token_out", _host_bytes(exp, 1), t)
    if last:
        t = max([t] + [r.done_ns for r in channel.requests])
    by_kind: dict = {}
    for r in reqs:
        k = by_kind.setdefault(r.kind, {"bytes": 0, "queue_ns": 0.0})
        k["bytes"] += r.n_bytes
        k["queue_ns"] += r.queue_ns
    return {"start_ns": t0, "end_ns": t, "compute_ns": sum(cycles.values()) * clock,
            "dram": by_kind}


def _price_step(exp: DecoderExperiment, sh: _Shapes, mats: dict, mode: str, work, bits: dict,
                moe: dict, go: dict, channel: DramChannel, t0: float, *, last: bool) -> dict:
    """One step of one mode from ``t0`` (ns) on the mode's DRAM ``channel``: its phases'
    cycles, time (compute and DRAM stalls, :func:`_step_timeline`) and energy with its
    breakdown (module docstring). ``go``: the GO-cache rows the step's MoE window reads back
    and spills, and the row's bytes."""
    wl, tech, dram = exp.workload, exp.tech, exp.dram
    shape = exp.tile.spec()
    L = work.n_tokens
    kv = _kv_traffic(exp, work, mode)
    cycles = dense_cycles(sh, mats, work, embedding=wl.embedding, lm_head=wl.lm_head, kv=kv)
    cycles["moe"] = moe_phase_cycles(moe["cycles"], work.moe_rows, sh.blocks)
    tl = _step_timeline(exp, channel, t0, cycles, work, kv, go, last=last)
    time_ns = tl["end_ns"] - t0
    compute_ns = tl["compute_ns"]
    stall_ns = time_ns - compute_ns
    bw = dram.bandwidth_gbps.value
    moved = {k: v["bytes"] for k, v in tl["dram"].items()}
    kv_bytes = moved.get("kv_read", 0) + moved.get("kv_write", 0)
    go_bytes = moved.get("go_cache_read", 0) + moved.get("go_cache_spill", 0)
    host_bytes = moved.get("tokens_in", 0) + moved.get("token_out", 0)
    busy_ns = sum(moved.values()) / bw
    # crossbar matrices: DAC pulses from the golden inputs' '1' bits
    q_tok = range(L - work.q_rows, L)
    kv_tok = range(L - work.kv_rows, L)
    col_tiles = {k: tiles_of(*mats[k], shape)[1] for k in mats}
    col_tiles["embedding"] = _ceil(mats["embedding"][1], shape.n_outputs)
    rows = {"q": (work.q_rows, sum(bits["h"][t] for t in q_tok)),
            "k": (work.kv_rows, sum(bits["h"][t] for t in kv_tok)),
            "v": (work.kv_rows, sum(bits["h"][t] for t in kv_tok)),
            "o": (work.o_rows, sum(bits["a"][t] for t in q_tok))}
    if wl.embedding:
        rows["embedding"] = (work.embed_rows, work.embed_rows)     # one '1' bit: one-hot
    if wl.lm_head:
        rows["lm_head"] = (1, bits["f"][work.step])
    mat = {k: _matrix_energy(exp, k, *mats[k], r, ones * col_tiles[k],
                             requant=k not in ("embedding", "lm_head"))
           for k, (r, ones) in rows.items()}
    dig = _digital_energy(exp, sh, work, wl.lm_head)
    leak = sum(x["leakage"] for x in mat.values())
    if exp.layer.power_gating == "none":
        adc_leak = adc_split(tech, exp.tile.adc_bits)[1]
        sets = sum(n for _, n in dense_crossbars(exp).values())
        leak = sets * exp.tile.n_adcs * adc_leak * time_ns
    mb = moe["breakdown"]
    active = dram.active_power_w.value / bw * 1e3           # pJ per byte
    breakdown = {
        "attention": dig["attention"],
        "projections": sum(mat[k]["crossbar"] + mat[k]["digital"] for k in ("q", "k", "v", "o")),
        "embedding": (mat["embedding"]["crossbar"] + mat["embedding"]["digital"]
                      if "embedding" in mat else 0.0),
        "lm_head": (mat["lm_head"]["crossbar"] + mat["lm_head"]["digital"] + dig["argmax"]
                    if "lm_head" in mat else 0.0),
        "experts": sum(mb.get(k, 0.0) for k in MOE_EXPERT_KEYS),
        "router": mb.get("router", 0.0),
        "norms_adds": dig["norms"] + dig["residual"] + dig["rope"],
        "buffers": dig["kv_sram"] + mb.get("buffers", 0.0) + mb.get("go_cache", 0.0),
        "kv_dram": active * kv_bytes,
        "go_dram": active * go_bytes,
        "token_dram": active * host_bytes,
        "dram_idle": dram.idle_power_w.value * max(0.0, time_ns - busy_ns) * 1e3,
        "leakage": leak + mb.get("leakage", 0.0),
        "static": tech.digital_static_power_mw.value * time_ns,
    }
    return {"step": work.step, "n_tokens": L, "cycles": sum(cycles.values()),
            "start_ns": t0, "time_ns": time_ns, "compute_ns": compute_ns, "stall_ns": stall_ns,
            "energy_pj": sum(breakdown.values()), "breakdown_pj": breakdown,
            "phase_cycles": cycles, "kv_dram_rows": kv,
            "go_dram_rows": {"read_rows": go["read_rows"], "write_rows": go["write_rows"]},
            "dram": tl["dram"],
            "dense_tile_mvms": sum(x["tile_mvms"] for x in mat.values()),
            "moe_source": moe["source"]}


def _totals(steps: list[dict]) -> dict:
    keys = steps[0]["breakdown_pj"] if steps else {}
    return {"steps": len(steps), "cycles": sum(s["cycles"] for s in steps),
            "time_ns": sum(s["time_ns"] for s in steps),
            "compute_ns": sum(s["compute_ns"] for s in steps),
            "stall_ns": sum(s["stall_ns"] for s in steps),
            "energy_pj": sum(s["energy_pj"] for s in steps),
            "breakdown_pj": {k: sum(s["breakdown_pj"][k] for s in steps) for k in keys}}


def _moe_steps(moe_report: dict, n_generate: int) -> dict:
    """The MoE layer's cycles and energy per step: the prompt window, then per decode step
    the GO-cached window (the RTL's) and the window without the cache (the formula's)."""
    comp = moe_report["go_cache_comparison"]
    windows = moe_report["windows"]
    clean = lambda e: {k: v for k, v in e["breakdown"].items() if k != "dram"}  # noqa: E731
    if comp is None:          # a single generated token: the prompt window alone
        e = moe_report["energy_pj"]
        prompt = {"cycles": windows[0]["cycles"], "breakdown": {
            k: v for k, v in e["breakdown"].items() if k != "dram"},
            "source": moe_report["sim"]}
        return {"prompt": prompt, "cached": [], "recomputed": []}
    src_c = f"{moe_report['sim']} (RTL)" if moe_report["values_simulated"] else \
        "timing level (moepim.sim.timing_run)"
    prompt = {"cycles": windows[0]["cycles"], "breakdown": clean(comp["prompt"]),
              "source": src_c}
    cached = [{"cycles": e["cycles"], "breakdown": clean(e), "source": src_c}
              for e in comp["with_go_cache"]["steps"]]
    recomputed = [{"cycles": e["cycles"], "breakdown": clean(e),
                   "source": "the layer's cycle formula (moepim.spec.timing), checked against "
                             "the RTL in tests/test_moe_layer.py"}
                  for e in comp["without_cache"]["steps"]]
    assert len(cached) == len(recomputed) == n_generate - 1
    return {"prompt": prompt, "cached": cached, "recomputed": recomputed}


def _ratios(modes: dict) -> dict:
    out = {}
    for a, b in RATIO_PAIRS:
        if a in modes and b in modes:
            A, B = modes[a], modes[b]
            r = lambda x, y: x / y if y else None    # noqa: E731
            out[f"{a}_vs_{b}"] = {
                "time": r(A["decode"]["time_ns"], B["decode"]["time_ns"]),
                "energy": r(A["decode"]["energy_pj"], B["decode"]["energy_pj"]),
                "time_with_prompt": r(A["with_prompt"]["time_ns"], B["with_prompt"]["time_ns"]),
                "energy_with_prompt": r(A["with_prompt"]["energy_pj"],
                                        B["with_prompt"]["energy_pj"])}
    return out


# ---------------------------------------------------------------------------------------------
# area: the dense crossbars and their peripherals from the tech file, the digital units from
# Yosys, the MoE layer's from its run

def decoder_unit_specs(exp: DecoderExperiment) -> list:
    """``(name, class, constructor arguments, count)`` of the decoder's digital designs at
    the experiment's size: the attention half as one block (``AttentionBlock``: its norm,
    the Q/K/V/O projections' digital logic, RoPE, the attention units, the first residual,
    its buffers and KV store), a norm unit for the MoE norm and the final norm, a residual
    unit for the second residual add, the embedding's and the LM head's projection units
    (their crossbars a black box) and the argmax unit."""
    from moepim.hw.argmax import ArgmaxUnit
    from moepim.hw.attention_block import AttentionBlock
    from moepim.hw.norm import NormUnit
    from moepim.hw.projection import ProjectionUnit
    from moepim.hw.residual import ResidualUnit

    m, lanes = exp.model, exp.layer.lanes
    ab, mb = m.quant.act_bits, m.quant.multiplier_bits
    spec = exp.tile.spec()
    units = [("attention_block", AttentionBlock, attention_block_kwargs(exp), 1),
             ("norm_unit", NormUnit, dict(d_model=m.d_model, lanes=lanes, act_bits=ab,
                                          center=m.norm == "layernorm", multiplier_bits=mb), 1),
             ("residual_unit", ResidualUnit, dict(lanes=lanes, a_bits=ab, b_bits=ab,
                                                  act_bits=ab, multiplier_bits=mb), 1)]
    mats = _matrices(exp)
    for name in ("embedding", "lm_head"):
        if getattr(exp.workload, name):
            n_in, n_out = mats[name]
            units.append((f"projection_{name}", ProjectionUnit,
                          dict(tile=spec, n_in=n_in, n_out=n_out, lanes=lanes,
                               multiplier_bits=mb, act_bits=ab, requant=False), 1))
    if exp.workload.lm_head:
        kw = units[-1][2]
        units.append(("argmax_unit", ArgmaxUnit,
                      dict(lanes=lanes, value_bits=ProjectionUnit.raw_bits(kw["tile"],
                                                                           kw["n_in"]),
                           max_items=m.vocab_size), 1))
    return units


def _unit_area(cls, kw: dict, top: str, tech, root) -> dict:
    """Yosys's area of one decoder unit, kept by its parameters (``<root>/cache/unit-area``:
    the SHA-256 of the unit, its arguments, the RTL's source and the tech figures applied):
    a repeated run neither exports nor synthesises it again (Yosys's own cache keys on the
    exported Verilog, which takes seconds to write at full size)."""
    import json

    import moepim.hw

    from .build import source_digest
    from .digital import component_area

    plain = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
             for k, v in kw.items()}
    key = hashlib.sha256(repr((top, cls.__name__, sorted(plain.items()),
                               source_digest(moepim.hw), tech.transistor_area_um2.value,
                               tech.sram_area_um2_per_bit.value)).encode()).hexdigest()[:24]
    path = Path(root) / "cache" / "unit-area" / f"{key}.json"
    fields = ("area_mm2", "transistors", "memory_bits")
    try:
        hit = json.loads(path.read_text())
        if all(isinstance(hit.get(f), (int, float)) for f in fields):
            return hit
    except (OSError, ValueError):
        pass
    a = component_area(cls(**kw), top, tech, sim="model", build_root=root)
    out = {f: a[f] for f in fields}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(out))
        os.replace(tmp, path)
    except OSError:
        pass                  # a cache that cannot be written only costs time
    return out


def _area(exp: DecoderExperiment, moe_report: dict, synthesize: bool, root, say) -> dict:
    tech, tile = exp.tech, exp.tile
    shape = tile.spec()
    dense = dense_crossbars(exp)
    n = sum(c for c, _ in dense.values())
    sets = sum(p for _, p in dense.values())
    um2 = {"dense_arrays": n * shape.cells_per_crossbar * tech.cell_area_um2.value,
           "dense_adcs": sets * tile.n_adcs * tech.adc_area_um2[tile.adc_bits].value,
           "dense_dacs": sets * tile.n_rows * tech.dac_area_um2.value,
           "dense_shift_adds": sets * tile.n_adcs * tech.shift_add_area_um2.value}
    crossbars = {k: {"crossbars": c, "peripheral_sets": p} for k, (c, p) in dense.items()}
    breakdown = {k: v * 1e-6 for k, v in um2.items()}
    units, synthesized = {}, {}
    if synthesize:
        for name, cls, kw, count in decoder_unit_specs(exp):
            # same-shape projection units are one design (one Yosys run)
            top = (f"projection_{kw['n_in']}x{kw['n_out']}{'' if kw['requant'] else '_raw'}"
                   if name.startswith("projection_") else name)
            if top not in synthesized:
                say(f"digital logic area: yosys on the {top} (cached after the first run)")
                synthesized[top] = _unit_area(cls, kw, top, tech, root)
            a = synthesized[top]
            units[name] = {"count": count, "design": top, "area_mm2_each": a["area_mm2"],
                           "transistors_each": a["transistors"],
                           "memory_bits_each": a["memory_bits"]}
        breakdown["decoder_digital_units"] = sum(u["count"] * u["area_mm2_each"]
                                                 for u in units.values())
    breakdown["moe_layer"] = moe_report["area_mm2"]["total"]
    not_included = list(moe_report["area_mm2"].get("not_included", []))
    if not synthesize:
        not_included.append("the decoder's digital units: synthesis skipped (--no-synth)")
    return {"total": sum(breakdown.values()), "breakdown": breakdown,
            "dense_crossbars": crossbars, "digital_units": units,
            "method": "dense crossbars and their peripheral sets (one per crossbar; the "
                      "embedding's row tiles share one per column) from the tech file; the decoder's digital units from Yosys on their RTL "
                      "(crossbar macros black boxes); the MoE layer's from its run",
            "not_included": not_included}


# ---------------------------------------------------------------------------------------------
# the paper block

def _paper_block(exp: DecoderExperiment, modes: dict, ratios: dict) -> list[dict]:
    """Each reference figure of the experiment beside ours, with what explains the
    difference (a sentence per component, from our breakdown and the authors' accounting,
    ``reference/paper_moe_pim.md`` sections 4.4-4.5)."""
    rows = []
    for ref in exp.reference:
        pair, _, kind = ref.metric.rpartition(".")
        ours = ratios.get(pair, {}).get(kind)
        rows.append({"metric": ref.metric, "ours": ours, "reference": ref.value,
                     "ours_over_reference": ours / ref.value if ours else None,
                     "source": ref.source, "scope": ref.scope})
    return rows


def _shares(total: dict) -> dict:
    e = total["energy_pj"] or 1.0
    return {k: v / e for k, v in total["breakdown_pj"].items()}


def _explanations(modes: dict, ratios: dict, kv_read_ns: float | None) -> list[str]:
    """A sentence per component on why our ratios differ from the authors' (their
    accounting and re-runs: reference/paper_moe_pim.md sections 4.4-4.5), from our numbers."""
    out = []
    pct = lambda x: f"{100 * x:.1f} %"          # noqa: E731
    if "kv_go" in modes:
        kg = modes["kv_go"]["decode"]
        sh = _shares(kg)
        if kv_read_ns is not None and kg["time_ns"]:
            bound = (f"; none / kv_go could not exceed "
                     f"{modes['none']['decode']['time_ns'] / kv_read_ns:.2f}x even if the rest "
                     "of a KV+GO step were free (the authors' bound: 5.3x)"
                     if "none" in modes else "")
            out.append(
                f"KV-cache reads: {pct(kv_read_ns / kg['time_ns'])} of our KV+GO decode "
                "time (the authors': 78.5 %; both read 2 L d bytes of 8-bit K and V per step "
                f"at the same 5.332 GB/s){bound}. Our other phases are shorter than theirs "
                "(a 256x256 MVM takes the tile's mvm_latency cycles at 1 ns, theirs 130 ns), "
                "so the DRAM bound weighs more in ours and the time ratio is lower.")
        out.append(
            f"Crossbar MVMs: projections {pct(sh.get('projections', 0))}, experts "
            f"{pct(sh.get('experts', 0))}, router {pct(sh.get('router', 0))}, LM head "
            f"{pct(sh.get('lm_head', 0))}, embedding {pct(sh.get('embedding', 0))} of our "
            "KV+GO decode energy (the authors: 12.5 nJ per MVM whatever its inputs, 63.6 % "
            "of their KV+GO energy, the LM head 2,000 of a step's 3,440 MVMs); ours are priced "
            "per bit plane, ADC conversion and DAC pulse from the tech file, and the "
            "no-cache steps, made of MVMs, weigh accordingly.")
        queued = {}
        for st in modes["kv_go"]["steps"][1:]:
            for kind, v in st["dram"].items():
                queued[kind] = queued.get(kind, 0.0) + v["queue_ns"]
        if any(queued.values()):
            waits = ", ".join(f"{kind} {ns * 1e-3:.2f} us" for kind, ns in queued.items() if ns)
            out.append(
                "DRAM contention: KV, GO-cache and token transfers share one channel, first "
                f"come first served; over the KV+GO decode steps requests queued ({waits}) "
                "behind transfers submitted before them. The authors' simulator adds each "
                "transfer's time without a shared queue.")
        out.append(
            f"DRAM: KV transfers {pct(sh.get('kv_dram', 0))} and idle power "
            f"{pct(sh.get('dram_idle', 0))} of our KV+GO decode energy; the authors charge "
            "DRAM idle power only when the GO cache is on (13.5 % of their KV+GO energy, "
            "none in their no-cache run) and never charge GO-cache traffic; we charge idle "
            "power in every mode and GO-cache read-backs on the channel.")
        out.append(
            f"Attention: {pct(sh.get('attention', 0))} of our KV+GO decode energy, from "
            "per-operation energies (Horowitz, ISSCC 2014) of the attention unit's integer "
            "datapath (the authors: L^2 x 0.557 d pJ fitted to a 3D-CiM table, about 280 nJ "
            "of their 473,555 nJ).")
    if "none" in modes:
        n = modes["none"]
        att = sum(st["phase_cycles"]["attention"] for st in n["steps"][1:])
        cyc = max(1, n["decode"]["cycles"])
        out.append(
            f"No cache: attention is {pct(att / cyc)} of our no-cache decode cycles (the "
            "authors: 56.6 % of their no-cache time, 0.5 L^2 (1.064e-4 d + 1.521e-5 d^2) ns "
            "per step on the critical path); ours is the RTL unit's cycle formula, 4 units "
            "working on different heads.")
    if "kv_vs_kv_go" in ratios:
        r = ratios["kv_vs_kv_go"]
        out.append(
            f"KV only vs KV+GO: ours {r['time']:.2f}x time, {r['energy']:.2f}x energy (the "
            "authors': 2.654x, 10.245x). With expert-choice routing and no GO cache every "
            "earlier token's MoE input is needed again, so our kv mode recomputes every row's "
            "Q, attention, O and MoE window and saves only the earlier K/V projections, then "
            "reads the cached K/V back; the authors charge every row's projections and "
            "experts but the attention of the new row only.")
    if "go_vs_kv_go" in ratios:
        r = ratios["go_vs_kv_go"]
        out.append(
            f"GO only vs KV+GO: ours {r['time']:.2f}x time, {r['energy']:.2f}x energy (the "
            "authors': 2.507x, 1.061x). Without a KV cache our go mode projects the earlier "
            "tokens' K and V again on crossbars instead of reading them from DRAM: faster "
            "than the 5.332 GB/s read, dearer in energy; the authors' GO-only run charges no "
            "K/V recomputation and no read, but the whole L x L attention of every step.")
    if "kv_go" in modes:
        sh = _shares(modes["kv_go"]["decode"])
        out.append(
            f"Norms, residual adds and RoPE: {pct(sh.get('norms_adds', 0))} of our KV+GO "
            "decode energy, our RTL units' cycles and per-operation energies (the authors: "
            "LayerNorm ceil(50 d/256) ns, Add 9.43 d/256 pJ from the same 3D-CiM table).")
    return out


# ---------------------------------------------------------------------------------------------
# the run

def run_decoder_experiment(exp: DecoderExperiment, *, sim: str, out_folder: Path,
                           progress=None, allow_large: bool = False, build_root=None,
                           synthesize: bool = True, plots: bool = True) -> dict:
    """Run, check and report a decoder experiment into ``out_folder`` (an empty staging
    folder; the MoE layer's own report in its ``moe`` folder); return the report."""
    say = progress or (lambda msg: None)
    t0 = time.monotonic()
    wl = exp.workload
    root = Path(build_root) if build_root else default_build_root()
    gen, prompt, results, base, disagree = _golden(exp, say, root)
    accuracy = decoder_accuracy(gen, prompt, base)
    t_golden = time.monotonic() - t0

    # the MoE layer on the decoder's MoE inputs
    moe_exp = exp.moe_experiment()
    plan = plan_layer(moe_exp, check_resources=sim != "model", allow_large=allow_large,
                      build_root=build_root, say=say, golden=_moe_golden(exp, gen, base),
                      compare_any_router=True)
    moe_dir = out_folder / "moe"
    moe_dir.mkdir()
    run = simulate_layer(plan, sim, out_folder=moe_dir, say=say,
                         progress_bars=progress is not None)
    checked = check_layer(plan, run)
    moe_report = summarize_layer(plan, run, checked, synthesize=synthesize, say=say,
                                 t0=time.monotonic())
    write_report(moe_dir, moe_report, moe_exp, moe_headline(moe_report))
    moe = _moe_steps(moe_report, wl.n_generate)

    # the attention half of the kv_go generation on its RTL
    attention = None
    if sim != "model":
        attention = simulate_attention_block(exp, gen, prompt, base, sim,
                                             build_root=plan.root, say=say)

    # every mode, step by step
    sh, mats = _shapes(exp), _matrices(exp)
    ab = exp.model.quant.act_bits
    bits = {"h": bit_ones(base.attn_in, ab).tolist(), "a": bit_ones(base.attn_out, ab).tolist(),
            "f": [int(bit_ones(gen.final_hidden(r)[None], ab)[0]) for r in base.rows]}
    go = plan.go
    no_go = {"read_rows": 0, "write_rows": 0, "row_bytes": 0}
    modes = {}
    for mode in wl.modes:
        r = results[mode]
        steps = []
        # one DRAM channel over the mode's whole run: KV, GO-cache and token transfers contend
        channel = DramChannel(bandwidth_gbps=exp.dram.bandwidth_gbps.value,
                              latency_ns=exp.dram.latency_ns.value)
        t = 0.0
        for work in r.work:
            if work.step == 0:
                m = moe["prompt"]
            else:
                m = moe["cached" if work.moe_cached else "recomputed"][work.step - 1]
            uses_go = go and (work.moe_cached or (work.step == 0 and mode in ("go", "kv_go")))
            g = {**go["dram_traffic"][work.step], "row_bytes": go["row_bytes"]} \
                if uses_go else no_go
            steps.append(_price_step(exp, sh, mats, mode, work, bits, m, g, channel, t,
                                     last=work is r.work[-1]))
            t += steps[-1]["time_ns"]
        modes[mode] = {"steps": steps, "decode": _totals(steps[1:]),
                       "with_prompt": _totals(steps), "tokens": r.tokens,
                       "dram": {k: v for k, v in channel.summary().items()}}
    ratios = _ratios(modes)
    kv_read_ns = None
    if "kv_go" in modes:
        bw = exp.dram.bandwidth_gbps.value
        kv_read_ns = sum(st["dram"].get("kv_read", {}).get("bytes", 0) / bw
                         for st in modes["kv_go"]["steps"][1:])
    values_ok = (not disagree and moe_report["golden_match"] is not False
                 and (attention is None or attention["golden_match"]))
    cycles_ok = moe_report["cycles_match_formula"]
    if attention is not None and cycles_ok is not None:
        cycles_ok = (cycles_ok and attention["cycles_match_formula"]
                     and attention["kv_dram_match_priced"])
    area = _area(exp, moe_report, synthesize, plan.root, say)
    head = modes.get("kv_go") or modes[wl.modes[-1]]
    report = {
        "report_version": REPORT_VERSION, "kind": "decoder", "sim": sim,
        "generation": {"prompt": prompt, "tokens": base.tokens,
                       "modes_agree": not disagree, "disagreeing_modes": disagree,
                       "decode_steps": wl.n_generate - 1,
                       "sequence_lengths": [w.n_tokens for w in base.work[1:]]},
        "golden_match": values_ok if moe_report["golden_match"] is not None else (
            None if not disagree else False),
        "cycles_match_formula": cycles_ok,
        "go_cache_exact": moe_report["go_cache_exact"],
        "accuracy": accuracy,
        "cache_comparison": {"modes": modes, "ratios": ratios},
        "paper": {"figures": _paper_block(exp, modes, ratios),
                  "explanations": _explanations(modes, ratios, kv_read_ns)},
        "time_ns": head["with_prompt"]["time_ns"],
        "energy_pj": head["with_prompt"]["energy_pj"],
        "area_mm2": area,
        "moe": {"sim": moe_report["sim"], "golden_match": moe_report["golden_match"],
                "n_mismatches": moe_report["n_mismatches"],
                "cycles_match_formula": moe_report["cycles_match_formula"],
                "go_cache_exact": moe_report["go_cache_exact"],
                "accuracy": moe_report["accuracy"], "report": "moe/report.json"},
        "attention_block": attention,
        "levels": {
            "values": "golden generation in every mode (moepim.models.generation) on the "
                      "tile's crossbar arithmetic; the attention half's first residual (x1) "
                      "of every token and the MoE layer's outputs and routes from their RTL "
                      f"under {sim}" if sim != "model" else
                      "golden generation in every mode; the attention half and the MoE "
                      "layer at the timing level (values not simulated)",
            "attention_half": (
                "AttentionBlock (moepim.hw.attention_block: norm, Q/K/V projections, RoPE, "
                "attention over the on-chip KV store, O projection, first residual) on its "
                f"RTL under {sim}: the prompt window and every KV+GO decode step's new row in "
                "one simulation, the KV store carrying over, every x1 code checked against "
                "the golden model and every window's cycles against "
                "moepim.spec.timing.attention_block_cycles; the other modes' steps by the "
                "same block's formula (dense_cycles)" if sim != "model" else
                "not simulated (--sim model): every step's attention half by AttentionBlock's "
                "cycle formula (moepim.spec.timing.attention_block_phases, tested against its "
                "RTL in tests/test_attention_block.py)"),
            "moe_layer": f"the prompt window and each GO-cached decode window: {sim}; the "
                         "windows without the GO cache: the layer's cycle formula",
            "dense_units": "the rest (embedding, MoE norm, second residual, final norm, LM "
                           "head, argmax): cycle formulas of the RTL units (moepim.spec.timing; "
                           "each unit tested bit- and cycle-exact on Amaranth, Verilator and "
                           "Icarus); from the attention norm to the second residual composed as "
                           "the DecoderLayer RTL top composes them (decoder_layer_phases, "
                           "tested against it in tests/test_decoder_layer.py); the embedding, "
                           "final norm, LM head and argmax around it in the documented order",
            "dram": "one DRAM channel per mode over the whole run (moepim.models.dram: first "
                    "come, first served, latency pipelined): the prompt's tokens in, each "
                    "step's new K/V rows written after RoPE (kv_spill) and the earlier rows "
                    "read back before attention (kv_fetch; each phase lasts at least its "
                    "transfer, as AttentionBlock's KV DRAM port does them), the "
                    "GO-cache rows read back and spilled when the MoE layer starts (it starts "
                    "on them), the generated token out; KV, GO-cache and token transfers "
                    "contend (per step: dram, the queueing per kind)"},
        "not_included": [
            "activation buffers between the decoder's units (their SRAM bits)",
            "the LM head's ADC arithmetic (its logits are exact integer products)"],
        "wall_s": {"golden": t_golden,
                   "attention_block": attention["wall_s"]["total"] if attention else 0.0,
                   "total": time.monotonic() - t0},
        "host": {"python": platform.python_version(), "machine": platform.machine()},
        "config": resolved_dict(exp),
    }
    report["plots"] = write_generation_plots(out_folder, report) if plots else []
    write_report(out_folder, report, exp, _headline(report))
    (out_folder / "steps.csv").write_text(steps_csv(report))
    return report


def summary_line(report: dict, out: Path) -> str:
    """The line ``moepim run`` prints for a decoder experiment."""
    g = report["generation"]
    status = ("bit-exact" if report["golden_match"] else
              "MoE values not simulated (timing level)" if report["golden_match"] is None
              else f"MISMATCH (modes disagreeing: {g['disagreeing_modes']}, MoE mismatches: "
                   f"{report['moe']['n_mismatches']}, attention block mismatches: "
                   f"{(report.get('attention_block') or {}).get('n_mismatches', 0)})")
    r = report["cache_comparison"]["ratios"].get("none_vs_kv_go")
    ratio = (f"; none/kv_go: {r['time']:.2f}x time, {r['energy']:.2f}x energy"
             if r and r["time"] else "")
    acc = report.get("accuracy") or {}
    vs_float = (f"; vs float: {100 * acc['relative_l2_error_y']:.1f} % output error, "
                f"{100 * acc['next_token_agreement']:.0f} % same next token"
                if acc else "")
    return (f"{report['sim']}: {len(g['tokens'])} tokens in "
            f"{len(report['cache_comparison']['modes'])} modes, {status}{ratio}{vs_float}; "
            f"report in "
            f"{out / 'report.json'} ({report['wall_s']['total']:.1f} s)")


def _headline(report: dict) -> dict:
    ratios = report["cache_comparison"]["ratios"].get("none_vs_kv_go", {})
    return {"sim": report["sim"], "time_ns": report["time_ns"],
            "energy_pj": report["energy_pj"], "area_mm2": report["area_mm2"]["total"],
            "none_vs_kv_go_time": ratios.get("time"), "none_vs_kv_go_energy":
            ratios.get("energy"), "golden_match": report["golden_match"],
            "modes_agree": report["generation"]["modes_agree"],
            "relative_l2_error_vs_float": report["accuracy"]["relative_l2_error_y"],
            "next_token_agreement": report["accuracy"]["next_token_agreement"],
            "wall_s": report["wall_s"]["total"]}


def steps_csv(report: dict) -> str:
    """One row per mode and step: cycles, time, energy and its breakdown."""
    buf = io.StringIO()
    modes = report["cache_comparison"]["modes"]
    keys = next(iter(modes.values()))["steps"][0]["breakdown_pj"].keys()
    w = csv.writer(buf)
    w.writerow(["mode", "step", "n_tokens", "cycles", "time_ns", "stall_ns", "energy_pj",
                *(f"{k}_pj" for k in keys)])
    for mode, m in modes.items():
        for s in m["steps"]:
            w.writerow([mode, s["step"], s["n_tokens"], s["cycles"], f"{s['time_ns']:.1f}",
                        f"{s['stall_ns']:.1f}", f"{s['energy_pj']:.1f}",
                        *(f"{s['breakdown_pj'][k]:.1f}" for k in keys)])
    return buf.getvalue()


def write_generation_plots(folder: Path, report: dict) -> list[str]:
    """Per-step latency and energy of every mode (``generation.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = report["cache_comparison"]["modes"]
    fig, (ax_t, ax_e) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, m in modes.items():
        steps = [s["step"] for s in m["steps"]]
        ax_t.plot(steps, [s["time_ns"] / 1e3 for s in m["steps"]], marker="o", label=mode)
        ax_e.plot(steps, [s["energy_pj"] / 1e6 for s in m["steps"]], marker="o", label=mode)
    ax_t.set(xlabel="step (0: prompt)", ylabel="latency (us)", yscale="log",
             title="latency per step")
    ax_e.set(xlabel="step (0: prompt)", ylabel="energy (uJ)", yscale="log",
             title="energy per step")
    ax_t.legend()
    fig.tight_layout()
    fig.savefig(folder / "generation.png", dpi=120)
    plt.close(fig)
    return ["generation.png"]
