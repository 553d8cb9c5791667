"""Group-wise scheduling of (token, expert) jobs onto peripheral-sharing groups.

One timestamp = one evaluation of one crossbar per group. A group's jobs form a queue in
token order (a token's experts of the group in ascending index). A token vector is loaded once
per timestamp in which any group processes it (broadcast), so "tokens loaded" counts the
distinct tokens of every timestamp.

Policies (the primary paper's schedule figure, and its authors' code moe_schedule.py):

* ``single_token``: tokens one at a time; token ``t`` takes ``max_g load_g[t]`` timestamps.
* ``compact``: every group drains its own queue back to back; length ``T = max_g len(queue_g)``.
* ``reschedule_heuristic``: the authors' idle-insertion heuristic (``optimized_compact_schedule``)
  reproduced as published.
* ``reschedule``: compact's length ``T``, with idle timestamps placed so that groups meet on the
  same token. Main method, progressive alignment: groups are placed longest first, each by an
  exact dynamic programme that puts its jobs (in order, one per timestamp, within ``T``) where
  they add the fewest new loads given the groups already placed; then each group is
  re-aligned against all the others for a few rounds (a step never raises the total). Two
  other candidates are built, a timestamp-by-timestamp greedy (forced groups load their
  tokens, others work only on loaded tokens) and ``reschedule_heuristic``; the schedule with
  the fewest loads is returned.

  Guarantees: exactly ``T`` timestamps (as ``compact``); never more loads than
  ``reschedule_heuristic`` nor than ``compact``; each group's jobs stay in token order. Not
  proven optimal in general: :func:`reschedule_optimal` (exhaustive, small instances) measures
  the gap in the tests; the schedule figure's example reaches its optimum, 12.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from itertools import combinations

import numpy as np

from .grouping import check_groups
from .policies import POLICIES

__all__ = ["Schedule", "group_queues", "schedule", "POLICIES", "reschedule_optimal",
           "IDLE"]

IDLE = -1


@dataclass
class Schedule:
    """``tokens[s, g]`` / ``experts[s, g]``: the job of group ``g`` in timestamp ``s``
    (IDLE = -1)."""

    policy: str
    groups: list
    tokens: np.ndarray
    experts: np.ndarray

    @property
    def timestamps(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def loads_per_timestamp(self) -> np.ndarray:
        return np.array([len(set(r[r != IDLE].tolist())) for r in self.tokens], dtype=np.int64)

    @property
    def tokens_loaded(self) -> int:
        return int(self.loads_per_timestamp.sum())

    def group_stats(self) -> list[dict]:
        out = []
        for g in range(self.tokens.shape[1]):
            col = self.tokens[:, g]
            busy = np.flatnonzero(col != IDLE)
            last = int(busy.max()) + 1 if busy.size else 0
            out.append({"group": g, "experts": list(self.groups[g]), "busy": int(busy.size),
                        "idle": int(self.timestamps - busy.size),
                        "stalls": int(last - busy.size)})   # idle timestamps before its last job
        return out

    def buffer_peak(self) -> int:
        """Most token vectors held at once: a token stays from its first to its last timestamp."""
        first, last = {}, {}
        for s, row in enumerate(self.tokens):
            for t in set(row[row != IDLE].tolist()):
                first.setdefault(t, s)
                last[t] = s
        occupancy = np.zeros(self.timestamps + 1, dtype=np.int64)
        for t in first:
            occupancy[first[t]] += 1
            occupancy[last[t] + 1] -= 1
        return int(np.cumsum(occupancy).max(initial=0))

    def plan(self) -> list[list[tuple[int, int, int]]]:
        """Per group, its jobs as ``(token, expert, idle_before)``: the idle timestamps the group
        waits before each job. Any schedule is exactly this plan (trailing idles implicit);
        it is what ``moepim.hw.GroupScheduler`` executes."""
        out = []
        for g in range(self.tokens.shape[1]):
            jobs, idle = [], 0
            for s in range(self.timestamps):
                if self.tokens[s, g] == IDLE:
                    idle += 1
                else:
                    jobs.append((int(self.tokens[s, g]), int(self.experts[s, g]), idle))
                    idle = 0
            out.append(jobs)
        return out

    def to_dict(self) -> dict:
        return {"policy": self.policy, "groups": [list(g) for g in self.groups],
                "timestamps": self.timestamps, "tokens_loaded": self.tokens_loaded,
                "loads_per_timestamp": self.loads_per_timestamp.tolist(),
                "buffer_peak": self.buffer_peak(), "per_group": self.group_stats(),
                "by_timestamp": {"tokens": self.tokens.tolist(),
                                 "experts": self.experts.tolist()}}


def group_queues(mask: np.ndarray, groups) -> list[list[tuple[int, int]]]:
    """Per group, its (token, expert) jobs in token order, experts ascending within a token."""
    mask = np.asarray(mask, dtype=bool)
    groups = check_groups(groups, mask.shape[1])
    queues = []
    for g in groups:
        members = sorted(g)
        queues.append([(t, e) for t in range(mask.shape[0]) for e in members if mask[t, e]])
    return queues


def _table(columns: list[list], length: int):
    tokens = np.full((length, len(columns)), IDLE, dtype=np.int64)
    experts = np.full((length, len(columns)), IDLE, dtype=np.int64)
    for g, col in enumerate(columns):
        if len(col) > length:
            raise AssertionError(f"group {g} needs {len(col)} timestamps, more than {length}")
        for s, job in enumerate(col):
            if job is not None:
                tokens[s, g], experts[s, g] = job
    return tokens, experts


def _single_token(queues, n_tokens):
    columns = [[] for _ in queues]
    by_token = [{} for _ in queues]
    for g, q in enumerate(queues):
        for t, e in q:
            by_token[g].setdefault(t, []).append((t, e))
    for t in range(n_tokens):
        rows = max((len(b.get(t, [])) for b in by_token), default=0)
        for g, b in enumerate(by_token):
            jobs = b.get(t, [])
            columns[g].extend(jobs + [None] * (rows - len(jobs)))
    return columns, max((len(c) for c in columns), default=0)


def _heuristic(queues, n_tokens, length):
    """The authors' ``optimized_compact_schedule`` / ``where_to_insert_space``, as published."""
    loads = np.array([[sum(1 for t, _ in q if t == tok) for tok in range(n_tokens)]
                      for q in queues], dtype=np.int64)
    cum = np.cumsum(loads, axis=1)
    critical = int(np.argmax(cum[:, -1])) if n_tokens else 0
    columns = []
    for g, q in enumerate(queues):
        r = (cum[critical] - cum[g]).copy()
        inserts = []
        for i in range(n_tokens):
            if r[-1] == 0:
                break
            if r[i] > 0:
                w = r[i:]
                positive = int((w > 0).sum())
                if positive > (n_tokens - i) - positive:
                    s = int(w[w > 0].min())
                    inserts.append((i, s))
                    r[i:] -= s
        col = list(q)
        for i, s in inserts:
            if all(job is None or job[0] < i for job in col):
                break
            at = next(k for k, job in enumerate(col) if job is not None and job[0] >= i)
            col[at:at] = [None] * s
        columns.append(col)
    return columns


