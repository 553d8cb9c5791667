"""Golden generation loop: token embedding, one decoder layer, the final norm, the LM head and a
greedy argmax, each generated token fed back as the next input, under the four cache modes of
the primary paper's comparison. Every mode computes the same tokens bit for bit; they differ in
the work each step does (:class:`StepWork`), which the timing model prices.

Steps: step 0 runs the prompt (``P`` tokens) as one window and gives the first generated
token; decode step ``k`` (1 .. ``n_generate - 1``) runs with ``L = P + k`` tokens in the
sequence and gives the next. ``n_generate = 8`` after a 32-token prompt is the paper's 7 decode
steps at ``L = 33 .. 39``.

What a decode step computes (``x`` the embeddings, the new token last):

``none`` (the paper's baseline: no cache)
    the whole sequence again: ``L`` embeddings, norms, Q/K/V/O projections, causal attention
    (row ``t`` over ``t + 1`` keys), residuals, the MoE layer over the ``L``-token window.
``kv`` (K and V of earlier tokens cached)
    Q for every row, K/V for the new row only, every row's attention reading the earlier
    keys and values from the KV store: expert-choice routing without the GO cache still
    needs every token's MoE input (the gate ranks a column over the whole window), so the
    earlier rows' attention, O projection, norms and the MoE window are recomputed.
``go`` (earlier gate outputs cached)
    the MoE layer for the new token only (its selection from the cached scores,
    ``moepim.models.routing.expert_choice_decode``); attention for the new row only, but
    without a KV cache every earlier token's K and V are projected again (their norms and
    embeddings too).
``kv_go``
    the new token alone everywhere, the earlier keys and values read from the KV store.

The prompt step is the same in every mode (its K/V written to the KV store in the ``kv``
modes, its gate scores kept in the ``go`` modes). The LM head runs on the last row only.

Routing: the prompt window routes as a window; each generated token is selected by the
decode rule (expert choice: ``expert_choice_decode`` over the earlier scores, which equals
its selection in a fresh window of the ``L`` tokens, earlier tokens winning ties; token
choice: the token alone). A recomputing mode routes its window with those selections, so
every mode's new row is the same computation.

Embedding and LM head weights are seeded and generated in 256-entry blocks (a crossbar's
width), so the full-size vocabulary (32,000 x 4,096) never exists in float: the embedding
row of a token is ``N(0, 1)`` from the token's own seed; the LM head is
``N(0, initializer_range)``, quantised with a fixed clip at ``LM_CLIP_SIGMA`` standard
deviations (its weights are never all drawn at once, so no per-tensor maximum).

Arithmetic: the layer's crossbar matrices (Q, K, V, O, the gate, the experts) go through
``matmul`` (``moepim.models.pim.CrossbarMatmul`` for the tile's ADC arithmetic); the
embedding is an exact lookup of its codes (a one-hot input selects one cell row) and the LM
head's logits are exact integer products (its argmax is not affected by ADC effects here: a
crossbar model of a 4,096 x 32,000 matrix would hold half a gigabyte of cells).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .decoder import (
    DecoderQuant,
    KVCache,
    NormQuant,
    _clamp,
    _norm_float,
    _norm_quant,
    _quant,
    _rope_int,
    _scale,
    attend_int,
    decoder_forward_float,
    init_decoder_weights,
    int_norm,
    quantize_decoder,
)
from .quant import int_matmul, moe_forward_int, route_int
from .routing import expert_choice_decode
from .zoo import ModelConfig

__all__ = ["MODES", "StepWork", "Generator", "GenerationResult", "build_generator",
           "step_work", "generate", "decoder_accuracy", "LM_BLOCK", "LM_CLIP_SIGMA"]

MODES = ("none", "kv", "go", "kv_go")
LM_BLOCK = 256              # vocabulary entries generated (and projected) per block
LM_CLIP_SIGMA = 4.0         # the LM head's quantisation clip, in standard deviations


@dataclass(frozen=True)
class StepWork:
    """The work of one step in one mode (rows are token rows; per-head counts are per query
    head). ``kv_read_rows``: K/V rows read back from the KV store, once per step (each row
    one token's K and V of every K/V head; the step's attention rows read them on chip, as
    a recomputing step reads the rows it projects); ``kv_write_rows``: rows written to it;
    ``go_rows``: earlier tokens whose gate scores the GO cache supplies."""

    step: int
    n_tokens: int               # L: tokens in the sequence (the new one included)
    embed_rows: int
    attn_norm_rows: int
    q_rows: int
    kv_rows: int                # rows whose K and V are projected
    attn_rows: int              # query rows through attention (per head)
    attn_keys: int              # keys attended over all those rows (per head)
    o_rows: int
    moe_rows: int               # MoE-norm rows, the MoE window, the second residual
    moe_cached: bool            # the MoE layer decodes from the GO cache
    lm_rows: int
    kv_read_rows: int
    kv_write_rows: int
    go_rows: int


def step_work(mode: str, step: int, n_prompt: int) -> StepWork:
    """The work of ``step`` (0: the prompt) under ``mode`` (module docstring)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    kv, go = mode in ("kv", "kv_go"), mode in ("go", "kv_go")
    L = n_prompt + step
    if step == 0:
        keys = L * (L + 1) // 2
        return StepWork(0, L, L, L, L, L, L, keys, L, L, False, 1, 0, L if kv else 0, 0)
    every = L if not (kv and go) else 1
    q_rows = 1 if go else L
    kv_rows = 1 if kv else L
    keys = L * (L + 1) // 2 if q_rows == L else L
    # the earlier steps' K/V rows, read back once into the step's on-chip K/V rows (where a
    # recomputing step keeps the rows it projects)
    kv_read = L - 1 if kv else 0
    return StepWork(step, L, every, every, q_rows, kv_rows, q_rows, keys, q_rows, q_rows,
                    go, 1, kv_read, 1 if kv else 0, L - 1 if go else 0)


