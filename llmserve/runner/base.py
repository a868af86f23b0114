"""What every runner provides: execute one SchedulerOutput, return the sampled tokens."""
from __future__ import annotations

from typing import Protocol

from llmserve.core.sched_output import RunnerOutput, SchedulerOutput


class Runner(Protocol):
    def execute(self, sched_out: SchedulerOutput) -> RunnerOutput: ...
