"""SimRunner: executes a SchedulerOutput in virtual time with the GPU cost model.

No model runs: the step time comes from sim/cost_model.py and every sampling request gets a
filler token. Requests end at their trace length through `max_tokens` + `ignore_eos` (as
serving benchmarks replay traces), so the tokens' values never matter. Pure Python, no jax.
"""
from __future__ import annotations

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