@dataclass
class Generator:
    """The integer model of generation: the decoder layer's quantisation ``dq``, the final
    norm and the LM head (generated block by block, kept as int8 codes)."""

    cfg: ModelConfig
    dq: DecoderQuant
    final_norm: NormQuant
    seed: int
    lm_head: np.ndarray             # (d_model, vocab) weight codes, int8
    matmul: object = int_matmul
    _argmax: dict = field(default_factory=dict, repr=False)

    def embed(self, tokens) -> np.ndarray:
        """Embedding codes of ``tokens`` (rows of ``d_model`` codes at the layer's input
        scale)."""
        return np.stack([_quant(_embedding_row(self.cfg, self.seed, int(t)), self.dq.s_x,
                                self.cfg.quant.act_bits) for t in tokens])

    def next_token(self, y_row: np.ndarray) -> tuple[int, int]:
        """Greedy argmax of the LM head over the final norm of one output row (the lowest
        index among equal logits), and its logit. The LM head's products are exact integers
        (its crossbar arithmetic is not modelled: see the module docstring)."""
        key = np.asarray(y_row, dtype=np.int64).tobytes()
        hit = self._argmax.get(key)
        if hit is None:
            h = self.final_hidden(y_row)
            best, value = 0, None
            for b0 in range(0, self.lm_head.shape[1], LM_BLOCK):
                logits = int_matmul(h[None], self.lm_head[:, b0:b0 + LM_BLOCK])[0]
                j = int(np.argmax(logits))
                if value is None or logits[j] > value:
                    best, value = b0 + j, int(logits[j])
            hit = self._argmax[key] = (best, value)
        return hit

    def final_hidden(self, y_row: np.ndarray) -> np.ndarray:
        """The final norm of one output row: the LM head's input codes."""
        return int_norm(np.asarray(y_row)[None], self.final_norm, self.cfg.quant.act_bits)[0]


def _embedding_row(cfg: ModelConfig, seed: int, token: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(token))
    return torch.randn(cfg.d_model, generator=gen, dtype=torch.float32)