def _greedy(queues, length):
    heads = [0] * len(queues)
    columns = [[] for _ in queues]
    for s in range(length):
        left = length - s
        remaining = [len(q) - h for q, h in zip(queues, heads)]
        forced = {queues[g][heads[g]][0] for g in range(len(queues)) if remaining[g] == left
                  and remaining[g] > 0}
        pending = [queues[g][heads[g]][0] for g in range(len(queues)) if remaining[g] > 0]
        loaded = forced or ({min(pending)} if pending else set())
        for g, q in enumerate(queues):
            if remaining[g] > 0 and q[heads[g]][0] in loaded:
                columns[g].append(q[heads[g]])
                heads[g] += 1
            else:
                columns[g].append(None)
    return columns


def _align_one(tokens: list[int], counts: list[dict], length: int) -> list[int]:
    """Timestamps for one group's jobs (in order, one per timestamp) adding the fewest new
    loads, given how many other groups process each token in each timestamp (``counts``):
    exact, by DP."""
    n = len(tokens)
    if n == 0:
        return []
    big = 1 << 40
    # cost[j, s] = 1 if job j in timestamp s loads a token no other group loads there
    cost = np.array([[0 if counts[s].get(t, 0) else 1 for s in range(length)] for t in tokens],
                    dtype=np.int64)
    best = np.full((n + 1, length + 1), big, dtype=np.int64)   # first j jobs, first s steps
    best[0, :] = 0
    for j in range(1, n + 1):
        place = np.full(length + 1, big, dtype=np.int64)
        place[1:] = best[j - 1, :-1] + cost[j - 1]             # job j-1 in timestamp s-1
        best[j] = np.minimum.accumulate(place)
    where, s = [], length
    for j in range(n, 0, -1):
        while best[j, s - 1] == best[j, s]:                     # timestamp s-1 unused by job j-1
            s -= 1
        where.append(s - 1)
        s -= 1
    return where[::-1]


