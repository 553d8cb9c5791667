"""The DRAM channel: first come first served, pipelined latency, contention; the layer's
DRAM timeline built on it."""

import dataclasses

import pytest

from moepim.models.dram import DramChannel
from moepim.sim.config import REPO_ROOT, Constant, load_experiment
from moepim.sim.layer_run import dram_timeline


def test_single_request_takes_latency_plus_transfer():
    ch = DramChannel(bandwidth_gbps=2.0, latency_ns=30.0)
    r = ch.submit("a", 100, 10.0)
    assert (r.start_ns, r.done_ns, r.queue_ns) == (10.0, 10.0 + 30.0 + 50.0, 0.0)
    assert ch.busy_ns == 50.0


def test_simultaneous_requests_queue_behind_each_other():
    ch = DramChannel(bandwidth_gbps=1.0, latency_ns=20.0)
    a = ch.submit("a", 40, 0.0)
    b = ch.submit("b", 10, 0.0)
    # b waits for a's transfer, not for a's latency (the latency is pipelined)
    assert b.start_ns == 40.0 and b.queue_ns == 40.0
    assert b.done_ns == 40.0 + 20.0 + 10.0 and a.done_ns == 60.0
    # a request arriving after the channel is free does not wait
    c = ch.submit("c", 5, 100.0)
    assert c.queue_ns == 0.0 and c.done_ns == 125.0
    s = ch.summary()
    assert s["requests"] == 3 and s["bytes"] == 55 and s["busy_ns"] == 55.0
    assert s["queue_ns_total"] == 40.0 and s["queue_ns_max"] == 40.0
    assert s["by_kind"]["b"] == {"requests": 1, "bytes": 10, "queue_ns": 40.0}


def test_requests_must_come_in_arrival_order_and_be_valid():
    ch = DramChannel(bandwidth_gbps=1.0, latency_ns=0.0)
    ch.submit("a", 1, 5.0)
    with pytest.raises(ValueError, match="arrival order"):
        ch.submit("b", 1, 4.0)
    with pytest.raises(ValueError, match="n_bytes"):
        ch.submit("c", -1, 6.0)
    with pytest.raises(ValueError, match="bandwidth"):
        DramChannel(bandwidth_gbps=0.0, latency_ns=0.0)


def test_layer_timeline_waits_for_reads_and_contends_with_the_go_cache():
    exp = load_experiment(REPO_ROOT / "configs" / "experiments" / "layer-small.yaml")
    exp = dataclasses.replace(exp, dram=dataclasses.replace(
        exp.dram, bandwidth_gbps=Constant(2.0, "test"), latency_ns=Constant(10.0, "test")))
    clock = exp.tech.clock_ns.value
    d = exp.model.d_model                                # one byte per 8-bit value
    windows = [{"tokens": 4, "cycles": 100}, {"tokens": 1, "cycles": 30}]
    go = {"row_bytes": 32, "dram_traffic": [{"read_rows": 0, "write_rows": 2},
                                            {"read_rows": 3, "write_rows": 1}]}
    t = dram_timeline(exp, windows, go)
    w0, w1 = t["windows"]
    # prefill: the prompt read (4 vectors), then compute, then the results written
    assert w0["compute_start_ns"] == pytest.approx(10.0 + 4 * d / 2.0)
    assert w0["compute_end_ns"] == pytest.approx(w0["compute_start_ns"] + 100 * clock)
    # decode: the token read and the cache's read-back contend; compute waits for both
    assert w1["start_ns"] >= w0["done_ns"]
    assert w1["compute_start_ns"] == pytest.approx(w1["start_ns"] + 10.0 + (d + 3 * 32) / 2.0)
    assert t["by_kind"]["tokens_in"]["bytes"] == 5 * d
    assert t["by_kind"]["results_out"]["bytes"] == 5 * d
    assert t["by_kind"]["go_cache_read"]["bytes"] == 96
    assert t["by_kind"]["go_cache_spill"]["bytes"] == 96
    assert t["by_kind"]["go_cache_read"]["queue_ns"] == pytest.approx(d / 2.0)
    compute = (100 + 30) * clock
    assert t["end_ns"] == pytest.approx(compute + t["stall_ns"])
    assert t["energy_pj_per_byte"] == pytest.approx(
        exp.dram.active_power_w.value / 2.0 * 1e3)