def _lm_head_block(cfg: ModelConfig, seed: int, b0: int) -> np.ndarray:
    """The float LM head's columns ``b0 .. b0 + LM_BLOCK - 1`` (d_model, block), seeded per
    block."""
    gen = torch.Generator().manual_seed(seed * 7_919 + b0)
    w = torch.randn(cfg.d_model, min(LM_BLOCK, cfg.vocab_size - b0), generator=gen,
                    dtype=torch.float32)
    return w.numpy().astype(np.float64) * cfg.initializer_range


def _final_norm_weights(cfg: ModelConfig, seed: int) -> dict:
    """The final norm's float gain ``1 + N(0, 0.1)`` (and LayerNorm's bias ``N(0, 0.1)``)."""
    gen = torch.Generator().manual_seed(seed + 2)
    w = {"final_norm.weight": 1.0 + 0.1 * torch.randn(cfg.d_model, generator=gen)}
    if cfg.norm == "layernorm":
        w["final_norm.bias"] = 0.1 * torch.randn(cfg.d_model, generator=gen)
    return w


def _lm_head_codes(cfg: ModelConfig, seed: int, s_w: float) -> np.ndarray:
    d, V = cfg.d_model, cfg.vocab_size
    out = np.empty((d, V), dtype=np.int8)
    lim = (1 << (cfg.quant.weight_bits - 1)) - 1
    if lim > 127:
        raise ValueError("the LM head keeps int8 codes: weight_bits above 8 are not supported")
    for b0 in range(0, V, LM_BLOCK):
        w = _lm_head_block(cfg, seed, b0)
        q = np.rint(w / s_w)
        out[:, b0:b0 + w.shape[1]] = np.clip(q, -lim, lim)
    return out


def build_generator(cfg: ModelConfig, prompt: list[int], seed: int,
                    matmul=int_matmul, calibration_cache: Path | None = None) -> Generator:
    """Seeded decoder-layer weights (``moepim.models.decoder.init_decoder_weights``), the
    layer calibrated on the prompt's embeddings, the final norm (gain ``1 + N(0, 0.1)``)
    calibrated on the float layer's output, the LM head. A crossbar ``matmul`` whose ADC
    windows need calibration (``moepim.models.pim.CrossbarMatmul`` with ``adc_range:
    calibrated``) gets them from the prompt: every crossbar matrix of the layer (Q, K, V, O,
    the gate, every expert on every prompt token) through exact integer products, kept in
    ``calibration_cache`` (a folder) when given."""
    w = init_decoder_weights(cfg, seed)
    x = torch.stack([_embedding_row(cfg, seed, t) for t in prompt])
    dq = quantize_decoder(w, cfg, x)
    y, _ = decoder_forward_float(x, w, cfg)
    w.update(_final_norm_weights(cfg, seed))
    ab, mb = cfg.quant.act_bits, cfg.quant.multiplier_bits
    s_f = _scale(_norm_float(y, w, "final_norm", cfg), ab)
    final = _norm_quant(w, "final_norm", cfg, dq.s_y, s_f, mb)
    s_w = LM_CLIP_SIGMA * cfg.initializer_range / ((1 << (cfg.quant.weight_bits - 1)) - 1)
    g = Generator(cfg, dq, final, seed, _lm_head_codes(cfg, seed, s_w), matmul)
    if getattr(matmul, "needs_calibration", False):
        _calibrate(g, prompt, calibration_cache)
    return g


def _crossbar_tensors(dq: DecoderQuant) -> dict:
    """The layer's crossbar matrices by name (the MoE layer's prefixed ``moe.``)."""
    out = {k: v for k, v in dq.tensors.items() if k.endswith(".weight")}
    out.update({f"moe.{k}": v for k, v in dq.moe.tensors.items() if k.endswith(".weight")})
    return out


