"""Runs of decode steps, applied at once (the simulator's fast path).

Most steps of a trace simulation are pure decode: every running request gets one token and
nothing waits. While nothing waits, nothing the scheduler decides can differ from one step to
the next except which blocks the requests grow into and which of them finish; both follow
from the requests' lengths. So `Scheduler.plan_decode_run` checks that the next steps are such
steps and how many there can be, and `Scheduler.apply_decode_run` applies them as
`schedule()` + `update_from_output()` would, step by step in effect: every token with its own
time, every step its StepRecord, block growth, prefix-cache registration and finishes in the
same order (so the same blocks, evictions, hashes and free-list order).

A run ends before the first step that could differ if the driver did nothing in between: a
block that could not be had (the ordinary step preempts), or nobody left. The driver
(workload/replay.py) also ends it before an arrival or the time cap. Conditions for a run at
all: continuous batching, nothing waiting or arriving, every running request decoding (one
token to compute), within the token budget, no logprobs, the runner's token stopping nobody.
"""
from __future__ import annotations

import time

from llmserve.core.request import RequestStatus

_RUNNING = RequestStatus.RUNNING
_PREEMPTED = RequestStatus.PREEMPTED


class DecodeRun:
    """What plan_decode_run found: up to `num_steps` steps. The decoding requests (the
    pool) have `num_seqs` one-token rows in the first step whose contexts (the new token
    included) add up to `context`; each step every pool row's context grows by one, and
    `finishes[j] = (rows, their contexts)` leave the pool after step j (a negative entry is
    the prefilling request joining it). `prefill[j] = (tokens, context at its end, samples)`
    is the prefilling request's chunk in step j, if there is one."""
    __slots__ = ("reqs", "num_seqs", "context", "num_steps", "finishes", "prefill",
                 "sample_step", "events", "token")

    def __init__(self, reqs, num_seqs, context, num_steps, finishes, prefill, sample_step,
                 events, token):
        self.reqs = reqs
        self.num_seqs = num_seqs
        self.context = context
        self.num_steps = num_steps
        self.finishes = finishes
        self.prefill = prefill
        self.sample_step = sample_step   # the step the prefilling request samples in, or None
        # Sorted (step, phase, request index, what): phase 0 = schedule (what: new blocks
        # it grows by), phase 1 = update (what 0: full blocks offered to the prefix cache,
        # 1: the request's last token, it finishes).
        self.events = events
        self.token = token


def _add_finish(finishes, j, n, ctx):
    f = finishes.get(j)
    finishes[j] = (n, ctx) if f is None else (f[0] + n, f[1] + ctx)


def _decode_events(add, i, c, nblocks, first, end, bs, caching):
    """Block and cache events of request i decoding from step `first` (computing position c
    then) up to step `end` (exclusive)."""
    # Step j computes position c + j - first; it needs a new block when that is the first
    # slot past the blocks it has.
    j = first + nblocks * bs - c
    while j < end:
        add((j, 0, i, 1))
        j += bs
    if caching:
        j = first + (-(c + 1) % bs)     # the step after which a block is full
        while j < end:
            add((j, 1, i, 0))
            j += bs


def _overrides(cls) -> bool:
    """Whether a Scheduler subclass changes a step (then its runs are not these)."""
    from llmserve.core.scheduler import Scheduler
    return any(getattr(cls, f) is not getattr(Scheduler, f) for f in _STEP_METHODS)


_STEP_METHODS = ("schedule", "update_from_output", "_after_update", "_record", "_finish",
                 "_stop_status", "_release")
_plain: dict[type, bool] = {}


