"""The only contract between scheduler and runner. Plain ints, floats and lists."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class ScheduledRequest:
    req_id: str
    token_ids: list[int]        # the new tokens to process this step
    start_pos: int              # position of token_ids[0] (= tokens already in the cache)
    block_ids: list[int]        # the request's block table
    sample: bool                # whether this step ends at the last token, so samples one
    token_index: int            # index of the output token sampled (the sampling key)
    sampling: tuple             # (temperature, top_k, top_p, seed)
    num_padding_tokens: int = 0  # static batching: slots computed for nothing


@dataclasses.dataclass
class SchedulerOutput:
    step_id: int
    scheduled: list[ScheduledRequest]
    num_scheduled_tokens: int
    preempted_req_ids: list[str] = dataclasses.field(default_factory=list)
    finished_req_ids: list[str] = dataclasses.field(default_factory=list)
    num_padding_tokens: int = 0

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


@dataclasses.dataclass
class RunnerOutput:
    sampled: dict[str, int]                 # req_id -> token id, for requests that sample
    logprobs: dict[str, float] = dataclasses.field(default_factory=dict)
    step_time_s: float = 0.0                # measured (real runner) or modelled (simulator)