def _align(queues, length, rounds: int = 3):
    """Progressive alignment: longest queues first, each aligned exactly against the timestamps the
    others already use; then a few rounds of re-aligning each group against all the others
    (each step can only lower the total loads)."""
    tokens = [[t for t, _ in q] for q in queues]
    counts = [dict() for _ in range(length)]
    placed = [None] * len(queues)

    def add(g, sign):
        for s, t in zip(placed[g], tokens[g]):
            counts[s][t] = counts[s].get(t, 0) + sign

    order = sorted(range(len(queues)), key=lambda g: -len(queues[g]))
    for g in order:
        placed[g] = _align_one(tokens[g], counts, length)
        add(g, 1)
    for _ in range(rounds):
        for g in order:
            add(g, -1)
            placed[g] = _align_one(tokens[g], counts, length)
            add(g, 1)
    columns = []
    for g, q in enumerate(queues):
        col = [None] * length
        for s, job in zip(placed[g], q):
            col[s] = job
        columns.append(col)
    return columns


def schedule(mask: np.ndarray, groups, policy: str) -> Schedule:
    """Schedule a window's routing ``mask`` (tokens, experts) onto ``groups``."""
    if policy not in POLICIES:
        raise ValueError(f"policy={policy!r} is not allowed: one of {', '.join(POLICIES)}")
    mask = np.asarray(mask, dtype=bool)
    groups = check_groups(groups, mask.shape[1])
    queues = group_queues(mask, groups)
    n_tokens = mask.shape[0]
    length = max((len(q) for q in queues), default=0)
    if policy == "single_token":
        columns, length = _single_token(queues, n_tokens)
    elif policy == "compact":
        columns = [list(q) for q in queues]
    elif policy == "reschedule_heuristic":
        columns = _heuristic(queues, n_tokens, length)
    else:
        candidates = [Schedule(policy, groups, *_table(cols, length)) for cols in (
            _align(queues, length), _greedy(queues, length),
            _heuristic(queues, n_tokens, length))]
        return min(candidates, key=lambda sc: sc.tokens_loaded)    # first wins ties
    return Schedule(policy, groups, *_table(columns, length))


def reschedule_optimal(mask: np.ndarray, groups) -> int:
    """Fewest tokens loaded by any compact-length schedule (exhaustive; small inputs only)."""
    queues = [tuple(t for t, _ in q) for q in group_queues(mask, groups)]
    length = max((len(q) for q in queues), default=0)
    n_groups = len(queues)
    if n_groups > 6 or sum(len(q) for q in queues) > 60:
        raise ValueError("reschedule_optimal is exhaustive: at most 6 groups and 60 jobs")

    @cache
    def best(s, heads):
        if s == length:
            return 0 if all(h == len(q) for h, q in zip(heads, queues)) else 10 ** 9
        left = length - s
        must = [g for g in range(n_groups) if len(queues[g]) - heads[g] == left]
        may = [g for g in range(n_groups) if 0 < len(queues[g]) - heads[g] < left]
        result = 10 ** 9
        for k in range(len(may) + 1):
            for extra in combinations(may, k):
                work = set(must) | set(extra)
                loads = len({queues[g][heads[g]] for g in work})
                nxt = tuple(h + (g in work) for g, h in enumerate(heads))
                result = min(result, loads + best(s + 1, nxt))
        return result

    return best(0, tuple(0 for _ in queues))
