"""SimRunner: executes a SchedulerOutput in virtual time with the GPU cost model.

No model runs: the step time comes from sim/cost_model.py and every sampling request gets a
filler token. Requests end at their trace length through `max_tokens` + `ignore_eos` (as
serving benchmarks replay traces), so the tokens' values never matter. Pure Python, no jax.
"""
from __future__ import annotations

import math

from llmserve.core.sched_output import RunnerOutput, SchedulerOutput


class SimRunner:
    def __init__(self, cost_model, filler_token_id: int = 0):
        self.cost_model = cost_model
        self.filler_token_id = filler_token_id
        self.last_counts: tuple | None = None   # the step's FLOPs/bytes, for MFU/MBU
        self.num_steps = 0
        self.busy_s = 0.0

    def execute(self, sched_out: SchedulerOutput) -> RunnerOutput:
        scheduled = sched_out.scheduled
        if not scheduled:
            return RunnerOutput({}, {}, 0.0)
        cm = self.cost_model
        sampled = {}
        counts = cm.counts(sched_out, sampled, self.filler_token_id)
        t = cm.time_from_counts(counts)
        self.last_counts = counts
        self.num_steps += 1
        self.busy_s += t
        return RunnerOutput(sampled, {}, t)

    @property
    def can_run_decode(self) -> bool:
        """Whether decode_run() applies: the cost model counts rows, not padded buckets."""
        return self.cost_model.buckets is None

    def decode_run(self, run, t: float, until: float = math.inf, may_start=None,
                   max_steps: int | None = None) -> tuple[list, list, list, list]:
        """Execute the steps of a Scheduler.plan_decode_run run from clock time t (at most
        max_steps): each step's rows decode one token (and a prefilling request's chunk
        runs in the first ones); step j > 0 starts only at a time
        before `until` for which may_start (if given) is true. Returns (starts, step times,
        ends, counts), one entry per step taken; ends are t + the step times added one at a
        time, as a clock stepped by execute() reads them."""
        cm = self.cost_model
        decode_counts = cm.decode_counts
        time_from_counts = cm.time_from_counts
        from_sums = cm.counts_from_sums
        nseq, context, finishes = run.num_seqs, run.context, run.finishes
        prefill = run.prefill       # a prefilling request's chunk in the first steps
        npf = len(prefill)
        n = run.num_steps if max_steps is None else min(max_steps, run.num_steps)
        starts, dts, ends, counts = [], [], [], []
        busy = self.busy_s
        for j in range(n):
            if j and (t >= until or may_start is not None and not may_start(t)):
                break
            if j < npf:
                q, ctx, sample = prefill[j]
                c = from_sums(nseq + q, nseq + sample, context + q * ctx - (q * (q - 1) >> 1),
                              context + ctx, nseq + 1)
            else:
                c = decode_counts(nseq, context)
            dt = time_from_counts(c)
            starts.append(t)
            t += dt
            ends.append(t)
            dts.append(dt)
            counts.append(c)
            busy += dt
            f = finishes.get(j)
            if f is not None:
                nseq -= f[0]
                context -= f[1]
            context += nseq
        if counts:
            self.busy_s = busy
            self.num_steps += len(counts)
            self.last_counts = counts[-1]
        return starts, dts, ends, counts
