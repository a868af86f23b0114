"""A request as the scheduler sees it: tokens, progress, blocks, status and timestamps."""
from __future__ import annotations

import enum

from llmserve.sampling_params import SamplingParams


class RequestStatus(enum.IntEnum):
    # The order is the contract: everything after PREEMPTED is finished.
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED_STOPPED = 3
    FINISHED_LENGTH = 4
    FINISHED_ABORTED = 5
    FINISHED_IGNORED = 6

    @property
    def is_finished(self) -> bool:
        return self > RequestStatus.PREEMPTED


class FinishReason(str, enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"


_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: FinishReason.STOP,
    RequestStatus.FINISHED_LENGTH: FinishReason.LENGTH,
    RequestStatus.FINISHED_ABORTED: FinishReason.ABORT,
    RequestStatus.FINISHED_IGNORED: FinishReason.ABORT,
}


class Request:
    __slots__ = (
        "arrival_time",
        "block_hashes",
        "block_ids",
        "eos_token_ids",
        "finish_time",
        "first_scheduled_time",
        "first_token_time",
        "max_num_tokens",
        "num_cached_tokens",
        "num_computed_tokens",
        "num_hashed_blocks",
        "num_preemptions",
        "num_prompt_tokens",
        "output_logprobs",
        "output_top_logprobs",
        "predicted_num_output_tokens",
        "prompt_logprobs",
        "predicted_spread",
        "prompt_text",
        "prompt_token_ids",
        "request_id",
        "sampling_params",
        "sampling_tuple",
        "status",
        "stop_ids",
        "stop_token_id",
        "token_ids",
        "token_times",
        "true_num_output_tokens",
    )

    def __init__(self, request_id: str, prompt_token_ids: list[int],
                 sampling_params: SamplingParams, arrival_time: float,
                 eos_token_ids: tuple[int, ...] = (), seed: int = 0,
                 prompt_text: str | None = None):
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.prompt_text = prompt_text
        self.sampling_params = sampling_params
        self.eos_token_ids = () if sampling_params.ignore_eos else tuple(eos_token_ids)
        # prompt + output, one list, so a step's new tokens are a slice of it.
        self.token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.output_logprobs: list[float] = []
        # Per output token, its top_logprobs alternatives (SamplingParams.top_logprobs > 0).
        self.output_top_logprobs: list[list[tuple[int, float]]] = []
        # SamplingParams.prompt_logprobs: one entry per prompt position, None until computed
        # (and always for position 0, which nothing predicts): [(prompt token, its logprob),
        # then the k most likely (token, logprob)]. Kept by position, so a prompt recomputed
        # after preemption fills nothing twice.
        self.prompt_logprobs: list | None = (
            None if sampling_params.prompt_logprobs is None else [None] * self.num_prompt_tokens)
        self.num_computed_tokens = 0
        self.block_ids: list[int] = []
        self.status = RequestStatus.WAITING
        self.stop_token_id: int | None = None
        # For the per-token stop check (scheduler hot path): the length at which the request
        # ends (prompt + max_tokens; the scheduler caps it at max_model_len when it is
        # added) and every token id that stops it (stop_token_ids + eos).
        self.max_num_tokens = self.num_prompt_tokens + sampling_params.max_tokens
        self.stop_ids = tuple(sampling_params.stop_token_ids) + self.eos_token_ids
        # Written by the predictor (core/predictors.py) once, when the request arrives.
        self.predicted_num_output_tokens: float | None = None
        self.predicted_spread: float | None = None
        # The true output length when the workload knows it (trace replay, simulator); the
        # oracle predictor reads it, falling back to max_tokens.
        self.true_num_output_tokens: int | None = None
        # Chained hashes of this request's full, computed blocks (prefix caching).
        self.block_hashes: list[int] = []
        self.num_hashed_blocks = 0      # leading blocks of block_ids offered to the cache
        self.arrival_time = arrival_time
        self.first_scheduled_time: float | None = None
        self.first_token_time: float | None = None
        self.token_times: list[float] = []
        self.finish_time: float | None = None
        self.num_preemptions = 0
        self.num_cached_tokens = 0
        sp = sampling_params
        # What the runner needs to sample, fixed for the request's life.
        self.sampling_tuple = (sp.temperature, sp.top_k, sp.top_p,
                               sp.seed if sp.seed is not None else seed, sp.top_logprobs)
        if sp.prompt_logprobs is not None:
            # The runner needs each prompt row's next prompt token (its target), also across
            # chunk boundaries: the whole prompt rides along (a reference, not a copy).
            self.sampling_tuple += (sp.prompt_logprobs, self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status > RequestStatus.PREEMPTED

    @property
    def finish_reason(self) -> FinishReason | None:
        return _FINISH_REASONS.get(self.status)

    def __repr__(self) -> str:
        return (f"Request({self.request_id!r}, status={self.status.name}, "
                f"prompt={self.num_prompt_tokens}, out={self.num_output_tokens}, "
                f"computed={self.num_computed_tokens}, blocks={len(self.block_ids)})")
