"""The unified scheduler loop (vLLM v1 / Sarathi-Serve style), pure Python.

There is no prefill or decode mode: each step every scheduled request's num_computed_tokens
catches up towards num_tokens under the token budget. Running requests go first (decodes and
unfinished prompt chunks), then waiting prompts fill what is left of the budget.
"""
from __future__ import annotations

import dataclasses
import time

from llmserve.core.block_manager import BlockManager
from llmserve.core.request import Request, RequestStatus
from llmserve.core.request_queue import QUEUE_POLICIES, create_request_queue
from llmserve.core.sched_output import RunnerOutput, ScheduledRequest, SchedulerOutput

POLICIES = ("continuous", "chunked")


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    block_size: int = 16
    num_kv_blocks: int = 1024
    max_model_len: int = 2048
    policy: str = "chunked"
    # Whether a prompt may be split across steps (chunked prefill). "continuous" admits whole
    # prompts only, and runs a step of prefills ahead of decodes when any prompt fits.
    chunked_prefill: bool = True
    queue_policy: str = "fcfs"
    # Fraction of the pool kept free when admitting new requests, so running ones can grow
    # without immediately preempting.
    admission_watermark: float = 0.01

    def __post_init__(self):
        def bad(field, expected, value):
            raise ValueError(f"scheduler config: {field} must be {expected}, got {value!r}")
        for f in ("max_num_seqs", "max_num_batched_tokens", "num_kv_blocks", "max_model_len"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                bad(f, "an int >= 1", v)
        if not isinstance(self.block_size, int) or self.block_size < 1 or \
                self.block_size & (self.block_size - 1):
            bad("block_size", "a power of two", self.block_size)
        if self.max_num_batched_tokens < self.block_size:
            bad("max_num_batched_tokens", f">= block_size ({self.block_size})",
                self.max_num_batched_tokens)
        if self.policy not in POLICIES:
            bad("policy", f"one of {POLICIES}", self.policy)
        if self.queue_policy not in QUEUE_POLICIES:
            bad("queue_policy", f"one of {QUEUE_POLICIES}", self.queue_policy)
        if not 0 <= self.admission_watermark < 1:
            bad("admission_watermark", "a float in [0, 1)", self.admission_watermark)
        if not self.chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            bad("max_num_batched_tokens", f">= max_model_len ({self.max_model_len}) when "
                "prompts are not chunked", self.max_num_batched_tokens)

    @classmethod
    def for_policy(cls, policy: str, **kw) -> "SchedulerConfig":
        if policy not in POLICIES:
            raise ValueError(f"scheduler config: policy must be one of {POLICIES}, got {policy!r}")
        knobs = {"continuous": dict(chunked_prefill=False), "chunked": dict(chunked_prefill=True)}
        return cls(policy=policy, **{**knobs[policy], **kw})


@dataclasses.dataclass
class SchedulerStats:
    num_steps: int = 0
    num_preemptions: int = 0
    schedule_ns: int = 0
    update_ns: int = 0


class Scheduler:
    def __init__(self, config: SchedulerConfig):
        self.config = config
        self.block_manager = BlockManager(config.num_kv_blocks, config.block_size)
        self.waiting = create_request_queue(config.queue_policy)
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.stats = SchedulerStats()
        self._finished_ids: list[str] = []
        self._step_id = 0
        self._watermark_blocks = int(config.admission_watermark * config.num_kv_blocks)

    # ---- requests in and out -------------------------------------------------------------
    def add_request(self, req: Request) -> None:
        if req.request_id in self.requests:
            raise ValueError(f"request_id {req.request_id!r} is already in the scheduler")
        need = -(-(req.num_prompt_tokens + req.sampling_params.max_tokens) // self.config.block_size)
        if need > self.config.num_kv_blocks:
            raise ValueError(f"request {req.request_id!r} needs {need} KV blocks at its longest "
                             f"but the pool has {self.config.num_kv_blocks}")
        self.requests[req.request_id] = req
        self.waiting.add(req)

    def abort(self, request_id: str, now: float | None = None) -> Request | None:
        """Abort a request in any state; its blocks are freed in this call."""
        req = self.requests.get(request_id)
        if req is None or req.is_finished:
            return None
        if req.status == RequestStatus.RUNNING:
            self.running.remove(req)
        else:
            self.waiting.remove(req)
        self._finish(req, RequestStatus.FINISHED_ABORTED, now)
        return req

    def has_unfinished(self) -> bool:
        return bool(self.running) or len(self.waiting) > 0

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    # ---- one step -------------------------------------------------------------------------
    def schedule(self, now: float) -> SchedulerOutput:
        t0 = time.perf_counter_ns()
        cfg = self.config
        budget = cfg.max_num_batched_tokens
        picked: list[tuple[Request, int]] = []
        preempted: list[str] = []
        bm = self.block_manager

        prefill_first = not cfg.chunked_prefill and self._prompt_fits(budget)
        if not prefill_first:
            i = 0
            while i < len(self.running) and budget > 0:
                req = self.running[i]
                n = min(req.num_tokens - req.num_computed_tokens, budget)
                while not bm.allocate_slots(req, n):
                    victim = self.running.pop()     # newest first, as vLLM does
                    self._preempt(victim, now)
                    preempted.append(victim.request_id)
                    if victim is req:
                        break
                else:
                    picked.append((req, n))
                    budget -= n
                    i += 1
                    continue
                break

        if not preempted:
            budget = self._admit(now, budget, picked)

        self._step_id += 1
        scheduled = []
        total = 0
        for req, n in picked:
            start = req.num_computed_tokens
            end = start + n
            scheduled.append(ScheduledRequest(
                req.request_id, req.token_ids[start:end], start, list(req.block_ids),
                end == req.num_tokens, req.num_output_tokens, req.sampling_tuple))
            total += n
        out = SchedulerOutput(self._step_id, scheduled, total, preempted, self._finished_ids)
        self._finished_ids = []
        self._scheduled = picked
        self.stats.num_steps += 1
        self.stats.schedule_ns += time.perf_counter_ns() - t0
        return out

    def _prompt_fits(self, budget: int) -> bool:
        if not len(self.waiting) or len(self.running) >= self.config.max_num_seqs:
            return False
        req = self.waiting.peek(0.0)
        n = req.num_tokens - req.num_computed_tokens
        return n <= budget and self.block_manager.can_allocate(req, n, self._watermark_blocks)

    def _admit(self, now: float, budget: int, picked: list) -> int:
        cfg = self.config
        bm = self.block_manager
        while len(self.waiting) and budget > 0 and len(self.running) < cfg.max_num_seqs:
            req = self.waiting.peek(now)
            n = req.num_tokens - req.num_computed_tokens
            if n > budget:
                if not cfg.chunked_prefill:
                    break
                n = budget
            if not bm.allocate_slots(req, n, self._watermark_blocks):
                break
            self.waiting.pop(now)
            req.status = RequestStatus.RUNNING
            if req.first_scheduled_time is None:
                req.first_scheduled_time = now
            self.running.append(req)
            picked.append((req, n))
            budget -= n
        return budget

    def _preempt(self, req: Request, now: float) -> None:
        # Recompute: drop the KV, keep the tokens; the request resumes from its prompt plus
        # the outputs so far, and its sampling keys make the continuation identical.
        self.block_manager.free(req)
        req.num_computed_tokens = 0
        req.status = RequestStatus.PREEMPTED
        req.num_preemptions += 1
        self.stats.num_preemptions += 1
        self.waiting.add_front(req)

    def update_from_output(self, sched_out: SchedulerOutput, runner_out: RunnerOutput,
                           now: float) -> list[Request]:
        """Apply a step's results. Returns the requests that got a token or finished."""
        t0 = time.perf_counter_ns()
        changed = []
        any_finished = False
        sampled = runner_out.sampled
        logprobs = runner_out.logprobs
        for req, n in self._scheduled:
            if req.is_finished:      # aborted while the step ran
                continue
            req.num_computed_tokens += n
            tok = sampled.get(req.request_id)
            if tok is None:
                continue
            req.token_ids.append(tok)
            if req.sampling_params.logprobs:
                req.output_logprobs.append(logprobs.get(req.request_id, float("nan")))
            req.token_times.append(now)
            if req.first_token_time is None:
                req.first_token_time = now
            status = self._stop_status(req, tok)
            if status is not None:
                self._finish(req, status, now)
                any_finished = True
            changed.append(req)
        if any_finished:   # one pass, not a list.remove per finished request
            self.running = [r for r in self.running if not r.is_finished]
        self._scheduled = []
        self.stats.update_ns += time.perf_counter_ns() - t0
        return changed

    def _stop_status(self, req: Request, tok: int) -> RequestStatus | None:
        sp = req.sampling_params
        if tok in sp.stop_token_ids or tok in req.eos_token_ids:
            req.stop_token_id = tok
            return RequestStatus.FINISHED_STOPPED
        if req.num_output_tokens >= sp.max_tokens or req.num_tokens >= self.config.max_model_len:
            return RequestStatus.FINISHED_LENGTH
        return None

    def _finish(self, req: Request, status: RequestStatus, now: float | None) -> None:
        req.status = status
        req.finish_time = now
        self.block_manager.free(req)
        self._finished_ids.append(req.request_id)
        del self.requests[req.request_id]
