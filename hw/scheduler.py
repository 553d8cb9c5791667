"""``GroupScheduler``: issues (token, expert) jobs to the expert groups, one timestamp at a time.

The policy (single_token, compact, reschedule, ...) is decided by the host from the window's
routing (``moepim.models.schedule``) and arrives as a plan: per group, its jobs in order, each
with ``idle_before``, the idle timestamps the group waits before it. The scheduler holds the
plan in one FIFO per group and executes it in lock step:

* LOAD: ``i_jobs`` writes one job per cycle into its group's FIFO; the job flagged ``last`` ends
  the window.
* RUN: every timestamp, each group either idles (while it still owes idle timestamps to its
  head job) or issues its head job on ``o_issue[g]``; the timestamp's record (tokens, experts,
  which groups issued, and ``n_loads``, the number of distinct tokens, each loaded once and
  broadcast) goes out on ``o_timestamps``. Each issue and the record transfer on their own
  handshakes; the timestamp completes in the cycle the last of them goes (no group runs ahead:
  timestamps stay aligned) and every other cycle of the timestamp is a stall cycle. After the
  last job the scheduler returns to LOAD.

``job_data`` (optional layout) is carried with each job, unchanged, from ``i_jobs`` to
``o_issue`` (the operands the group needs for the job, e.g. its gate weight).

Timing: a window of ``J`` jobs and ``T`` timestamps takes ``J`` load cycles plus ``T`` cycles
without back-pressure (``window_cycles``). Counters: timestamps, tokens loaded, per-group
busy and idle timestamps, stall cycles.
"""

from __future__ import annotations

from amaranth import Cat, Module, Signal, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from moepim.spec import timing
from moepim.spec.checks import index_bits, need, need_positive

from .params import check_counter_bits, tree_sum

__all__ = ["GroupScheduler"]


