"""Workloads: a prompt window plus generation steps through one MoE layer, with golden outputs.

Hidden states are seeded ``N(0, 1)`` vectors (the scale of RMS-normalised transformer hidden
states). The layer runs in float (torch) and in integers (``moepim.models.quant``); the integer
outputs are the golden values the hardware must reproduce bit for bit.

Routing over time:

* token choice: each token's experts depend on its own gate scores only; a capacity limit
  (Switch) counts tokens in order over the whole workload (prompt then generated tokens).
* expert choice: the prompt is one window (each expert takes its top-C prompt tokens); every
  generated token is then decided by :func:`moepim.models.routing.expert_choice_decode` from
  all earlier tokens' gate scores (the rule a GO cache must reproduce).
* a trace (``(tokens, experts)`` 0/1) can replace the gate's selection; gate weights are then
  still computed from the scores.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .moe import Routing, init_weights, moe_forward_float, route_float
from .quant import (
    QuantLayer,
    dequantize_output,
    gate_logits_int,
    gate_scores_int,
    int_matmul,
    moe_forward_int,
    quantize_input,
    quantize_layer,
    route_int,
)
from .routing import expert_choice_capacity, expert_choice_decode, expert_choice_mask
from .traces import TraceError
from .zoo import ModelConfig

__all__ = ["Workload", "make_workload", "hidden_states", "calibrate_matmul", "datapath_accuracy",
           "with_matmul", "workload_of_inputs"]


@dataclass
class Workload:
    cfg: ModelConfig
    seed: int
    n_prompt: int
    n_generate: int
    hidden: torch.Tensor          # (T, d) float inputs
    weights: dict                 # float state dict
    quant: QuantLayer
    x_q: np.ndarray               # (T, d) integer inputs
    routing: Routing              # integer (golden) routing
    y_q: np.ndarray               # (T, d) golden integer outputs
    routing_float: Routing
    y_float: np.ndarray           # (T, d) float reference outputs

    @property
    def n_tokens(self) -> int:
        return self.n_prompt + self.n_generate

    @property
    def expert_loads(self) -> np.ndarray:
        return self.routing.mask.sum(axis=0)

    def trace(self) -> np.ndarray:
        """The golden routing as a one-layer trace ``(1, tokens, experts)``."""
        return self.routing.mask[None].astype(np.uint8)

    def y_dequantized(self) -> np.ndarray:
        return dequantize_output(self.y_q, self.quant)


def hidden_states(cfg: ModelConfig, n_tokens: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n_tokens, cfg.d_model, generator=gen, dtype=torch.float32)


def _select(scores: np.ndarray, cfg: ModelConfig, n_prompt: int) -> np.ndarray | None:
    """Expert-choice selection over prompt window + decode steps; None for token choice."""
    if cfg.router.kind != "expert_choice":
        return None
    factor = cfg.router.ec_capacity_factor
    mask = np.zeros(scores.shape, dtype=bool)
    cap = expert_choice_capacity(n_prompt, cfg.n_experts, factor)
    mask[:n_prompt] = expert_choice_mask(scores[:n_prompt], cap)
    for t in range(n_prompt, len(scores)):
        mask[t] = expert_choice_decode(scores[:t], scores[t], factor)
    return mask


def calibrate_matmul(matmul, cfg: ModelConfig, ql, seed: int,
                     cache_dir: Path | None = None) -> dict:
    """Set the calibrated ADC windows of ``matmul`` (``moepim.models.pim.CrossbarMatmul``
    with ``adc_range: calibrated``) from the calibration batch: ``CALIBRATION_TOKENS`` hidden
    states drawn like the workload's with seed ``seed + 1 + CALIBRATION_SEED_OFFSET``,
    quantised with the layer's scales, every expert evaluated on every token through exact
    integer products (so each matrix sees the inputs the exact integer layer gives it).
    Returns ``{id(matrix): shift}``.

    ``cache_dir``: where fitted windows are kept, one JSON file per SHA-256 of everything they
    depend on (the tile shape, the clip fraction, the calibration batch, every integer tensor,
    multiplier and table of the layer, and the source of the modules that compute them); a
    second run of the same layer on the same tile reads them instead of refitting."""
    from .pim import CALIBRATION_SEED_OFFSET, CALIBRATION_TOKENS

    x_cal = quantize_input(hidden_states(cfg, CALIBRATION_TOKENS,
                                         seed + 1 + CALIBRATION_SEED_OFFSET), ql)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{_calibration_digest(matmul, ql, x_cal)}.json"
        cached = _read_windows(path, ql)
        try:
            for name, shifts in (cached or {}).items():
                matmul.set_shifts(ql.tensors[name], shifts)
        except ValueError:
            cached = None                # a damaged entry: fitted again and rewritten
        if cached is not None:
            return {id(ql.tensors[name]): shifts for name, shifts in cached.items()}
    products = []

    def record(a, b):
        products.append((a, b))
        return int_matmul(a, b)

    every = np.ones((len(x_cal), cfg.n_experts), dtype=bool)
    moe_forward_int(x_cal, ql, mask=every, matmul=record)
    windows = matmul.calibrate(products)
    if path is not None:
        names = {id(t): name for name, t in ql.tensors.items()}
        _write_windows(path, {names[k]: list(v) for k, v in windows.items()})
    return windows


def _calibration_digest(matmul, ql, x_cal) -> str:
    from . import pim

    h = hashlib.sha256()
    h.update(repr((matmul.shape.arithmetic, pim.CALIBRATION_CLIP_FRACTION,
                   ql.gate_index)).encode())
    for part in (x_cal, *(ql.tensors[k] for k in sorted(ql.tensors)),
                 *(ql.luts[k] for k in sorted(ql.luts))):
        a = np.ascontiguousarray(part)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    h.update(repr(sorted(ql.tensors)).encode() + repr(sorted(ql.requant.items())).encode())
    here = Path(__file__).parent
    for module in ("pim.py", "tile.py", "quant.py", "workload.py"):
        h.update((here / module).read_bytes())
    return h.hexdigest()


def _read_windows(path: Path, ql) -> dict | None:
    """The cached windows, or ``None`` when absent or unreadable (then refitted)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not (isinstance(data, dict) and data and set(data) <= set(ql.tensors) and all(
                isinstance(v, list) and all(isinstance(i, int) and i >= 0 for i in v)
                for v in data.values())):
            return None
        return {k: tuple(v) for k, v in data.items()}
    except (OSError, ValueError):
        return None


