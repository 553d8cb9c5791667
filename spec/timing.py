"""The timing model: every cycle formula and recurrence of the RTL, in one place.

The hardware blocks state their latencies through these functions (``moepim.hw``), the run's
checker compares every simulated window's cycles with :class:`LayerTiming` built from the
layer's specification (never from the RTL object), and the timing level (``--sim model``)
and the estimates use the same numbers. Each formula names the block whose RTL it describes;
the tests assert the RTL takes exactly these cycles.

Tile and engines
  ``mvm_latency = input_bits * columns_per_adc + 4``: 1 cycle to latch the request, 1 to drive
  bit plane 0, ``input_bits * columns_per_adc`` conversions (the next plane is driven during
  the last conversion of the previous one), 1 for the last shift-add, 1 to combine the slices
  (``PeripheralSet``, ``MatrixBank``). An expert engine's job:
  ``job_latency = 2 * mvm_latency + hidden_blocks + 2`` (``ExpertEngine``: the up MVM, the
  hidden blocks into the down bank, the down MVM).

Layer (``MoELayerAccelerator``), per window of ``n`` tokens, ``J`` jobs, ``B = d_model/lanes``
  * timestamps: ``sum over timestamps (loads * 2B + job_latency + 5)`` (``compute_cycles``;
    ``job_latency`` of the slowest engine working in the timestamp);
  * the window without input gaps or back-pressure: ``nB + route + max(1, J) + compute + nB +
    1`` (``window_cycles``), plus the scheduler's settle cycle (``settle_cycles``).

Routing (``RouteUnit``, a two-stage pipeline; ``route_cycles``)
  * stage 1 (``gate_cycles``): ``L + OB + 2`` (a linear gate: start, the MVM, the logit
    blocks), ``L1 + HB + L2 + OB + 3`` (an MLP gate);
  * stage 2 (``router_cycles``), with ``S = softmax_latency(E) + 2``: expert choice in a
    window ``S + 1`` (+1 on token 0 when the GO cache is filled), expert choice from the GO
    cache ``S + rows + E + 5``, top-k ``topk_router_latency(k) + 3 + k``; +1 with the shared
    gate's beat;
  * the close (``close_cycles``): the expert-choice selection ``E (T + 1 + cap)``
    (``ExpertChoiceRouter``) and the closing beat, or the closing beat alone.

Decoder units (streaming, one beat per cycle, fixed latency from a beat's handshake)
  * ``ResidualUnit``: ``residual_latency = 2``; ``n`` beats ``n + 2`` (``residual_cycles``);
  * ``RopeUnit``: ``rope_latency = 3``; a head vector is ``head_dim / (2 lanes)`` beats
    (``rope_beats``), ``V`` vectors ``V * beats + 3`` (``rope_cycles``).
  * ``ProjectionUnit`` (a dense matrix on one bank, ``IB``/``OB`` input/output beats, ``L``
    the MVM): ``projection_latency = IB + L + 2``, an MVM every ``max(IB, L + OB)`` cycles
    (``projection_interval``), ``n`` rows ``IB + L + OB + 2 + (n-1) max(IB, L + OB)``
    (``projection_cycles``);
  * ``ArgmaxUnit``: ``argmax_latency = 1`` after a vector's last beat; one beat per cycle.

This module imports nothing heavy (no numpy, torch or Amaranth).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .checks import ceil_div
from .numerics import NORM_FRAC_BITS, NORM_RECIP_BITS, RECIP_BITS

__all__ = ["attention_latency", "attention_job_cycles", "norm_cycles", "mvm_latency", "job_latency", "softmax_latency",
           "topk_router_latency", "norm_latency",
           "residual_latency", "residual_cycles", "rope_latency", "rope_beats", "rope_cycles",
           "projection_latency", "projection_interval", "projection_cycles", "argmax_latency",
           "ec_select_cycles", "topk_window_cycles", "scheduler_window_cycles",
           "compute_cycles", "RouteTiming", "LayerTiming", "WINDOW_OVERHEAD", "SETTLE_MAX",
           "MODE_HOST", "MODE_WINDOW", "MODE_CACHED"]

MODE_HOST, MODE_WINDOW, MODE_CACHED = 0, 1, 2     # a window's route mode (the RTL's values)
WINDOW_OVERHEAD = 1         # the hand-over cycle after a window's last output beat
SETTLE_MAX = 2              # most cycles the scheduler waits for its queues' heads


def attention_latency(n_keys: int, blocks: int) -> int:
    """``AttentionUnit``: cycles from the handshake of a query's last beat (cycle 0) to the
    first cycle of its output, K and V offered every cycle: the scores (``L B``), the exp
    pipeline (``L + 2``), the reciprocal (``RECIP_BITS + 1``), the probabilities (``L + 1``),
    the read of ``p_0`` (1), the weighted sum (``L B``) and the hand-over (1)."""
    return 2 * n_keys * blocks + 2 * n_keys + RECIP_BITS + 6


def attention_job_cycles(n_keys: int, blocks: int) -> int:
    """``AttentionUnit``: cycles from a query's first beat to the next query's first beat,
    queries back to back (``blocks`` query beats, :func:`attention_latency` from the last
    one, ``blocks`` output beats; the next query is taken the cycle after the last)."""
    return attention_latency(n_keys, blocks) + 2 * blocks - 1


def norm_cycles(n_rows: int, d_model: int, lanes: int, act_bits: int, center: bool) -> int:
    """``NormUnit``, rows back to back without gaps or back-pressure: from the first row's
    first input handshake to the cycle after its last output beat; a row every
    ``norm_latency + d_model / lanes`` cycles."""
    return n_rows * (norm_latency(d_model, lanes, act_bits, center) + d_model // lanes)


def mvm_latency(input_bits: int, columns_per_adc: int) -> int:
    """Cycles from an MVM request's handshake to the first cycle its result is valid."""
    return input_bits * columns_per_adc + 4


