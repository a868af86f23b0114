"""What the engine returns for a request."""
from __future__ import annotations

import dataclasses

from llmserve.core.request import Request


@dataclasses.dataclass
class RequestMetrics:
    arrival_time: float
    first_scheduled_time: float | None
    first_token_time: float | None
    finish_time: float | None
    num_prompt_tokens: int
    num_output_tokens: int
    num_preemptions: int

    @property
    def ttft(self) -> float | None:
        if self.first_token_time is None:
            return None
        return self.first_token_time - self.arrival_time

    @property
    def tpot(self) -> float | None:
        if self.finish_time is None or self.first_token_time is None or self.num_output_tokens < 2:
            return None
        return (self.finish_time - self.first_token_time) / (self.num_output_tokens - 1)

    @property
    def e2e(self) -> float | None:
        return None if self.finish_time is None else self.finish_time - self.arrival_time


@dataclasses.dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str | None
    finished: bool
    finish_reason: str | None
    logprobs: list[float] | None
    metrics: RequestMetrics
    # Per output token: SamplingParams.top_logprobs (token id, logprob) pairs, most likely
    # first; None when not asked for.
    top_logprobs: list[list[tuple[int, float]]] | None = None
    # SamplingParams.prompt_logprobs set: per prompt token, None for the first (nothing
    # predicts it) and for any not computed yet, else [(the prompt token, its logprob), then
    # the prompt_logprobs most likely (token, logprob), most likely first]. None when not
    # asked for.
    prompt_logprobs: list[list[tuple[int, float]] | None] | None = None
    # Set when the engine aborted the request because a step failed on it: the cause.
    error: str | None = None

    @classmethod
    def from_request(cls, req: Request, text: str | None) -> RequestOutput:
        fr = req.finish_reason
        return cls(
            request_id=req.request_id, prompt=req.prompt_text,
            prompt_token_ids=req.prompt_token_ids, token_ids=req.output_token_ids, text=text,
            finished=req.is_finished, finish_reason=fr.value if fr else None,
            logprobs=list(req.output_logprobs) if req.sampling_params.logprobs else None,
            metrics=RequestMetrics(req.arrival_time, req.first_scheduled_time,
                                   req.first_token_time, req.finish_time, req.num_prompt_tokens,
                                   req.num_output_tokens, req.num_preemptions),
            top_logprobs=(list(req.output_top_logprobs) if req.sampling_params.top_logprobs
                          else None),
            prompt_logprobs=(None if req.prompt_logprobs is None
                             else list(req.prompt_logprobs)))
