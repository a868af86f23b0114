"""Runs of identical decode steps, applied at once (the simulator's fast path).

Most steps of a trace simulation are pure decode: every running request gets one token, nothing
waits, nothing finishes. While that holds nothing the scheduler decides can differ from one
step to the next, except which blocks the requests grow into; so `Scheduler.plan_decode_run`
checks that the next steps are such steps and how many there can be, and
`Scheduler.apply_decode_run` applies them as `schedule()` + `update_from_output()` would, step
by step in effect: every token with its own time, every step its StepRecord, block growth and
prefix-cache registration in the same order (so the same blocks, evictions and hashes).

A run ends before the first step that could differ if the driver did nothing in between: a
request would finish (its last token is left to an ordinary step), a block could not be had
(the ordinary step preempts). The driver (workload/replay.py) also ends it before an arrival or
the time cap. Conditions for a run at all: continuous batching, nothing waiting or arriving,
every running request decoding (one token to compute), within the token budget, no logprobs,
the runner's token stopping nobody.
"""
from __future__ import annotations

import time

from llmserve.core.request import RequestStatus

_RUNNING = RequestStatus.RUNNING


class DecodeRun:
    """What plan_decode_run found: `num_steps` steps of `num_seqs` decode rows whose
    contexts add up to `context` in the first step (and grow by num_seqs a step)."""
    __slots__ = ("reqs", "num_seqs", "context", "num_steps", "events", "token")

    def __init__(self, reqs, context, num_steps, events, token):
        self.reqs = reqs
        self.num_seqs = len(reqs)
        self.context = context
        self.num_steps = num_steps
        # Sorted (step, phase, request index): phase 0 = a new block at that step's schedule,
        # phase 1 = full blocks offered to the prefix cache at its update.
        self.events = events
        self.token = token


def plan(sched, token: int, max_steps: int) -> DecodeRun | None:
    cfg = sched.config
    running = sched.running
    if (cfg.batching != "continuous" or not running or sched._arrivals or len(sched.waiting)
            or len(running) > cfg.max_num_batched_tokens or sched._pending is not None
            or sched._scheduled):
        return None
    bs = cfg.block_size
    caching = cfg.enable_prefix_caching
    steps = max_steps
    context = 0
    for req in running:
        c = req.num_computed_tokens
        left = req.max_num_tokens - len(req.token_ids)   # steps until (and with) its last
        if (c != len(req.token_ids) - 1 or req.status is not _RUNNING
                or token in req.stop_ids or req.sampling_params.logprobs
                or (caching and req.num_hashed_blocks != c // bs)):
            return None
        if left - 1 < steps:
            steps = left - 1
            if steps < 1:
                return None
        context += c + 1
    events = []
    add = events.append
    for i, req in enumerate(running):
        c = req.num_computed_tokens
        # Step j computes position c + j; it needs a new block when that is the first slot
        # past the blocks it has.
        j = len(req.block_ids) * bs - c
        if j < 0:
            return None
        while j < steps:
            add((j, 0, i))
            j += bs
        if caching:
            j = -(c + 1) % bs           # the step after which a block is full
            while j < steps:
                add((j, 1, i))
                j += bs
    events.sort()
    bm = sched.block_manager
    free = bm.num_free_blocks
    for e in events:
        if e[1] == 0:
            free -= 1
            if free < 0:            # this step would preempt: the run stops before it
                steps = e[0]
                if steps < 1:
                    return None
                break
    return DecodeRun(list(running), context, steps, events, token)


def apply(sched, run: DecodeRun, starts: list[float], ends: list[float]) -> list[int]:
    """Apply the run's first len(starts) steps; step j scheduled at starts[j], its tokens
    at ends[j]. Returns the KV blocks in use after each step."""
    t0 = time.perf_counter_ns()
    k = len(starts)
    if not 1 <= k <= run.num_steps or len(ends) != k:
        raise ValueError(f"apply_decode_run: 1 <= steps <= {run.num_steps} with one end per "
                         f"start, got {k} starts and {len(ends)} ends")
    bm = sched.block_manager
    reqs = run.reqs
    nseq = run.num_seqs
    fill = [run.token] * k
    computed0 = [r.num_computed_tokens for r in reqs]
    for r in reqs:
        r.token_ids += fill
        r.token_times += ends
        if r.first_token_time is None:
            r.first_token_time = ends[0]
    # Blocks in use and cached-free after each step, with the block events in order.
    used = bm.num_used_blocks
    cached_free = bm.num_cached_free_blocks
    used_after = []
    cached_after = []
    j = 0
    for step, phase, i in run.events:
        if step >= k:
            break
        while j < step:
            used_after.append(used)
            cached_after.append(cached_free)
            j += 1
        r = reqs[i]
        if phase == 0:
            if not bm.num_free_blocks:
                raise AssertionError("decode run planned a block that is not there")
            if not bm._free:
                cached_free -= 1
            r.block_ids.append(bm.take_block())
            used += 1
        else:
            r.num_computed_tokens = computed0[i] + step + 1
            bm.cache_full_blocks(r)
    while j < k:
        used_after.append(used)
        cached_after.append(cached_free)
        j += 1
    for r, c in zip(reqs, computed0):
        r.num_computed_tokens = c + k
    # What schedule() / _record() / update_from_output() keep per step.
    bs = sched.config.block_size
    st = sched.stats
    shared = bm.num_shared_refs * bs
    kv = sched._kv_tokens
    hits = st.num_cache_hit_tokens
    step_id = sched._step_id
    rows = sched.step_records.rows
    reserved = used_slots = 0
    ns = (time.perf_counter_ns() - t0) // k
    for j in range(k):
        kv += nseq
        u = used_after[j]
        reserved += u * bs
        used_slots += kv - shared
        rows.append((step_id + j + 1, starts[j], nseq, nseq, 0, nseq, 0, u, cached_after[j],
                     kv - shared, 0, hits, ns, 0))
    sched._kv_tokens = kv
    sched._step_id = step_id + k
    sched._finished_ids = []
    st.kv_reserved_slots += reserved
    st.kv_used_slots += used_slots
    st.num_steps += k
    st.num_scheduled_tokens += k * nseq
    st.schedule_ns += time.perf_counter_ns() - t0
    return used_after