def _calibrate(gen: Generator, prompt, cache_dir) -> None:
    """The ADC windows of every crossbar matrix, fitted on the prompt's exact products, or
    read from ``cache_dir`` (one JSON file per SHA-256 of everything they depend on: the tile
    shape, the clip fraction, the prompt's embedding codes, every integer tensor, norm and
    requantisation of the layer, the source of the modules that compute them)."""
    from .pim import CALIBRATION_CLIP_FRACTION
    from .workload import _write_windows

    tensors = _crossbar_tensors(gen.dq)
    path = None
    if cache_dir is not None:
        h = hashlib.sha256()
        h.update(repr((gen.matmul.shape.arithmetic, CALIBRATION_CLIP_FRACTION,
                       sorted(gen.dq.requant.items()), sorted(gen.dq.moe.requant.items()),
                       gen.dq.attn_index)).encode())
        parts = [gen.embed(prompt), *(tensors[k] for k in sorted(tensors)),
                 *(gen.dq.moe.luts[k] for k in sorted(gen.dq.moe.luts))]
        for nq in gen.dq.norms.values():
            parts += [nq.gamma, nq.beta if nq.beta is not None else np.zeros(0)]
            h.update(repr((nq.eps, nq.requant, nq.center)).encode())
        for part in parts:
            a = np.ascontiguousarray(part)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
        here = Path(__file__).parent
        for module in ("generation.py", "decoder.py", "quant.py", "pim.py", "tile.py"):
            h.update((here / module).read_bytes())
        path = Path(cache_dir) / f"decoder-{h.hexdigest()}.json"
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(cached, dict) and set(cached) == set(tensors):
                for name, shifts in cached.items():
                    gen.matmul.set_shifts(tensors[name], shifts)
                return
        except (OSError, ValueError, TypeError):
            pass                  # absent or damaged: fitted again and rewritten
    windows = gen.matmul.calibrate(_calibration_products(gen, prompt))
    if path is not None:
        names = {id(t): k for k, t in tensors.items()}
        _write_windows(path, {names[k]: list(v) for k, v in windows.items() if k in names})


def _calibration_products(gen: Generator, prompt) -> list:
    products = []

    def record(a, b):
        products.append((a, b))
        return int_matmul(a, b)

    exact = Generator(gen.cfg, gen.dq, gen.final_norm, gen.seed, gen.lm_head, record)
    x = exact.embed(prompt)
    pos = np.arange(len(prompt))
    h2 = _layer_rows(exact, x, pos, pos, x, KVCache.empty(gen.cfg), None)["h2"]
    every = np.ones((len(h2), gen.cfg.n_experts), dtype=bool)
    moe_forward_int(h2, gen.dq.moe, mask=every, matmul=record)
    return products


@dataclass
class GenerationResult:
    """Per mode, the generated tokens, each step's new output row and its work."""

    mode: str
    tokens: list[int]
    rows: list[np.ndarray] = field(default_factory=list)
    work: list[StepWork] = field(default_factory=list)
    moe_x: np.ndarray | None = None      # every processed token's MoE input, in order
    attn_in: np.ndarray | None = None    # ... its attention norm's output (Q/K/V input)
    attn_out: np.ndarray | None = None   # ... its attention output (O input)
    x1: np.ndarray | None = None         # ... its first residual (the attention half's output)
    y: np.ndarray | None = None          # ... the layer's output row
    scores: np.ndarray | None = None     # ... its gate scores
    mask: np.ndarray | None = None       # ... its experts (prompt window, then decode rule)


def _decode_selection(gen: Generator, h2_new: np.ndarray, prev_scores: np.ndarray):
    """The new token's routing row by the decode rule, and its gate scores."""
    cfg, ql = gen.cfg, gen.dq.moe
    r = route_int(h2_new[None], ql, matmul=gen.matmul)
    if cfg.router.kind == "expert_choice":
        sel = expert_choice_decode(prev_scores, r.scores[0], cfg.router.ec_capacity_factor)
        return sel, r.scores[0]
    return r.mask[0], r.scores[0]