def job_latency(mvm: int, hidden_blocks: int) -> int:
    """Cycles of an expert engine's job: both MVMs and the hidden blocks between them."""
    return 2 * mvm + hidden_blocks + 2


def softmax_latency(n_experts: int) -> int:
    """``GateSoftmax``: the max scan, the exp lookups (pipelined), the reciprocal's
    ``RECIP_BITS + 1`` cycles, the normalisation, whatever the mask."""
    return 2 * n_experts + 4 + RECIP_BITS + 1


def norm_latency(d_model: int, lanes: int, act_bits: int, center: bool) -> int:
    """``NormUnit``: cycles from a row's first input handshake to its first output beat's
    ``valid``: the ``d_model / lanes`` input beats, the mean (LayerNorm), the mean square, the
    square root (``act_bits + 1 + NORM_FRAC_BITS`` bits, one per cycle), the reciprocal
    (``NORM_RECIP_BITS + 1`` bits), the scale, the first buffer read and the output register.
    A row follows the previous one ``norm_latency + d_model / lanes`` cycles after it."""
    return (d_model // lanes + int(center) + act_bits + 1 + NORM_FRAC_BITS
            + NORM_RECIP_BITS + 4)


def topk_router_latency(n_experts: int, count: int) -> int:
    """``TokenChoiceRouter``: the logits through the top-k unit (``n_experts``), its ``count``
    results, the hand-over to the softmax (its latency is the same whatever the mask:
    over the selected experts or all of them), and the output cycle."""
    return n_experts + count + 2 + softmax_latency(n_experts)


def ec_select_cycles(n_experts: int, n_tokens: int, cap: int) -> int:
    """``ExpertChoiceRouter``: each expert takes its ``cap`` best of ``n_tokens`` score rows."""
    return n_experts * (n_tokens + 1 + cap)


def topk_window_cycles(n: int, count: int) -> int:
    """``StreamingTopK``: ``n`` items streamed in, ``count`` selections out."""
    return n + count


def scheduler_window_cycles(n_jobs: int, timestamps: int) -> int:
    """``GroupScheduler`` alone (engines always ready): one cycle per job written, one per
    timestamp issued."""
    return n_jobs + timestamps


def residual_latency() -> int:
    """``ResidualUnit``: cycles from a beat's ``i_pairs`` handshake to its ``o_sums.valid``
    (1 for both operands' requantisation, 1 for the sum and clamp); one beat per cycle."""
    return 2


def residual_cycles(n_beats: int) -> int:
    """``ResidualUnit``, no input gaps or back-pressure: from the cycle of the first beat's
    handshake to the cycle after the last output beat's handshake."""
    return n_beats + residual_latency()


def rope_latency() -> int:
    """``RopeUnit``: cycles from a beat's ``i_vectors`` handshake to its ``o_vectors.valid``
    (the table read, the four products, the rounding sums and clamp); one beat per cycle."""
    return 3