class GroupScheduler(wiring.Component):
    def __init__(self, *, n_groups: int, n_tokens: int, n_experts: int, depth: int,
                 max_idle: int | None = None, job_data: data.Layout | None = None,
                 counter_bits: int = 48):
        for name, value in (("n_groups", n_groups), ("n_tokens", n_tokens),
                            ("n_experts", n_experts), ("depth", depth)):
            need_positive(name, value)
        need(n_groups <= 64, "n_groups", n_groups, "an integer from 1 to 64")
        check_counter_bits(counter_bits)
        self._n_groups, self._n_tokens, self._n_experts = n_groups, n_tokens, n_experts
        self._depth = depth
        self._max_idle = max_idle if max_idle is not None else depth * n_tokens
        need_positive("max_idle", self._max_idle + 1)
        tok, exp = unsigned(index_bits(n_tokens)), unsigned(index_bits(n_experts))
        c = unsigned(counter_bits)
        job = {"token": tok, "expert": exp,
               "idle_before": unsigned(index_bits(self._max_idle + 1))}
        issue = {"token": tok, "expert": exp}
        if job_data is not None:
            job["data"] = issue["data"] = job_data
        self._job = data.StructLayout(job)
        super().__init__({
            "i_jobs": In(stream.Signature(data.StructLayout({
                "group": unsigned(index_bits(n_groups)), "job": self._job, "last": 1}))),
            "o_issue": Out(stream.Signature(data.StructLayout(issue))).array(n_groups),
            "o_timestamps": Out(stream.Signature(data.StructLayout({
                "tokens": data.ArrayLayout(tok, n_groups),
                "experts": data.ArrayLayout(exp, n_groups),
                "active": n_groups,
                "n_loads": unsigned(index_bits(n_groups + 1)),
                "last": 1}))),
            "counters": Out(data.StructLayout({
                "timestamps": c, "tokens_loaded": c, "stall_cycles": c,
                "busy": data.ArrayLayout(c, n_groups), "idle": data.ArrayLayout(c, n_groups)})),
        })

    n_groups = property(lambda self: self._n_groups)
    depth = property(lambda self: self._depth)

    @staticmethod
    def window_cycles(n_jobs: int, timestamps: int) -> int:
        return timing.scheduler_window_cycles(n_jobs, timestamps)

    def elaborate(self, platform):
        m = Module()
        n_groups = self._n_groups
        job_bits = self._job.size
        fifos = []
        for g in range(n_groups):
            f = fifo.SyncFIFOBuffered(width=job_bits, depth=self._depth)
            m.submodules[f"queue{g}"] = f
            fifos.append(f)
        heads = [data.View(self._job, f.r_data) for f in fifos]
        idle_taken = [Signal(self._job.members["idle_before"], name=f"idle_taken{g}")
                      for g in range(n_groups)]
        cnt = self.counters

        # per group: issue its head this timestamp, or idle
        issue = Signal(n_groups)
        for g in range(n_groups):
            m.d.comb += issue[g].eq(fifos[g].r_rdy & (idle_taken[g] == heads[g].idle_before))
        # a job written into an empty FIFO reaches its head a cycle or two later: the window
        # starts only once every queued job is visible (else a group would miss timestamp 0)
        settled = Signal()
        m.d.comb += settled.eq(Cat((f.level == 0) | f.r_rdy for f in fifos).all())
        has_work = Signal()
        m.d.comb += has_work.eq(Cat(f.r_rdy for f in fifos).any() & settled)

        # timestamp record: distinct tokens among issuing groups = loads
        record = self.o_timestamps.payload
        first_use = []
        for g in range(n_groups):
            seen = [issue[h] & (heads[h].token == heads[g].token) for h in range(g)]
            first_use.append(issue[g] & ~(Cat(*seen).any() if seen else 0))
        m.d.comb += [
            record.tokens.as_value().eq(Cat(heads[g].token for g in range(n_groups))),
            record.experts.as_value().eq(Cat(heads[g].expert for g in range(n_groups))),
            record.active.eq(issue),
            record.n_loads.eq(tree_sum(first_use)),
        ]
        # the window's last timestamp: no group has anything after this one
        remaining = [fifos[g].level - issue[g] for g in range(n_groups)]
        m.d.comb += record.last.eq(Cat(*[r == 0 for r in remaining]).all())
        for g in range(n_groups):
            m.d.comb += [self.o_issue[g].payload.token.eq(heads[g].token),
                         self.o_issue[g].payload.expert.eq(heads[g].expert)]
            if "data" in self._job.members:
                m.d.comb += self.o_issue[g].payload.data.eq(heads[g].data)

        with m.FSM(name="sched"):
            with m.State("LOAD"):
                j = self.i_jobs
                with m.Switch(j.payload.group):
                    for g in range(n_groups):
                        with m.Case(g):
                            m.d.comb += [fifos[g].w_data.eq(j.payload.job.as_value()),
                                         fifos[g].w_en.eq(j.valid),
                                         j.ready.eq(fifos[g].w_rdy)]
                with m.If(j.valid & j.ready & j.payload.last):
                    m.next = "RUN"
            with m.State("RUN"):
                # each issue and the timestamp record transfer on their own (valid never
                # waits for ready); the timestamp completes once all of them have gone
                sent = Signal(n_groups)
                record_sent = Signal()
                gone = []
                for g in range(n_groups):
                    out = self.o_issue[g]
                    m.d.comb += out.valid.eq(issue[g] & ~sent[g] & settled)
                    gone.append(~issue[g] | sent[g] | out.ready)
                m.d.comb += self.o_timestamps.valid.eq(has_work & ~record_sent)
                done = Signal()
                m.d.comb += done.eq(has_work & Cat(*gone).all()
                                    & (record_sent | self.o_timestamps.ready))
                with m.If(~Cat(f.level != 0 for f in fifos).any()):
                    m.next = "LOAD"
                with m.Elif(done):
                    m.d.sync += [sent.eq(0), record_sent.eq(0),
                                 cnt.timestamps.eq(cnt.timestamps + 1),
                                 cnt.tokens_loaded.eq(cnt.tokens_loaded + record.n_loads)]
                    for g in range(n_groups):
                        with m.If(issue[g]):
                            m.d.comb += fifos[g].r_en.eq(1)
                            m.d.sync += [idle_taken[g].eq(0), cnt.busy[g].eq(cnt.busy[g] + 1)]
                        with m.Else():
                            with m.If(fifos[g].r_rdy):
                                m.d.sync += idle_taken[g].eq(idle_taken[g] + 1)
                            m.d.sync += cnt.idle[g].eq(cnt.idle[g] + 1)
                with m.Elif(has_work):
                    m.d.sync += cnt.stall_cycles.eq(cnt.stall_cycles + 1)
                    for g in range(n_groups):
                        with m.If(self.o_issue[g].valid & self.o_issue[g].ready):
                            m.d.sync += sent[g].eq(1)
                    with m.If(self.o_timestamps.valid & self.o_timestamps.ready):
                        m.d.sync += record_sent.eq(1)
        return m