def _project(gen, rows, name, heads, pos):
    """Q/K/V projection of ``rows`` into (T, heads, head_dim) codes, rotated at ``pos``."""
    dq, cfg = gen.dq, gen.cfg
    acc = gen.matmul(rows, dq.tensors[f"attn.{name}.weight"])
    t = _clamp(dq.requant[f"attn.{name}"].apply(acc), cfg.quant.act_bits)
    t = t.reshape(len(rows), heads, cfg.head_size)
    return t if name == "v" else _rope_int(t, pos, cfg)


def _layer_rows(gen: Generator, x_rows, q_pos, kv_pos, x_kv, cache: KVCache, select):
    """The layer for the query rows ``x_rows`` at positions ``q_pos``; K/V projected for
    ``x_kv`` (positions ``kv_pos``) and appended to ``cache`` (the keys every row attends
    over); the MoE window over the query rows with the selection ``select(h2)`` gives from
    their MoE inputs (``None``: the window's own routing). Returns the output rows, the
    grown cache, the routing and the query rows' inputs of the crossbar matrices (``h``:
    the attention norm's output, ``a``: the attention output, ``h2``: the MoE input) and
    their first residual ``x1`` (the attention half's output)."""
    dq, cfg = gen.dq, gen.cfg
    ab, H, G = cfg.quant.act_bits, cfg.n_heads, cfg.kv_heads
    h_q = int_norm(x_rows, dq.norms["attn_norm"], ab)
    h_kv = h_q if x_kv is x_rows else int_norm(x_kv, dq.norms["attn_norm"], ab)
    q = _project(gen, h_q, "q", H, q_pos)
    k, v = _project(gen, h_kv, "k", G, kv_pos), _project(gen, h_kv, "v", G, kv_pos)
    cache = KVCache(np.concatenate([cache.k, k]), np.concatenate([cache.v, v]))
    rep = H // G
    a = attend_int(q, np.repeat(cache.k, rep, axis=1), np.repeat(cache.v, rep, axis=1),
                   q_pos, dq.attn_index, ab).reshape(len(x_rows), -1)
    o = dq.requant["attn.o"].apply(gen.matmul(a, dq.tensors["attn.o.weight"]))
    x1 = _clamp(dq.requant["res1.x"].apply(x_rows) + o, ab)
    h2 = int_norm(x1, dq.norms["moe_norm"], ab)
    mask = select(h2) if select is not None else None
    routing = route_int(h2, dq.moe, mask=mask, matmul=gen.matmul)
    moe, routing = moe_forward_int(h2, dq.moe, routing=routing, matmul=gen.matmul)
    y = _clamp(dq.requant["res2.x1"].apply(x1) + dq.requant["res2.moe"].apply(moe), ab)
    return {"y": y, "cache": cache, "routing": routing, "h2": h2, "h": h_q, "a": a, "x1": x1}