def rope_beats(head_dim: int, lanes: int) -> int:
    """``RopeUnit``: beats of one head vector (``lanes`` pairs each)."""
    return head_dim // (2 * lanes)


def rope_cycles(n_vectors: int, head_dim: int, lanes: int) -> int:
    """``RopeUnit``, no input gaps or back-pressure: from the cycle of the first beat's
    handshake to the cycle after the last output beat's handshake."""
    return n_vectors * rope_beats(head_dim, lanes) + rope_latency()


def projection_latency(mvm: int, in_blocks: int) -> int:
    """``ProjectionUnit``: cycles from a row's first input handshake to its first
    ``o_rows.valid`` (input every cycle, the bank free): the ``in_blocks`` input beats, the
    MVM's ``start`` and ``mvm`` cycles (the read of block 0 in its ``done`` cycle), the
    reduction into the output register."""
    return in_blocks + mvm + 2


def projection_interval(mvm: int, in_blocks: int, out_blocks: int) -> int:
    """``ProjectionUnit``: cycles between MVM starts with input offered every cycle and no
    back-pressure: the next row's beats (taken from the ``start`` cycle on) or the MVM and the
    read-out of the ``out_blocks`` (the bank's output buffer is replaced at ``start``)."""
    return max(in_blocks, mvm + out_blocks)


def projection_cycles(n_rows: int, mvm: int, in_blocks: int, out_blocks: int) -> int:
    """``ProjectionUnit``, no input gaps or back-pressure: from the cycle of the first row's
    first input handshake to the cycle after the last row's last output handshake."""
    return (projection_latency(mvm, in_blocks) + out_blocks
            + (n_rows - 1) * projection_interval(mvm, in_blocks, out_blocks))


def argmax_latency() -> int:
    """``ArgmaxUnit``: cycles from the handshake of a vector's last beat to its
    ``o_index.valid`` (the lane tree and the running maximum in the handshake's cycle, then
    the result register); one beat per cycle, vectors back to back."""
    return 1


def compute_cycles(loads_per_timestamp: Iterable[int], blocks: int,
                   latencies: Iterable[int] | int) -> int:
    """Cycles the layer spends in a window's timestamps: each loads its tokens (2 ``blocks``
    cycles per token), starts its jobs and waits for the slowest (``latencies``: one number,
    or one per timestamp), then 5 cycles of control."""
    loads = [int(x) for x in loads_per_timestamp]
    lat = [int(latencies)] * len(loads) if isinstance(latencies, int) else \
        [int(x) for x in latencies]
    if len(lat) != len(loads):
        raise ValueError(f"{len(lat)} latencies for {len(loads)} timestamps")
    return sum(n * 2 * blocks + j + 5 for n, j in zip(loads, lat))


@dataclass(frozen=True)
class RouteTiming:
    """The route unit's timing parameters: its router, ``n_experts`` routed experts, the gate
    banks' MVM latencies and logit/hidden blocks, the shared gate's beat."""

    router: str                       # "expert_choice" or "top_k"
    n_experts: int
    gate_stages: tuple[tuple[int, int], ...]   # per gate bank: (mvm_latency, out_blocks)
    shared_gate: bool = False

    @property
    def gate_cycles(self) -> int:
        """Stage 1 of a token: from the cycle after its hand-over to the first cycle it can
        pass its logits on."""
        return sum(lat + blocks for lat, blocks in self.gate_stages) + len(self.gate_stages) + 1

    def router_cycles(self, mode: int, *, first: bool = False, insert: bool = False,
                      n_routes: int = 0, go_rows_read: int = 0, go_dram_rows: int = 0) -> int:
        """Stage 2 of a token: cycles from its hand-over to the next hand-over stage 2 can
        take. ``first``/``insert``: token 0 of a window that fills the GO cache; ``n_routes``:
        a top-k token's selections (dropped ones included); ``go_rows_read``/
        ``go_dram_rows``: rows a cached decision scans in SRAM / in DRAM."""
        beat = int(self.shared_gate)
        if self.router == "top_k":
            return topk_router_latency(self.n_experts, n_routes) + 3 + n_routes + beat
        soft = softmax_latency(self.n_experts) + 2 + beat
        if mode == MODE_WINDOW:
            return soft + 1 + (1 if first and insert else 0)
        return soft + go_rows_read + go_dram_rows + self.n_experts + 5

    def close_cycles(self, mode: int, n_tokens: int, cap: int) -> int:
        """Cycles after the window's last token until its closing beat is taken."""
        if self.router == "expert_choice" and mode == MODE_WINDOW:
            return ec_select_cycles(self.n_experts, n_tokens, cap) + 1
        return 1


