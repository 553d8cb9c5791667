"""One off-chip DRAM channel with a request queue: what the layer's transfers wait for.

A request (``kind``, ``n_bytes``, ``arrival_ns``) is served first come, first served: its data
transfer starts when it has arrived and the channel has finished the transfers queued before
it, and occupies the channel for ``n_bytes / bandwidth``; the access latency (``latency_ns``)
is pipelined (it delays the request's completion, not the channel). So a request that
arrives while others are queued or transferring waits (``queue_ns``), and requests that
arrive together contend: each waits for the ones submitted before it.

    start = max(arrival, channel free);  done = start + latency + n_bytes / bandwidth

Energy follows the paper's simulator: active power while the channel transfers (``busy_ns``),
idle power for the rest of the run; ``active_power / bandwidth`` is the energy per byte.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DramChannel", "DramRequest"]


@dataclass
class DramRequest:
    kind: str
    n_bytes: int
    arrival_ns: float
    start_ns: float
    done_ns: float

    @property
    def queue_ns(self) -> float:
        return self.start_ns - self.arrival_ns


class DramChannel:
    def __init__(self, *, bandwidth_gbps: float, latency_ns: float):
        if not bandwidth_gbps > 0:
            raise ValueError(f"bandwidth_gbps must be > 0, got {bandwidth_gbps}")
        if latency_ns < 0:
            raise ValueError(f"latency_ns must be >= 0, got {latency_ns}")
        self.bandwidth_gbps = float(bandwidth_gbps)      # GB/s = bytes per ns
        self.latency_ns = float(latency_ns)
        self.requests: list[DramRequest] = []
        self._free_ns = 0.0

    def submit(self, kind: str, n_bytes: int, arrival_ns: float) -> DramRequest:
        """Queue a transfer; requests must be submitted in order of arrival."""
        if n_bytes < 0:
            raise ValueError(f"n_bytes must be >= 0, got {n_bytes}")
        if self.requests and arrival_ns < self.requests[-1].arrival_ns:
            raise ValueError(f"request {kind!r} arrives at {arrival_ns} ns, before the last "
                             f"one ({self.requests[-1].arrival_ns} ns): submit in arrival order")
        transfer = n_bytes / self.bandwidth_gbps
        start = max(float(arrival_ns), self._free_ns)
        self._free_ns = start + transfer
        req = DramRequest(kind, int(n_bytes), float(arrival_ns), start,
                          start + self.latency_ns + transfer)
        self.requests.append(req)
        return req

    @property
    def busy_ns(self) -> float:
        return sum(r.n_bytes for r in self.requests) / self.bandwidth_gbps

    def summary(self) -> dict:
        by_kind: dict = {}
        for r in self.requests:
            k = by_kind.setdefault(r.kind, {"requests": 0, "bytes": 0, "queue_ns": 0.0})
            k["requests"] += 1
            k["bytes"] += r.n_bytes
            k["queue_ns"] += r.queue_ns
        waits = [r.queue_ns for r in self.requests]
        return {"requests": len(self.requests), "bytes": sum(r.n_bytes for r in self.requests),
                "busy_ns": self.busy_ns, "by_kind": by_kind,
                "queue_ns_total": sum(waits), "queue_ns_max": max(waits, default=0.0),
                "last_done_ns": max((r.done_ns for r in self.requests), default=0.0)}