def generate(gen: Generator, prompt: list[int], n_generate: int, mode: str) -> GenerationResult:
    """``n_generate`` tokens after ``prompt`` under ``mode`` (module docstring)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if n_generate < 1:
        raise ValueError(f"n_generate must be at least 1, got {n_generate}")
    P = len(prompt)
    if P < 1:
        raise ValueError("the prompt needs at least one token")
    x = gen.embed(prompt)
    empty = KVCache.empty(gen.cfg)
    pos = np.arange(P)
    out = _layer_rows(gen, x, pos, pos, x, empty, None)
    y, cache, routing = out["y"], out["cache"], out["routing"]
    state = {"scores": routing.scores, "mask": routing.mask}
    rows = {k: list(out[k]) for k in ("h2", "h", "a", "x1", "y")}
    res = GenerationResult(mode, [])
    nxt, _ = gen.next_token(y[-1])
    res.tokens.append(nxt)
    res.rows.append(y[-1])
    res.work.append(step_work(mode, 0, P))
    kv, go = mode in ("kv", "kv_go"), mode in ("go", "kv_go")
    for step in range(1, n_generate):
        L = P + step
        x = np.vstack([x, gen.embed([nxt])])
        new, every = np.array([L - 1]), np.arange(L)

        def select(h2, window=not go):
            # the new token's selection by the decode rule from its MoE input (the last
            # row); a window keeps the earlier tokens' selections
            sel, new_scores = _decode_selection(gen, h2[-1], state["scores"])
            state["scores"] = np.vstack([state["scores"], new_scores[None]])
            state["mask"] = np.vstack([state["mask"], sel[None]])
            return state["mask"] if window else sel[None]

        q_x, q_pos = (x[-1:], new) if go else (x, every)
        kv_x, kv_pos = (x[-1:], new) if kv else (x, every)
        out = _layer_rows(gen, q_x, q_pos, kv_pos, kv_x, cache if kv else empty, select)
        y_rows, grown = out["y"], out["cache"]
        for k in rows:
            rows[k].append(out[k][-1])
        if kv:
            cache = grown
        nxt, _ = gen.next_token(y_rows[-1])
        res.tokens.append(nxt)
        res.rows.append(y_rows[-1])
        res.work.append(step_work(mode, step, P))
    res.moe_x, res.attn_in, res.attn_out, res.x1, res.y = (
        np.array(rows[k]) for k in ("h2", "h", "a", "x1", "y"))
    res.scores, res.mask = state["scores"], state["mask"]
    return res


def decoder_accuracy(gen: Generator, prompt: list[int], res: GenerationResult) -> dict:
    """The integer decoder's outputs against the float decoder (``decoder_forward_float``,
    the same seeded weights, float norms, attention and MoE layer), teacher-forced on the
    sequence ``res`` processed (the prompt, then every generated token but the last):

    * ``relative_l2_error_x1`` / ``_y``: the first residual and the layer output, dequantised,
      against the float layer routed by its float gate (every row of the sequence);
    * ``relative_l2_error_y_same_routing``: the output against the float layer given our
      routing (what the integer arithmetic alone costs);
    * per step, whether the greedy next token of the float final norm and float LM head
      equals ours, and our token's rank among the float logits (0: the float argmax)."""
    cfg = gen.cfg
    seq = list(prompt) + list(res.tokens[:-1])
    if res.y is None or len(res.y) != len(seq):
        raise ValueError("res must be a finished generate() result over this prompt")
    w = init_decoder_weights(cfg, gen.seed)
    w.update(_final_norm_weights(cfg, gen.seed))
    x = torch.stack([_embedding_row(cfg, gen.seed, t) for t in seq])
    y_f, f = decoder_forward_float(x, w, cfg)
    y_same, _ = decoder_forward_float(x, w, cfg, mask=torch.as_tensor(res.mask))

    def rel(ours: np.ndarray, ref) -> float:
        ref = np.asarray(ref, dtype=np.float64)
        return float(np.linalg.norm(ours - ref) / max(np.linalg.norm(ref), 1e-30))

    dq = gen.dq
    y_deq = res.y.astype(np.float64) * dq.s_y
    x1_deq = res.x1.astype(np.float64) * dq.tensors["x1.scale"]
    P = len(prompt)
    h = _norm_float(y_f[P - 1:], w, "final_norm", cfg).to(torch.float64).numpy()
    logits = np.concatenate([h @ _lm_head_block(cfg, gen.seed, b0)
                             for b0 in range(0, cfg.vocab_size, LM_BLOCK)], axis=1)
    ours = np.asarray(res.tokens)
    theirs = logits.argmax(axis=1)
    rank = (logits > logits[np.arange(len(ours)), ours][:, None]).sum(axis=1)
    return {
        "tokens_compared": len(ours),
        "relative_l2_error_x1": rel(x1_deq, f["x1"]),
        "relative_l2_error_y": rel(y_deq, y_f),
        "relative_l2_error_y_same_routing": rel(y_deq, y_same),
        "next_token_agreement": float(np.mean(theirs == ours)),
        "float_tokens": [int(t) for t in theirs],
        "our_token_rank_in_float_logits": [int(r) for r in rank],
        "note": "teacher-forced on the generated sequence; the float decoder has the same "
                "seeded weights, float norms, RoPE, softmax and MoE layer (its own routing "
                "for relative_l2_error_y, ours for _same_routing), the float final norm "
                "and LM head"}
