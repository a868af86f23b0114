"""The only contract between scheduler and runner. Plain ints, floats and lists.

Padding (static batching only; every other policy schedules none):
- A padded prompt: the ScheduledRequest carries the real prompt tokens in `token_ids` and
  `num_padding_tokens` = (longest prompt of its batch) - (its own). The runner appends that many
  dummy rows after the real ones, at the following positions, in the same sequence.
- A request that already finished inside a running static batch still occupies its slot: each
  decode step it appears with `token_ids == []`, `num_padding_tokens == 1`, `sample == False`,
  `start_pos` = its last position and its (still reserved) block table, so its dummy row attends
  over its whole context as it would in a padded [batch, max_len] tensor.
Dummy rows are computed but written nowhere (slot = the runner's pad slot) and whatever they
sample is discarded. A runner charges them like real tokens: the JaxRunner computes them, a cost
model counts them. `num_scheduled_tokens` counts only real tokens; the token budget bounds
`num_scheduled_tokens + num_padding_tokens`.

`block_ids` is the request's own block table, not a copy (copying every table every step
was a measurable share of a simulation): a read-only view, valid until the step's
update_from_output. A runner must not modify it, and must copy it if it keeps it longer (the
scheduler may append blocks to it in later steps).
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(slots=True)
class ScheduledRequest:
    req_id: str
    token_ids: list[int]        # the new tokens to process this step
    start_pos: int              # position of token_ids[0] (= tokens already in the cache)
    block_ids: list[int]        # the request's block table (read-only view)
    sample: bool                # whether this step ends at the last token, so samples one
    token_index: int            # index of the output token sampled (the sampling key)
    # (temperature, top_k, top_p, seed, top_logprobs[, prompt_logprobs, prompt token ids])
    sampling: tuple
    num_padding_tokens: int = 0  # static batching: dummy rows after token_ids (see above)

    def prompt_logprob_rows(self) -> tuple[int, list[int], int]:
        """For a request with prompt_logprobs: (k, prompt token ids, count): this step's
        rows at positions start_pos .. start_pos + count - 1 each predict a prompt token (the
        last prompt position predicts the first output token, so it is not one of them).
        count <= 0: none this step, or the request did not ask."""
        if len(self.sampling) <= 5:
            return 0, [], 0
        k, prompt = self.sampling[5], self.sampling[6]
        p0 = self.start_pos
        return k, prompt, min(p0 + len(self.token_ids), len(prompt) - 1) - p0


@dataclasses.dataclass
class SchedulerOutput:
    step_id: int
    scheduled: list[ScheduledRequest]
    num_scheduled_tokens: int                # real tokens (without padding)
    preempted_req_ids: list[str] = dataclasses.field(default_factory=list)
    finished_req_ids: list[str] = dataclasses.field(default_factory=list)
    num_padding_tokens: int = 0              # sum of the scheduled requests' padding rows

    @property
    def is_empty(self) -> bool:
        return not self.scheduled

    @property
    def num_computed_slots(self) -> int:
        """Token rows the runner computes: real tokens plus padding."""
        return self.num_scheduled_tokens + self.num_padding_tokens


@dataclasses.dataclass
class RunnerOutput:
    sampled: dict[str, int]                 # req_id -> token id, for requests that sample
    logprobs: dict[str, float] = dataclasses.field(default_factory=dict)
    step_time_s: float = 0.0                # measured (real runner) or modelled (simulator)
    # req_id -> [(token id, logprob)] most likely first, for requests that asked for
    # SamplingParams.top_logprobs (that many entries each).
    top_logprobs: dict[str, list[tuple[int, float]]] = dataclasses.field(default_factory=dict)
    # req_id -> (position p0, logprobs, alternatives) for requests with prompt_logprobs whose
    # step computed prompt rows: logprobs[i] is that of prompt token p0 + i + 1 given the
    # tokens before it; alternatives[i] its k most likely (token, logprob), or None (k = 0).
    prompt_logprobs: dict[str, tuple[int, list[float], list | None]] = dataclasses.field(
        default_factory=dict)