@dataclass(frozen=True)
class LayerTiming:
    """Timing parameters of an MoE layer: ``blocks`` per token vector, each group's job
    latency, the scheduler's queue depth and the route unit's timing (``None``: routes from
    the host). Built from the layer's specification by :meth:`of`."""

    blocks: int
    group_latencies: tuple[int, ...]
    queue_depth: int
    route: RouteTiming | None = None

    @classmethod
    def of(cls, layer, tile) -> LayerTiming:
        """From a ``moepim.spec.layer.LayerSpec`` and a ``moepim.spec.tile.TileSpec``."""
        lanes = layer.lanes
        mvm = tile.mvm_latency
        routed = job_latency(mvm, ceil_div(layer.d_ff, lanes))
        lat = [routed] * layer.n_groups
        if layer.shared_d_ff:
            lat[-1] = job_latency(mvm, ceil_div(layer.shared_d_ff, lanes))
        route = None
        if layer.router is not None:
            n = layer.n_routed_experts
            n_cols = n + int(layer.shared_gate)
            widths = [layer.gate_hidden, n_cols] if layer.gate_hidden else [n_cols]
            route = RouteTiming(router=layer.router, n_experts=n,
                                gate_stages=tuple((mvm, ceil_div(w, lanes)) for w in widths),
                                shared_gate=layer.shared_gate)
        return cls(blocks=layer.d_model // lanes, group_latencies=tuple(lat),
                   queue_depth=layer.queue_depth, route=route)

    @property
    def job_latency(self) -> int:
        """The longest job latency of the layer's engines."""
        return max(self.group_latencies)

    def timestamp_latencies(self, groups_busy: Sequence[Sequence[bool]]) -> list[int]:
        """Per timestamp (a row of per-group busy flags), the latency of its slowest working
        engine (0 when no group works)."""
        return [max((lat for lat, busy in zip(self.group_latencies, row) if busy), default=0)
                for row in groups_busy]

    def compute_cycles(self, loads_per_timestamp, groups_busy) -> int:
        """A window's timestamps (:func:`compute_cycles` with each timestamp's slowest
        working engine)."""
        return compute_cycles(loads_per_timestamp, self.blocks,
                              self.timestamp_latencies(groups_busy))

    def route_cycles(self, mode: int, n_tokens: int, *, cap: int = 1, insert: bool = False,
                     routes_per_token: Sequence[int] = (), go_rows_read: int = 0,
                     go_dram_rows: int = 0) -> int | None:
        """Cycles of a window's routing phase (the RTL counter ``route_cycles``:
        back-pressure on the routes excluded); ``None`` when the host supplies the routes.
        While stage 2 works on token ``t``, the layer reads token ``t+1`` into the gate bank
        (``blocks + 1`` cycles), hands it over (1) and stage 1 runs the gate; the hand-over
        of its logits waits for stage 2. After the last token, the window's close."""
        if mode == MODE_HOST:
            return None
        ru = self.route
        if ru is None:
            raise ValueError("a routed window on a layer without a route unit")
        load = stage2_free = 0
        for t in range(n_tokens):
            handover = load + self.blocks + 1
            handoff = max(handover + ru.gate_cycles + 1, stage2_free)
            stage2_free = handoff + ru.router_cycles(
                mode, first=t == 0, insert=insert,
                n_routes=routes_per_token[t] if routes_per_token else 0,
                go_rows_read=go_rows_read, go_dram_rows=go_dram_rows)
            load = handoff + 2
        return stage2_free + ru.close_cycles(mode, n_tokens, cap)

    def settle_cycles(self, job_groups: Sequence[int]) -> int:
        """The scheduler's settle: 1 when the window's last job is the first of its group and
        the group queues hold more than one job (a buffered FIFO shows a job written into it
        empty two cycles later, one later than the scheduler would start; a one-entry queue
        is a register, visible the next cycle), else 0. ``job_groups``: each job's group,
        in order."""
        if not job_groups or self.queue_depth <= 1:
            return 0
        return int(sum(1 for g in job_groups if g == job_groups[-1]) == 1)

    def window_cycles(self, n_tokens: int, n_jobs: int, compute: int, route: int | None,
                      settle: int = 0) -> int:
        """A window without input gaps or back-pressure: token beats, the routing phase, job
        beats, the timestamps, the output beats and the hand-over (and ``settle``)."""
        beats = n_tokens * self.blocks
        return (beats + (route or 0) + max(1, n_jobs) + compute + beats + WINDOW_OVERHEAD
                + settle)