def plan(sched, token: int, max_steps: int) -> DecodeRun | None:
    cfg = sched.config
    running = sched.running
    cls = type(sched)
    plain = _plain.get(cls)
    if plain is None:
        plain = _plain[cls] = not _overrides(cls)
    if (not plain or cfg.batching != "continuous" or not running or sched._arrivals
            or len(sched.waiting)
            or len(running) > cfg.max_num_batched_tokens or sched._pending is not None
            or sched._scheduled or max_steps < 1):
        return None
    bs = cfg.block_size
    caching = cfg.enable_prefix_caching
    last = len(running) - 1
    context = 0
    longest = 0
    pre = None          # the one request still prefilling, if any: it must be the last
    for i, req in enumerate(running):
        c = req.num_computed_tokens
        if (req.status is not _RUNNING or token in req.stop_ids
                or req.sampling_params.logprobs
                or req.prompt_logprobs is not None
                or (caching and req.num_hashed_blocks != c // bs)):
            return None
        if c != len(req.token_ids) - 1:
            if i != last or not cfg.chunked_prefill or c >= len(req.token_ids):
                return None
            pre = req
            continue
        left = req.max_num_tokens - len(req.token_ids)  # its steps, the finishing one included
        if left > longest:
            longest = left
        context += c + 1
    nseq = len(running) - (pre is not None)
    finishes = {}
    events = []
    add = events.append
    steps = min(max_steps, longest)
    prefill = []
    sample_step = None
    if pre is not None:
        # Its chunks take what the decode rows before it leave of the budget (chunked
        # prefill's running pass), so they follow the pool's finishes.
        pool_fin = {}
        for req in running[:last]:
            j = req.max_num_tokens - len(req.token_ids) - 1
            pool_fin[j] = pool_fin.get(j, 0) + 1
        budget = cfg.max_num_batched_tokens
        c = pre.num_computed_tokens
        nt = len(pre.token_ids)
        nblocks = len(pre.block_ids)
        ndec = nseq
        j = 0
        while c < nt and j < max_steps:
            q = min(nt - c, budget - ndec)
            if q < 1:
                break
            if -(-(c + q) // bs) > nblocks:
                add((j, 0, last, -(-(c + q) // bs) - nblocks))
                nblocks = -(-(c + q) // bs)
            if caching and (c + q) // bs > c // bs:
                add((j, 1, last, 0))
            c += q
            prefill.append((q, c, c == nt))
            ndec -= pool_fin.get(j, 0)
            j += 1
        if not prefill:
            return None
        if c == nt:
            sample_step = j - 1
            fin = sample_step + pre.max_num_tokens - nt - 1     # the step it finishes in
            steps = min(max_steps, max(longest, fin + 1))
            if fin > sample_step:
                _add_finish(finishes, sample_step, -1, -nt)     # joins the pool
                _add_finish(finishes, fin, 1, nt + fin - sample_step)
                _decode_events(add, last, nt, nblocks, sample_step + 1, min(steps, fin + 1),
                               bs, caching)
            if fin < steps:
                add((fin, 1, last, 1))
        else:
            steps = len(prefill)
    for i in range(nseq):
        req = running[i]
        c = req.num_computed_tokens
        fin = req.max_num_tokens - len(req.token_ids) - 1     # the step it finishes in
        if len(req.block_ids) * bs < c:
            return None
        _decode_events(add, i, c, len(req.block_ids), 0, min(steps, fin + 1), bs, caching)
        if fin < steps:
            add((fin, 1, i, 1))
            _add_finish(finishes, fin, 1, c + fin + 1)
    events.sort()
    # Blocks: every growth must find one (else that step preempts: the run stops before it).
    # A finish gives back the blocks only it holds (shared prefix blocks may stay owned).
    bm = sched.block_manager
    free = bm.num_free_blocks
    grown = [0] * len(running)
    ref = bm.ref_counts
    for e in events:
        if e[0] >= steps:
            break
        if e[1] == 0:
            free -= e[3]
            if free < 0:
                steps = e[0]
                if steps < 1:
                    return None
                break
            grown[e[2]] += e[3]
        elif e[3] == 1:
            i = e[2]
            blocks = running[i].block_ids
            free += grown[i] + (len(blocks) if not caching
                                else sum(1 for b in blocks if ref[b] == 1))
    return DecodeRun(list(running), nseq, context, steps, finishes, prefill[:steps],
                     sample_step if sample_step is not None and sample_step < steps else None,
                     events, token)


def apply(sched, run: DecodeRun, starts: list[float], ends: list[float]):
    """Apply the run's first len(starts) steps; step j scheduled at starts[j], its tokens
    at ends[j]. Returns (finished requests in the order they finished, and per step: the KV
    blocks in use when it ran, the running requests' blocks and computed tokens after it,
    its tokens)."""
    t0 = time.perf_counter_ns()
    k = len(starts)
    if not 1 <= k <= run.num_steps or len(ends) != k:
        raise ValueError(f"apply_decode_run: 1 <= steps <= {run.num_steps} with one end per "
                         f"start, got {k} starts and {len(ends)} ends")
    bm = sched.block_manager
    reqs = run.reqs
    token = run.token
    nseq = pool0 = run.num_seqs
    prefill = run.prefill
    npf = min(len(prefill), k)
    jp = run.sample_step if run.sample_step is not None and run.sample_step < k else None
    computed0 = [r.num_computed_tokens for r in reqs]
    blocks_run = comp_run = 0
    for r in reqs[:nseq]:
        n = r.max_num_tokens - len(r.token_ids)      # its steps, the finishing one included
        if n >= k:
            r.token_ids += [token] * k
            r.token_times += ends
        else:
            r.token_ids += [token] * n
            r.token_times += ends[:n]
        if r.first_token_time is None:
            r.first_token_time = ends[0]
    pre = reqs[nseq] if nseq < len(reqs) else None
    nt_pre = len(pre.token_ids) if pre is not None else 0
    if jp is not None:
        n = min(k - jp, pre.max_num_tokens - nt_pre)
        pre.token_ids += [token] * n
        pre.token_times += ends[jp:jp + n]
        if pre.first_token_time is None:
            pre.first_token_time = ends[jp]
    for r, c in zip(reqs, computed0):
        blocks_run += len(r.block_ids)
        comp_run += c
    bs = sched.config.block_size
    st = sched.stats
    hits = st.num_cache_hit_tokens
    step_id = sched._step_id
    rows = sched.step_records.rows
    events = run.events
    ne = len(events)
    e = 0
    live = len(reqs)
    kv = sched._kv_tokens
    used = bm.num_used_blocks
    cached_free = len(bm._cached_free)
    shared = bm.num_shared_refs * bs
    finished = []
    per_step = []
    reserved = used_slots = tokens = 0
    free = bm._free
    j = 0
    while j < k:
        if j >= npf:
            # Steps up to the next event change nothing but the counts: written in one go.
            stop = events[e][0] if e < ne and events[e][0] < k else k
            if stop > j:
                m = stop - j
                if sched._finished_ids:
                    sched._finished_ids = []
                base = kv - shared
                rows += [(step_id + x + 1, starts[x], nseq, nseq, 0, nseq, 0, used,
                          cached_free, base + (x - j + 1) * nseq, 0, hits, 0, 0)
                         for x in range(j, stop)]
                per_step += [(used, blocks_run, comp_run + (x - j + 1) * nseq, nseq)
                             for x in range(j, stop)]
                reserved += used * bs * m
                used_slots += base * m + nseq * (m * (m + 1) // 2)
                kv += nseq * m
                comp_run += nseq * m
                tokens += nseq * m
                j = stop
                if j == k:
                    break
        while e < ne and events[e][0] == j and events[e][1] == 0:     # schedule: growth
            _, _, i, n = events[e]
            if n > len(free):
                cached_free -= n - len(free)
            bm.take_blocks(reqs[i].block_ids, n)
            used += n
            blocks_run += n
            e += 1
        used_then = used
        if j < npf:
            ran = nseq + 1
            n = nseq + prefill[j][0]
        else:
            ran = n = nseq
        kv += n
        comp_run += n
        tokens += n
        if sched._finished_ids:         # handed to the runner by this step's schedule()
            sched._finished_ids = []
        while e < ne and events[e][0] == j:                             # update
            _, _, i, kind = events[e]
            r = reqs[i]
            if i < pool0:
                c = computed0[i] + j + 1
            elif j < npf:
                c = prefill[j][1]
            else:
                c = nt_pre + j - jp
            r.num_computed_tokens = c
            if kind == 0:
                bm.cache_full_blocks(r)
            else:
                blocks_run -= len(r.block_ids)
                comp_run -= c
                kv -= c
                status = sched._stop_status(r, token)
                if status is None:
                    raise AssertionError(f"decode run: {r.request_id} planned to finish")
                sched._finish(r, status, ends[j])
                finished.append(r)
                live -= 1
                if i < pool0 or j != jp:
                    nseq -= 1           # it was in the pool
                used = bm.num_used_blocks
                cached_free = len(bm._cached_free)
                shared = bm.num_shared_refs * bs
            e += 1
        if j == jp and pre.status is _RUNNING:
            nseq += 1                   # the prefilled request decodes from the next step
        reserved += used * bs
        used_slots += kv - shared
        rows.append((step_id + j + 1, starts[j], ran, n, 0, live, 0, used, cached_free,
                     kv - shared, 0, hits, 0, 0))
        per_step.append((used_then, blocks_run, comp_run, n))
        j += 1
    for i, (r, c) in enumerate(zip(reqs, computed0)):
        if r.status is _RUNNING:
            if i < pool0:
                r.num_computed_tokens = c + k
            elif jp is None:
                r.num_computed_tokens = prefill[k - 1][1]
            else:
                r.num_computed_tokens = nt_pre + k - 1 - jp
    if finished:
        sched.running = [r for r in sched.running if r.status <= _PREEMPTED]
    sched._kv_tokens = kv
    sched._step_id = step_id + k
    st.kv_reserved_slots += reserved
    st.kv_used_slots += used_slots
    st.num_steps += k
    st.num_scheduled_tokens += tokens
    dt = time.perf_counter_ns() - t0
    st.schedule_ns += dt
    # The run's scheduler time goes to its first step's record (the records still add up).
    rows[-k] = rows[-k][:12] + (dt, 0)
    return finished, per_step
