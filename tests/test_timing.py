"""The timing model (``moepim.spec.timing``) on hand-computed numbers, and its agreement with
the parameters of the RTL objects built for the same specification. That the RTL takes these
cycles is asserted by the layer runs (``tests/test_moe_layer.py``, every window) and the
timing level's property (``tests/test_timing_level.py``)."""

import subprocess
import sys

import pytest

from moepim.spec import timing
from moepim.spec.layer import LayerSpec
from moepim.spec.tile import TileSpec
from moepim.spec.timing import MODE_CACHED, MODE_HOST, MODE_WINDOW, LayerTiming

# 8-bit inputs, 256 columns on 32 ADCs: 8 columns per ADC
TILE = TileSpec(n_rows=256, n_columns=256, bits_per_cell=8, weight_bits=8, input_bits=8,
                n_adcs=32, adc_bits=8)
LAYER = LayerSpec(d_model=64, d_ff=96, n_experts=5, n_groups=3, group_size=2, n_tokens=4,
                  lanes=16, gate_bits=8, multiplier_bits=15, shared_d_ff=32,
                  router="expert_choice", c_max=2, go_cache_rows=4, max_sequence=6,
                  shared_gate=True)


def test_tile_and_engine_latencies_by_hand():
    assert TILE.mvm_latency == 8 * 8 + 4 == 68
    t = LayerTiming.of(LAYER, TILE)
    assert t.blocks == 4
    # routed engines: 2 * 68 + ceil(96 / 16) + 2; the shared engine's d_ff is 32: 2 blocks
    assert t.group_latencies == (144, 144, 140)
    assert t.job_latency == 144
    assert t.queue_depth == 8


def test_compute_cycles_by_hand():
    t = LayerTiming.of(LAYER, TILE)
    # timestamp 1: 2 tokens, groups 0 and 2 work (slowest 144); timestamp 2: 1 token, only
    # the shared group (140); timestamp 3: nothing works
    busy = [[True, False, True], [False, False, True], [False, False, False]]
    loads = [2, 1, 0]
    assert t.timestamp_latencies(busy) == [144, 140, 0]
    assert t.compute_cycles(loads, busy) == (2 * 2 * 4 + 144 + 5) + (1 * 2 * 4 + 140 + 5) + 5
    with pytest.raises(ValueError, match="2 latencies for 3 timestamps"):
        timing.compute_cycles(loads, 4, [1, 2])


def test_route_cycles_by_hand():
    t = LayerTiming.of(LAYER, TILE)
    ru = t.route
    # 4 routed experts and the shared gate's column: one logit block
    assert ru.n_experts == 4 and ru.gate_stages == ((68, 1),)
    assert ru.gate_cycles == 68 + 1 + 2
    soft = 2 * 4 + 4 + 18 + 1                   # GateSoftmax over 4 experts: 31
    assert timing.softmax_latency(4) == soft
    # a window of 2 tokens filling the GO cache: stage 2 = S + 2 + beat + 1 (+1 on token 0)
    s2_first, s2 = soft + 2 + 1 + 1 + 1, soft + 2 + 1 + 1
    # token 0: read (4 blocks + 1), hand-over, gate (71) + 1; token 1 read from hand-off + 2
    h0 = (4 + 1) + 71 + 1
    h1 = max(h0 + 2 + 5 + 71 + 1, h0 + s2_first)
    close = 4 * (2 + 1 + 2) + 1                 # expert choice over 2 tokens, cap 2
    assert t.route_cycles(MODE_WINDOW, 2, cap=2, insert=True) == h1 + s2 + close
    # a cached decode step reading 3 rows from SRAM and 1 from DRAM
    assert t.route_cycles(MODE_CACHED, 1, cap=1, go_rows_read=3, go_dram_rows=1) == \
        h0 + (soft + 2 + 1 + 3 + 1 + 4 + 5) + 1
    assert t.route_cycles(MODE_HOST, 3) is None


def test_top_k_and_mlp_gate_by_hand():
    mlp = LayerSpec(d_model=64, d_ff=64, n_experts=8, n_groups=4, group_size=2, n_tokens=2,
                    lanes=16, gate_bits=8, multiplier_bits=15, router="top_k", top_k=2,
                    gate_hidden=40)
    ru = LayerTiming.of(mlp, TILE).route
    assert ru.gate_stages == ((68, 3), (68, 1))           # 40 hidden -> 3 blocks, 8 logits
    assert ru.gate_cycles == 68 + 3 + 68 + 1 + 3
    # top-k: n + k + 2 + softmax(n), then 3 + k, whatever the renormalisation
    assert ru.router_cycles(MODE_WINDOW, n_routes=2) == (8 + 2 + 2 + (2 * 8 + 23)) + 3 + 2
    assert ru.close_cycles(MODE_WINDOW, 2, 1) == 1
    assert timing.ec_select_cycles(16, 40, 10) == 16 * 51


def test_window_and_settle_by_hand():
    t = LayerTiming.of(LAYER, TILE)
    # 3 tokens (4 blocks each), route 100, 5 jobs, compute 400, one settle cycle
    assert t.window_cycles(3, 5, 400, 100, 1) == 12 + 100 + 5 + 400 + 12 + 1 + 1
    assert t.window_cycles(1, 0, 5, None) == 4 + 1 + 5 + 4 + 1     # no jobs: one empty beat
    # settle: the last job is the first of its group, with queues deeper than one job
    assert t.settle_cycles([0, 0, 1]) == 1
    assert t.settle_cycles([0, 1, 1]) == 0
    assert t.settle_cycles([]) == 0
    one_deep = LayerTiming(blocks=4, group_latencies=(10,), queue_depth=1)
    assert one_deep.settle_cycles([0, 1]) == 0


def test_rtl_objects_state_the_timing_models_latencies():
    """The RTL blocks built for LAYER report the latencies the model derives from the spec
    (the hardware's parameters, not its formulas: those live in moepim.spec.timing)."""
    from moepim.sim.moe_run import make_component

    tile = {**TILE.__dict__, "counter_bits": 48}
    dut = make_component(LAYER, tile)
    t = LayerTiming.of(LAYER, TILE)
    assert dut.blocks == t.blocks and dut.scheduler.depth == t.queue_depth
    assert dut.engine.job_latency == t.group_latencies[0]
    assert dut.shared_engine.job_latency == t.group_latencies[-1]
    ru = dut.route_unit
    assert tuple((b.mvm_latency, b.out_blocks) for b in ru.banks) == t.route.gate_stages
    assert ru.softmax.latency() == timing.softmax_latency(t.route.n_experts)


def test_spec_imports_nothing_heavy():
    """The spec package is the leaf both hw and models import: no numpy, torch or Amaranth."""
    code = ("import sys, moepim.spec.timing, moepim.spec.tile, moepim.spec.layer;"
            "print(sorted(m for m in ('numpy', 'torch', 'amaranth') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