# ---------------------------------------------------------------------------------------------
# ``AttentionBlock`` (moepim.hw.attention_block): the attention half of a decoder layer

ATTENTION_BLOCK_PHASE_OVERHEAD = 1   # the buffer read before a buffer-fed phase's first beat
KV_DRAM_READ_LATENCY = 1    # a KV DRAM read's response: the cycle after its request


def kv_dram_words_per_row(head_dim: int, lanes: int) -> int:
    """``AttentionBlock``'s KV DRAM words of one position: its ``head_dim / lanes`` K beats
    and as many V beats (a word: one beat of every K/V head)."""
    return 2 * (head_dim // lanes)


def kv_dram_rows(n_rows: int, first_position: int, kv_cache_rows: int | None) -> dict:
    """``AttentionBlock``'s KV rows through DRAM in a window (positions at or beyond
    ``kv_cache_rows`` live in DRAM; ``None``: all on chip): ``written``, the window's new
    rows at positions ``>= kv_cache_rows``; ``read``, the earlier rows at positions
    ``kv_cache_rows .. first_position - 1``, once."""
    if kv_cache_rows is None:
        return {"written": 0, "read": 0}
    end = first_position + n_rows
    return {"written": max(0, end - max(first_position, kv_cache_rows)),
            "read": max(0, first_position - kv_cache_rows)}


def attention_block_phases(n_rows: int, first_position: int, *, d_model: int, n_heads: int,
                           n_kv_heads: int, head_dim: int, lanes: int, act_bits: int,
                           center: bool, mvm: int, rope: bool = True,
                           n_attention_units: int = 1,
                           kv_cache_rows: int | None = None) -> dict[str, int]:
    """``AttentionBlock``, a window of ``n_rows`` rows at positions ``first_position ..``
    without input gaps or back-pressure, per phase (one after another): ``attn_norm`` from the
    first input handshake; every later phase from the cycle after the previous one's last
    output handshake to the cycle after its own, i.e. its units' formula (as
    ``moepim.sim.generation_run.dense_cycles`` composes them) plus
    ``ATTENTION_BLOCK_PHASE_OVERHEAD``. ``rope`` is 0 without RoPE. The window's cycles are
    the sum (:func:`attention_block_cycles`).

    The KV DRAM phases (0 with ``kv_cache_rows`` ``None``, and when the window moves no row;
    :func:`kv_dram_rows`, ``W = 2 head_dim / lanes`` words a row), under a DRAM that takes
    every request and answers a read the cycle after it (``KV_DRAM_READ_LATENCY``):
    ``kv_spill`` ``ATTENTION_BLOCK_PHASE_OVERHEAD + written W`` (the store read before the
    first write, then a write a cycle), ``kv_fetch`` ``read W + KV_DRAM_READ_LATENCY`` (a
    read request a cycle from the phase's first cycle, the last response a cycle after the
    last request)."""
    T, blocks, hb = n_rows, d_model // lanes, head_dim // lanes
    q_blocks = ceil_div(n_heads * head_dim, lanes)
    kv_blocks = ceil_div(n_kv_heads * head_dim, lanes)
    over = ATTENTION_BLOCK_PHASE_OVERHEAD
    rounds = ceil_div(n_heads, n_attention_units)
    kv = kv_dram_rows(T, first_position, kv_cache_rows)
    words = kv_dram_words_per_row(head_dim, lanes)
    return {
        "attn_norm": norm_cycles(T, d_model, lanes, act_bits, center),
        "qkv_projection": over + max(projection_cycles(T, mvm, blocks, q_blocks),
                                     projection_cycles(T, mvm, blocks, kv_blocks)),
        "rope": over + max(rope_cycles(T * n_heads, head_dim, lanes),
                           rope_cycles(T * n_kv_heads, head_dim, lanes)) if rope else 0,
        "kv_spill": over + kv["written"] * words if kv["written"] else 0,
        "kv_fetch": kv["read"] * words + KV_DRAM_READ_LATENCY if kv["read"] else 0,
        "attention": over + rounds * sum(attention_job_cycles(first_position + t + 1, hb)
                                         for t in range(T)),
        "o_projection": over + projection_cycles(T, mvm, q_blocks, blocks),
        "residual": over + residual_cycles(T * blocks),
    }


def attention_block_cycles(n_rows: int, first_position: int, **shape) -> int:
    """``AttentionBlock``: a window's cycles from its first ``i_rows`` handshake to the cycle
    after its last ``o_rows`` handshake (:func:`attention_block_phases`, summed)."""
    return sum(attention_block_phases(n_rows, first_position, **shape).values())


__all__ += ["ATTENTION_BLOCK_PHASE_OVERHEAD", "KV_DRAM_READ_LATENCY", "kv_dram_words_per_row",
            "kv_dram_rows", "attention_block_phases", "attention_block_cycles"]


# ---------------------------------------------------------------------------------------------
# ``DecoderLayer`` (moepim.hw.decoder_layer): the whole decoder layer

DECODER_LAYER_PHASE_OVERHEAD = 1    # the buffer read before a buffer-fed phase's first beat


def decoder_layer_phases(n_rows: int, first_position: int, *, d_model: int, n_heads: int,
                         n_kv_heads: int, head_dim: int, lanes: int, act_bits: int,
                         center: bool, mvm: int, rope: bool = True, n_attention_units: int = 1,
                         route: int | None, n_jobs: int, compute: int,
                         settle: int = 0, kv_cache_rows: int | None = None) -> dict[str, int]:
    """``DecoderLayer``, a window of ``n_rows`` rows at positions ``first_position ..``, per
    phase (one after another), under no input gaps, no back-pressure on ``o_rows`` or on the
    routes, and a host that offers the window's job plan from the cycle after the closing
    route beat's handshake (after the last token beat when the host routes). Counted: the
    attention block's phases (:func:`attention_block_phases` with ``kv_cache_rows``, its KV
    DRAM phases included, ``attn_norm`` from the first ``i_rows`` handshake); then, each from the cycle after the previous phase's end to the
    cycle after its own last handshake:

    * ``moe_norm``: the ``x1`` buffer's rows through the MoE norm into the MoE layer,
      ``norm_cycles(T) + DECODER_LAYER_PHASE_OVERHEAD`` (the buffer read before the first
      beat);
    * ``route``: ``route``, the MoE layer's routing phase (``LayerTiming.route_cycles``; 0
      for ``None``, the host's routes), to the cycle after the closing route beat;
    * ``jobs``: ``max(1, n_jobs)`` plan beats (an empty plan is one beat);
    * ``experts``: the MoE layer's timestamps, ``compute`` (``LayerTiming.compute_cycles``)
      plus the scheduler's ``settle`` (``LayerTiming.settle_cycles``), to the cycle its
      read-out starts;
    * ``moe_residual``: the MoE layer's read-out paired with the ``x1`` rows through the
      second ResidualUnit to ``o_rows``: ``residual_cycles(T d_model / lanes) +
      DECODER_LAYER_PHASE_OVERHEAD`` (the output buffer's read before the first beat).

    The window (first ``i_rows`` handshake to the cycle after the last ``o_rows`` handshake)
    is their sum (:func:`decoder_layer_cycles`)."""
    over = DECODER_LAYER_PHASE_OVERHEAD
    phases = attention_block_phases(
        n_rows, first_position, d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads,
        head_dim=head_dim, lanes=lanes, act_bits=act_bits, center=center, mvm=mvm, rope=rope,
        n_attention_units=n_attention_units, kv_cache_rows=kv_cache_rows)
    return {**phases,
            "moe_norm": over + norm_cycles(n_rows, d_model, lanes, act_bits, center),
            "route": route or 0,
            "jobs": max(1, n_jobs),
            "experts": compute + settle,
            "moe_residual": over + residual_cycles(n_rows * (d_model // lanes))}


def decoder_layer_cycles(n_rows: int, first_position: int, **shape) -> int:
    """``DecoderLayer``: a window's cycles from its first ``i_rows`` handshake to the cycle
    after its last ``o_rows`` handshake (:func:`decoder_layer_phases`, summed)."""
    return sum(decoder_layer_phases(n_rows, first_position, **shape).values())


__all__ += ["DECODER_LAYER_PHASE_OVERHEAD", "decoder_layer_phases", "decoder_layer_cycles"]
