"""Static batching: the baseline the in-flight policies are measured against.

A batch of up to `static_batch_limit` requests is taken from the queue when that many are
waiting or the oldest has waited `static_batch_timeout_s`. KV for prompt + max_tokens is
reserved for every member up front (contiguous-style). The prompts are padded to the longest
one and prefilled, then the batch decodes in lock step until its last member finishes;
nothing joins mid-batch. A member that finished keeps its slot and its KV until the batch
ends: each decode step it costs one padding row. Padding is charged to the runner through
ScheduledRequest.num_padding_tokens (see sched_output.py).

Two concessions, both documented where they matter:
- The padded prefill respects the token budget: members are prefilled as many per step as
  fit (each costing the padded length), so one "batch prefill" may take several steps; the
  batch starts decoding only when all members are prefilled.
- A finished member's tokens are returned as soon as it finishes (as a streaming server does),
  so its latency is not inflated to the batch's end; its compute slot and KV still are.
"""
from __future__ import annotations

import collections
import time

from llmserve.core.request import Request, RequestStatus
from llmserve.core.sched_output import ScheduledRequest, SchedulerOutput
from llmserve.core.scheduler import Scheduler, SchedulerConfig


class StaticBatchScheduler(Scheduler):
    _static_ok = True

    def __init__(self, config: SchedulerConfig, predictor=None):
        if config.batching != "static":
            raise ValueError(f"StaticBatchScheduler needs batching='static', got "
                             f"{config.batching!r}")
        super().__init__(config, predictor)
        self.batch: list[Request] = []          # members, finished ones included
        self._to_prefill: collections.deque[Request] = collections.deque()
        self._pad_to = 0                        # padded prompt length of this batch
        self._live = 0                          # members not finished yet
        self.num_batches = 0

    def _form_batch(self, now: float) -> None:
        cfg = self.config
        waiting = self.waiting
        waiting.start_step(now)
        head = waiting.peek(now)
        if head is None:
            return
        size = cfg.static_batch_limit
        if len(waiting) < size and now - head.arrival_time < cfg.static_batch_timeout_s:
            return      # wait for a fuller batch
        bm = self.block_manager
        bs = cfg.block_size
        caching = cfg.enable_prefix_caching
        while len(self.batch) < size:
            req = waiting.peek(now)
            if req is None:
                break
            # No cache hits for prompt logprobs: see Scheduler._admit.
            hits = bm.match_prefix(req) if caching and req.prompt_logprobs is None else ()
            n = req.num_tokens - len(hits) * bs
            if not bm.allocate_slots(req, n, 0, self._reservation(req), hits,
                                     req.num_tokens if caching else 0):
                break
            waiting.pop(now)
            self._kv_tokens += len(hits) * bs
            self.stats.num_cache_hit_tokens += len(hits) * bs
            req.status = RequestStatus.RUNNING
            if req.first_scheduled_time is None:
                req.first_scheduled_time = now
            self.batch.append(req)
            self.running.append(req)
            self._to_prefill.append(req)
        if self.batch:
            self._pad_to = max(r.num_tokens - r.num_computed_tokens for r in self.batch)
            self._live = len(self.batch)
            self.num_batches += 1

    def schedule(self, now: float) -> SchedulerOutput:
        t0 = time.perf_counter_ns()
        if self._arrivals:
            self._predict_arrivals()
        if not self.batch:
            self._form_batch(now)
        picked: list[tuple[Request, int]] = []
        scheduled = []
        total = pad_total = 0
        todo = self._to_prefill
        while todo and todo[0].is_finished:     # aborted before its prefill
            todo.popleft()
        if todo:
            budget = self.config.max_num_batched_tokens
            while todo and budget >= self._pad_to:
                req = todo.popleft()
                if req.is_finished:
                    continue
                start = req.num_computed_tokens
                toks = req.token_ids
                nt = len(toks)
                n = nt - start
                pad = self._pad_to - n
                scheduled.append(ScheduledRequest(
                    req.request_id, toks[start:], start, req.block_ids, True,
                    nt - req.num_prompt_tokens, req.sampling_tuple, pad))
                picked.append((req, n))
                total += n
                pad_total += pad
                budget -= n + pad
        else:
            for req in self.batch:
                toks = req.token_ids
                nt = len(toks)
                if req.is_finished:     # keeps its slot: one padding row at its last position
                    scheduled.append(ScheduledRequest(
                        req.request_id, [], nt - 1, req.block_ids, False,
                        nt - req.num_prompt_tokens, req.sampling_tuple, 1))
                    pad_total += 1
                else:
                    start = req.num_computed_tokens
                    scheduled.append(ScheduledRequest(
                        req.request_id, toks[start:], start, req.block_ids, True,
                        nt - req.num_prompt_tokens, req.sampling_tuple))
                    picked.append((req, nt - start))
                    total += nt - start
        self._step_id += 1
        out = SchedulerOutput(self._step_id, scheduled, total, [], self._finished_ids,
                              pad_total)
        self._finished_ids = []
        self._scheduled = picked
        self._end_schedule(out, now, t0)
        return out

    def _release(self, req: Request) -> None:
        # Only batch members ever run, so a request finishing normally is a member: its KV
        # stays reserved until the batch ends. An aborted one frees at once.
        if req.block_ids:               # a member (waiting requests own no block)
            self._live -= 1
        if req.status == RequestStatus.FINISHED_ABORTED:
            super()._release(req)

    def abort(self, request_id: str, now: float | None = None) -> Request | None:
        req = super().abort(request_id, now)
        if req is not None and req in self.batch:
            self.batch.remove(req)      # it leaves the batch: no padding for it
            self._after_update()
        return req

    def _after_update(self) -> None:
        if self._live == 0 and self.batch:
            for r in self.batch:
                super()._release(r)
            self.batch = []
        if not self.batch:
            self._to_prefill.clear()

    def block_owners(self) -> list[list[int]]:
        return [r.block_ids for r in self.batch]