def _write_windows(path: Path, windows: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(windows, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)            # atomic: a reader sees the old file or the new one
    except OSError:
        pass                             # a cache that cannot be written only costs time


def with_matmul(wl: Workload, matmul) -> Workload:
    """``wl`` (same weights, quantisation and inputs) with its golden routing and outputs
    recomputed through ``matmul`` (calibrated first if it needs it); trace-free workloads."""
    import dataclasses

    if getattr(matmul, "needs_calibration", False):
        calibrate_matmul(matmul, wl.cfg, wl.quant, wl.seed)
    logits = gate_logits_int(wl.x_q, wl.quant, matmul)
    mask = _select(gate_scores_int(logits, wl.quant), wl.cfg, wl.n_prompt)
    routing = route_int(wl.x_q, wl.quant, mask=mask, logits=logits)
    y_q, _ = moe_forward_int(wl.x_q, wl.quant, routing=routing, matmul=matmul)
    return dataclasses.replace(wl, routing=routing, y_q=y_q)


def datapath_accuracy(wl: Workload, from_trace: bool = False, exact=int_matmul) -> dict:
    """How far the accelerator's integer layer (``wl``, computed through the crossbar
    ``matmul``) is from the exact integer layer:

    * ``relative_l2_error_vs_exact_integer``: ``|y - y_exact| / |y_exact|`` over every output
      code, ``y_exact`` the exact integer layer with the SAME routing (the datapath's error
      alone);
    * ``snr_db``: ``10 log10(sum y_exact**2 / sum (y - y_exact)**2)`` (``inf`` when exact);
    * ``routing_agreement``: the share of the exact-integer routing's selections (token,
      expert) that the layer's routing (its gate on the crossbars) also makes; ``None`` when
      the routes come from a trace.

    ``exact``: the exact integer product to use (``int_matmul``, or one that keeps its rows).
    """
    y_exact, _ = moe_forward_int(wl.x_q, wl.quant, routing=wl.routing, matmul=exact)
    y, e = wl.y_q.astype(np.float64), y_exact.astype(np.float64)
    noise, signal = float(((y - e) ** 2).sum()), float((e ** 2).sum())
    out = {"relative_l2_error_vs_exact_integer": float(np.sqrt(noise / max(signal, 1e-30))),
           "snr_db": float(10 * np.log10(signal / noise)) if noise > 0 else float("inf"),
           "routing_agreement": None}
    if not from_trace:
        logits = gate_logits_int(wl.x_q, wl.quant, exact)
        exact = _select(gate_scores_int(logits, wl.quant), wl.cfg, wl.n_prompt)
        if exact is None:
            exact = route_int(wl.x_q, wl.quant, logits=logits).mask
        got = np.asarray(wl.routing.mask, dtype=bool)[:, :exact.shape[1]]
        exact = np.asarray(exact, dtype=bool)
        out["routing_agreement"] = float((got & exact).sum() / max(exact.sum(), 1))
    return out


def make_workload(cfg: ModelConfig, *, n_prompt: int, n_generate: int = 0, seed: int = 0,
                  weights: dict | None = None, trace: np.ndarray | None = None,
                  trace_source: str = "trace", matmul=None,
                  calibration_cache: Path | None = None) -> Workload:
    """``matmul`` replaces the exact integer products of the golden layer (e.g.
    ``moepim.models.pim.CrossbarMatmul`` for the accelerator's crossbar arithmetic);
    ``calibration_cache``: the folder of fitted ADC windows (:func:`calibrate_matmul`)."""
    if n_prompt < 1 or n_generate < 0:
        raise ValueError(f"n_prompt={n_prompt}, n_generate={n_generate}: need n_prompt >= 1 "
                         "and n_generate >= 0")
    n_tokens = n_prompt + n_generate
    if trace is not None:
        trace = np.asarray(trace)
        if trace.shape != (n_tokens, cfg.n_experts):
            raise TraceError(f"{trace_source}: one layer of the trace has shape {trace.shape}; "
                             f"the workload needs (tokens, experts) = ({n_tokens}, "
                             f"{cfg.n_experts})")
    w = weights if weights is not None else init_weights(cfg, seed)
    x = hidden_states(cfg, n_tokens, seed + 1)
    ql = quantize_layer(w, cfg, x[:n_prompt])
    x_q = quantize_input(x, ql)
    if matmul is not None and getattr(matmul, "needs_calibration", False):
        calibrate_matmul(matmul, cfg, ql, seed, calibration_cache)

    # integer (golden) routing
    mm = matmul if matmul is not None else int_matmul
    logits = gate_logits_int(x_q, ql, mm)
    mask = trace if trace is not None else _select(gate_scores_int(logits, ql), cfg, n_prompt)
    routing = route_int(x_q, ql, mask=mask, logits=logits)
    y_q, _ = moe_forward_int(x_q, ql, routing=routing, matmul=mm)

    return _with_float_reference(cfg, seed, n_prompt, n_generate, x, w, ql, x_q, routing, y_q,
                                 trace)


def _with_float_reference(cfg, seed, n_prompt, n_generate, x, w, ql, x_q, routing, y_q,
                          trace=None) -> Workload:
    # float reference, routed by the same rules
    f_routing = route_float(x, w, cfg)
    f_mask = trace if trace is not None else _select(f_routing.scores, cfg, n_prompt)
    y_f, f_routing = moe_forward_float(x, w, cfg, mask=f_mask if f_mask is not None else None)
    return Workload(cfg, seed, n_prompt, n_generate, x, w, ql, x_q, routing, y_q, f_routing,
                    y_f.numpy())


def workload_of_inputs(cfg: ModelConfig, *, seed: int, n_prompt: int, x_q: np.ndarray,
                       quant: QuantLayer, weights: dict, mask: np.ndarray,
                       matmul=int_matmul) -> Workload:
    """A workload whose integer inputs and selections are given (a decoder layer's MoE
    inputs, the MoE norm's output codes, and their routing: the prompt window, then each
    generated token by the decode rule): its golden routing and outputs through ``matmul``,
    and the float reference on the dequantised inputs (``x_q * s_x``) routed by the float
    gate under the same rules."""
    x_q = np.asarray(x_q, dtype=np.int64)
    routing = route_int(x_q, quant, mask=mask, matmul=matmul)
    y_q, _ = moe_forward_int(x_q, quant, routing=routing, matmul=matmul)
    x = torch.as_tensor(x_q * quant.s_x, dtype=torch.float32)
    return _with_float_reference(cfg, seed, n_prompt, len(x_q) - n_prompt, x, weights, quant,
                                 x_q, routing, y_q)
