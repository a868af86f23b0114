"""The unified scheduler loop (vLLM v1 / Sarathi-Serve style), pure Python.

There is no prefill or decode mode: each step every scheduled request's num_computed_tokens
catches up towards num_tokens under the token budget. Running requests go first (decodes and
unfinished prompt chunks), then waiting prompts fill what is left of the budget.

A policy is a set of knobs (SchedulerConfig); the four headline policies are presets:
  static      formed batch run to the end, padded; FCFS; KV reserved for prompt + max_tokens
              (StaticBatchScheduler, static_scheduler.py)
  continuous  in-flight batching, whole prompts, prefill first; FCFS; paged KV
  chunked     in-flight, chunked prefill, decode first under the token budget; FCFS; paged KV
  predictive  chunked + predicted-shortest-first queue with aging, victim = most predicted
              remaining work, oracle predictor
Any knob can be overridden on top of a preset.
"""
from __future__ import annotations

import collections
import collections.abc
import dataclasses
import itertools
import time

from llmserve.core import decode_run
from llmserve.core.block_manager import BlockManager
from llmserve.core.predictors import (
    apply_predictions,
    create_predictor,
    parse_predictor_spec,
)
from llmserve.core.request import Request, RequestStatus
from llmserve.core.request_queue import (
    PREDICTIVE_QUEUE_POLICIES,
    QUEUE_POLICIES,
    create_request_queue,
    predicted_len,
)
from llmserve.core.sched_output import RunnerOutput, ScheduledRequest, SchedulerOutput

_now_ns = time.perf_counter_ns
_PREEMPTED = RequestStatus.PREEMPTED

PRESETS = ("static", "continuous", "chunked", "predictive")
POLICIES = PRESETS
BATCHING_MODES = ("continuous", "static")
KV_ALLOCATIONS = ("paged", "reserve_max", "reserve_predicted")
PREEMPTION_VICTIMS = ("newest", "most_remaining")

# What each preset sets; knobs left None in a SchedulerConfig are taken from here, then from
# _KNOB_DEFAULTS.
PRESET_KNOBS = {
    "static": {"batching": "static", "chunked_prefill": False, "queue_policy": "fcfs",
               "kv_allocation": "reserve_max"},
    "continuous": {"batching": "continuous", "chunked_prefill": False, "queue_policy": "fcfs",
                   "kv_allocation": "paged"},
    "chunked": {"batching": "continuous", "chunked_prefill": True, "queue_policy": "fcfs",
                "kv_allocation": "paged"},
    "predictive": {"batching": "continuous", "chunked_prefill": True,
                   "queue_policy": "shortest_first", "kv_allocation": "paged",
                   "preemption_victim": "most_remaining", "predictor": "oracle"},
}
_KNOB_DEFAULTS = {"batching": "continuous", "chunked_prefill": True, "queue_policy": "fcfs",
                  "kv_allocation": "paged", "preemption_victim": "newest", "aging_rate": 50.0,
                  "length_bins": (50, 500), "static_batch_size": 32,
                  "static_batch_timeout_s": 0.0, "enable_prefix_caching": False,
                  "predictor": "none"}
KNOBS = tuple(_KNOB_DEFAULTS)


def _parse_bins(v):
    if isinstance(v, str):
        v = [x for x in v.replace(" ", "").split(",") if x]
        try:
            v = [int(x) for x in v]
        except ValueError:
            return None
    if not isinstance(v, (tuple, list)) or not v:
        return None
    if any(isinstance(x, bool) or not isinstance(x, int) for x in v):
        return None
    if v[0] < 1 or any(b <= a for a, b in itertools.pairwise(v)):
        return None
    return tuple(v)


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    block_size: int = 16
    num_kv_blocks: int = 1024
    max_model_len: int = 2048
    policy: str = "chunked"                 # the preset the unset knobs come from
    # ---- knobs: None = the preset's value ------------------------------------------------
    batching: str | None = None             # continuous (in-flight) | static (formed batches)
    chunked_prefill: bool | None = None     # may a prompt be split across steps
    queue_policy: str | None = None         # fcfs | shortest_first (with aging) | length_bins
    kv_allocation: str | None = None        # paged | reserve_max | reserve_predicted
    preemption_victim: str | None = None    # newest (vLLM) | most_remaining (predicted)
    aging_rate: float | None = None         # shortest_first: priority tokens gained per s waited
    length_bins: tuple | str | None = None  # length_bins: bin edges in predicted output tokens
    static_batch_size: int | None = None    # static: most requests per formed batch
    static_batch_timeout_s: float | None = None  # static: dispatch a partial batch after this
    enable_prefix_caching: bool | None = None
    predictor: str | None = None            # none | oracle | noisy_oracle:REL[:SEED] | ...
    # Fraction of the pool kept free when admitting new requests, so running ones can grow
    # without immediately preempting.
    admission_watermark: float = 0.01

    def __post_init__(self):
        def bad(field, expected, value):
            raise ValueError(f"scheduler config: {field} must be {expected}, got {value!r}")
        if self.policy not in PRESETS:
            bad("policy", f"one of {PRESETS}", self.policy)
        for k in KNOBS:
            if getattr(self, k) is None:
                v = PRESET_KNOBS[self.policy].get(k, _KNOB_DEFAULTS[k])
                object.__setattr__(self, k, v)
        for f in ("max_num_seqs", "max_num_batched_tokens", "num_kv_blocks", "max_model_len",
                  "static_batch_size"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                bad(f, "an int >= 1", v)
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or \
                self.block_size < 1 or self.block_size & (self.block_size - 1):
            bad("block_size", "a power of two", self.block_size)
        if self.max_num_batched_tokens < self.block_size:
            bad("max_num_batched_tokens", f">= block_size ({self.block_size})",
                self.max_num_batched_tokens)
        for f, allowed in (("batching", BATCHING_MODES), ("queue_policy", QUEUE_POLICIES),
                           ("kv_allocation", KV_ALLOCATIONS),
                           ("preemption_victim", PREEMPTION_VICTIMS)):
            if getattr(self, f) not in allowed:
                bad(f, f"one of {allowed}", getattr(self, f))
        for f in ("chunked_prefill", "enable_prefix_caching"):
            if not isinstance(getattr(self, f), bool):
                bad(f, "a bool", getattr(self, f))
        for f in ("aging_rate", "static_batch_timeout_s"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                bad(f, "a float >= 0", v)
            object.__setattr__(self, f, float(v))
        bins = _parse_bins(self.length_bins)
        if bins is None:
            bad("length_bins", "increasing positive int bin edges, e.g. (50, 500)",
                self.length_bins)
        object.__setattr__(self, "length_bins", bins)
        if not isinstance(self.admission_watermark, (int, float)) or \
                not 0 <= self.admission_watermark < 1:
            bad("admission_watermark", "a float in [0, 1)", self.admission_watermark)
        parse_predictor_spec(self.predictor)
        if self.predictor == "none":
            for f, needs in (("queue_policy", PREDICTIVE_QUEUE_POLICIES),
                             ("kv_allocation", ("reserve_predicted",)),
                             ("preemption_victim", ("most_remaining",))):
                if getattr(self, f) in needs:
                    bad("predictor", f"set (not 'none') when {f} is {getattr(self, f)!r}",
                        self.predictor)
        if self.batching == "static":
            if self.chunked_prefill:
                bad("chunked_prefill", "False with static batching (whole padded prompts)",
                    self.chunked_prefill)
            if self.kv_allocation != "reserve_max":
                bad("kv_allocation", "'reserve_max' with static batching (a formed batch "
                    "never grows or preempts)", self.kv_allocation)
        if not self.chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            bad("max_num_batched_tokens", f">= max_model_len ({self.max_model_len}) when "
                "prompts are not chunked", self.max_num_batched_tokens)

    @classmethod
    def for_policy(cls, policy: str, **kw) -> SchedulerConfig:
        return cls(policy=policy, **kw)

    @property
    def static_batch_limit(self) -> int:
        """Static batch size actually used: also bounded by max_num_seqs and the budget (every
        member costs a decode slot each step)."""
        return min(self.static_batch_size, self.max_num_seqs, self.max_num_batched_tokens)


# One per step, enough for every per-step metric.
StepRecord = collections.namedtuple("StepRecord", [
    "step_id", "time", "num_scheduled_reqs", "num_scheduled_tokens", "num_padding_tokens",
    "num_running", "num_waiting", "kv_blocks_used", "kv_blocks_cached", "kv_tokens_used",
    "num_preempted", "cache_hit_tokens", "schedule_ns", "update_ns"])


class StepRecordList(collections.abc.Sequence):
    """Scheduler.step_records: plain tuples are appended on the hot path (a namedtuple's
    Python-level constructor costs more than the rest of the record), read as StepRecord."""
    __slots__ = ("rows",)

    def __init__(self):
        self.rows: list[tuple] = []

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [StepRecord._make(r) for r in self.rows[i]]
        return StepRecord._make(self.rows[i])

    def __iter__(self):
        return map(StepRecord._make, self.rows)


@dataclasses.dataclass
class SchedulerStats:
    """Per-run totals. Per-step detail is in Scheduler.step_records."""
    block_size: int = 16
    num_steps: int = 0
    num_preemptions: int = 0
    num_scheduled_tokens: int = 0
    num_padding_tokens: int = 0
    num_finished: int = 0
    num_aborted: int = 0
    num_cache_hit_tokens: int = 0
    schedule_ns: int = 0
    update_ns: int = 0
    predict_ns: int = 0          # part of schedule_ns: the predictor's calls
    kv_reserved_slots: int = 0   # summed over steps, for the mean fragmentation
    kv_used_slots: int = 0

    @property
    def padding_waste(self) -> float:
        total = self.num_scheduled_tokens + self.num_padding_tokens
        return self.num_padding_tokens / total if total else 0.0

    @property
    def kv_fragmentation(self) -> float:
        """Reserved-but-unused token slots over reserved slots, over all steps."""
        if not self.kv_reserved_slots:
            return 0.0
        return 1.0 - self.kv_used_slots / self.kv_reserved_slots

    @property
    def scheduler_ns(self) -> int:
        return self.schedule_ns + self.update_ns

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(padding_waste=self.padding_waste, kv_fragmentation=self.kv_fragmentation,
                 scheduler_us_per_step=self.scheduler_ns / 1e3 / max(1, self.num_steps))
        return d


class Scheduler:
    def __init__(self, config: SchedulerConfig, predictor=None):
        if config.batching == "static" and not getattr(self, "_static_ok", False):
            raise ValueError("batching='static' needs StaticBatchScheduler; use "
                             "create_scheduler(config)")
        self.config = config
        self.block_manager = BlockManager(config.num_kv_blocks, config.block_size,
                                          config.enable_prefix_caching)
        self.waiting = create_request_queue(config.queue_policy, config.aging_rate,
                                            config.length_bins)
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.stats = SchedulerStats(block_size=config.block_size)
        self.step_records = StepRecordList()
        self.predictor = predictor if predictor is not None else create_predictor(
            config.predictor)
        # Arrivals wait here until the next schedule() predicts them in one batch.
        self._arrivals: dict[str, Request] = {}
        self._finished_ids: list[str] = []
        self._scheduled: list[tuple[Request, int]] = []
        self._step_id = 0
        self._watermark_blocks = int(config.admission_watermark * config.num_kv_blocks)
        self._kv_tokens = 0          # computed tokens of block-owning requests (with repeats)
        self._pending = None         # this step's numbers, recorded when the update lands

    # ---- requests in and out -------------------------------------------------------------
    def add_request(self, req: Request) -> None:
        cfg = self.config
        if req.request_id in self.requests:
            raise ValueError(f"request_id {req.request_id!r} is already in the scheduler")
        if req.num_prompt_tokens < 1 or req.num_prompt_tokens >= cfg.max_model_len:
            raise ValueError(f"request {req.request_id!r}: prompt of {req.num_prompt_tokens} "
                             f"tokens; must be in [1, max_model_len={cfg.max_model_len})")
        longest = min(req.num_prompt_tokens + req.sampling_params.max_tokens, cfg.max_model_len)
        need = -(-longest // cfg.block_size)
        if need > cfg.num_kv_blocks:
            raise ValueError(f"request {req.request_id!r} needs {need} KV blocks at its longest "
                             f"but the pool has {cfg.num_kv_blocks}")
        self.requests[req.request_id] = req
        if req.max_num_tokens > cfg.max_model_len:
            req.max_num_tokens = cfg.max_model_len
        if self.predictor is not None:
            self._arrivals[req.request_id] = req
        else:
            self.waiting.add(req)

    def abort(self, request_id: str, now: float | None = None) -> Request | None:
        """Abort a request in any state; its blocks are freed in this call."""
        req = self.requests.get(request_id)
        if req is None or req.is_finished:
            return None
        if self._arrivals.pop(request_id, None) is not None:
            pass
        elif req.status == RequestStatus.RUNNING:
            self.running.remove(req)
        else:
            self.waiting.remove(req)
        self._finish(req, RequestStatus.FINISHED_ABORTED, now)
        return req

    def has_unfinished(self) -> bool:
        return bool(self.running) or len(self.waiting) > 0 or bool(self._arrivals)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting) + len(self._arrivals)

    def _predict_arrivals(self) -> None:
        t0 = time.perf_counter_ns()
        batch = list(self._arrivals.values())
        self._arrivals = {}
        apply_predictions(self.predictor, batch, self.config.max_model_len)
        for r in batch:
            self.waiting.add(r)
        self.stats.predict_ns += time.perf_counter_ns() - t0

    # ---- one step -------------------------------------------------------------------------
    def schedule(self, now: float) -> SchedulerOutput:
        # The hot path of every runner (a trace simulation runs it ~25 times per request):
        # one pass over the running requests builds their ScheduledRequests directly.
        t0 = _now_ns()
        if self._arrivals:
            self._predict_arrivals()
        cfg = self.config
        budget = cfg.max_num_batched_tokens
        picked: list[tuple[Request, int]] = []
        scheduled: list[ScheduledRequest] = []
        preempted: list[str] = []
        total = 0
        chunked = cfg.chunked_prefill
        self.waiting.start_step(now)

        if chunked or not self._prompt_fits(budget):
            bm = self.block_manager
            bs = cfg.block_size
            running = self.running
            nrun = len(running)
            i = 0
            new = ScheduledRequest
            pick = picked.append
            add = scheduled.append
            while i < nrun and budget > 0:
                req = running[i]
                start = req.num_computed_tokens
                toks = req.token_ids
                nt = len(toks)
                n = nt - start
                if n > budget:
                    if not chunked:
                        break
                    n = budget
                end = start + n
                blocks = req.block_ids
                if end > len(blocks) * bs and not bm.grow(req, n):
                    while True:
                        victim = running.pop(self._victim_index(i))
                        self._preempt(victim, now)
                        preempted.append(victim.request_id)
                        if victim is req or bm.grow(req, n):
                            break
                    nrun = len(running)
                    if victim is req:
                        continue
                pick((req, n))
                # block_ids is the request's own list, not a copy: see sched_output.py.
                add(new(req.request_id, toks[start:end], start, blocks, end == nt,
                        nt - req.num_prompt_tokens, req.sampling_tuple))
                total += n
                budget -= n
                i += 1

        if not preempted and len(self.waiting):
            k = len(picked)
            budget = self._admit(now, budget, picked)
            for j in range(k, len(picked)):
                req, n = picked[j]
                start = req.num_computed_tokens
                end = start + n
                toks = req.token_ids
                nt = len(toks)
                scheduled.append(ScheduledRequest(
                    req.request_id, toks[start:end], start, req.block_ids, end == nt,
                    nt - req.num_prompt_tokens, req.sampling_tuple))
                total += n

        self._step_id += 1
        out = SchedulerOutput(self._step_id, scheduled, total, preempted, self._finished_ids)
        self._finished_ids = []
        self._scheduled = picked
        self._end_schedule(out, now, t0)
        return out

    def _victim_index(self, i: int) -> int:
        """Which running request (index >= i: not yet scheduled this step) to preempt."""
        running = self.running
        if self.config.preemption_victim == "newest":
            return len(running) - 1
        best, best_w = len(running) - 1, None
        for j in range(len(running) - 1, i - 1, -1):    # ties go to the newest
            r = running[j]
            w = predicted_len(r) - r.num_output_tokens + (r.num_prompt_tokens - min(
                r.num_computed_tokens, r.num_prompt_tokens))
            if best_w is None or w > best_w:
                best, best_w = j, w
        return best

    def _prompt_fits(self, budget: int) -> bool:
        if len(self.running) >= self.config.max_num_seqs:
            return False
        req = self.waiting.peek(0.0)
        if req is None:
            return False
        n = req.num_tokens - req.num_computed_tokens
        return n <= budget and self.block_manager.can_allocate(
            req, n, self._watermark_blocks, self._reservation(req))

    def _reservation(self, req: Request) -> int:
        """Token slots to allocate at admission (0: on demand)."""
        mode = self.config.kv_allocation
        if mode == "paged":
            return 0
        full = min(req.num_prompt_tokens + req.sampling_params.max_tokens,
                   self.config.max_model_len)
        if mode == "reserve_max":
            return full
        pred = req.num_prompt_tokens + int(-(-predicted_len(req) // 1))
        return min(full, max(req.num_tokens + 1, pred))

    def _admit(self, now: float, budget: int, picked: list) -> int:
        cfg = self.config
        bm = self.block_manager
        caching = cfg.enable_prefix_caching
        waiting = self.waiting
        while budget > 0 and len(self.running) < cfg.max_num_seqs:
            req = waiting.peek(now)
            if req is None:
                break
            # A request asking for prompt logprobs computes its whole prompt: cached blocks
            # would skip the rows whose logits it needs (vLLM does the same). It still
            # offers its own blocks to the cache.
            hits = bm.match_prefix(req) if caching and req.prompt_logprobs is None else ()
            n = req.num_tokens - req.num_computed_tokens - len(hits) * cfg.block_size
            if n > budget:
                if not cfg.chunked_prefill:
                    break
                n = budget
            if not bm.allocate_slots(req, n, self._watermark_blocks, self._reservation(req),
                                     hits, req.num_tokens if caching else 0):
                break
            waiting.pop(now)
            self._kv_tokens += len(hits) * cfg.block_size
            self.stats.num_cache_hit_tokens += len(hits) * cfg.block_size
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
        self._kv_tokens -= req.num_computed_tokens
        self.block_manager.free(req)
        req.num_computed_tokens = 0
        req.status = RequestStatus.PREEMPTED
        req.num_preemptions += 1
        self.stats.num_preemptions += 1
        self.waiting.add_front(req)

    def _end_schedule(self, out: SchedulerOutput, now: float, t0: int) -> None:
        st = self.stats
        dt = _now_ns() - t0
        st.schedule_ns += dt
        if not out.scheduled and not out.preempted_req_ids:
            return      # an idle call (nothing runnable yet): no step
        st.num_steps += 1
        st.num_scheduled_tokens += out.num_scheduled_tokens
        st.num_padding_tokens += out.num_padding_tokens
        self._pending = (out.step_id, now, len(out.scheduled), out.num_scheduled_tokens,
                         out.num_padding_tokens, len(out.preempted_req_ids),
                         st.num_cache_hit_tokens, dt)
        if not out.scheduled:    # the engine does not call update_from_output for it
            self._record(0)

    # ---- results --------------------------------------------------------------------------
    def update_from_output(self, sched_out: SchedulerOutput, runner_out: RunnerOutput,
                           now: float) -> list[Request]:
        """Apply a step's results. Returns the requests that got a token or finished."""
        t0 = _now_ns()
        changed = []
        append_changed = changed.append
        any_finished = False
        sampled = runner_out.sampled
        get_token = sampled.get
        bm = self.block_manager
        caching = self.config.enable_prefix_caching
        bs = self.config.block_size
        added = 0
        preempted = _PREEMPTED
        if runner_out.prompt_logprobs:
            self._store_prompt_logprobs(runner_out.prompt_logprobs)
        for req, n in self._scheduled:
            if req.status > preempted:      # aborted while the step ran
                continue
            c = req.num_computed_tokens + n
            req.num_computed_tokens = c
            added += n
            if caching and c // bs > req.num_hashed_blocks:
                bm.cache_full_blocks(req)
            tok = get_token(req.request_id)
            if tok is None:
                continue
            toks = req.token_ids
            toks.append(tok)
            if req.sampling_params.logprobs:
                req.output_logprobs.append(runner_out.logprobs.get(req.request_id,
                                                                   float("nan")))
                if req.sampling_params.top_logprobs:
                    req.output_top_logprobs.append(
                        runner_out.top_logprobs.get(req.request_id, []))
            req.token_times.append(now)
            if req.first_token_time is None:
                req.first_token_time = now
            # Fast path: most tokens stop nothing (max_num_tokens and stop_ids hold the
            # conditions _stop_status checks).
            if len(toks) < req.max_num_tokens and tok not in req.stop_ids:
                append_changed(req)
                continue
            if len(toks) > req.max_num_tokens:
                # max_tokens=0 (prompt logprobs only): the computed prompt is the whole
                # request; the token this step sampled is taken back (off the fast path).
                del toks[-1], req.token_times[-1]
                if req.sampling_params.logprobs:
                    del req.output_logprobs[-1]
                    if req.sampling_params.top_logprobs:
                        del req.output_top_logprobs[-1]
                status = RequestStatus.FINISHED_LENGTH
            else:
                status = self._stop_status(req, tok)
            if status is not None:
                self._kv_tokens += added
                added = 0
                self._finish(req, status, now)
                any_finished = True
            append_changed(req)
        self._kv_tokens += added
        if any_finished:   # one pass, not a list.remove per finished request
            self.running = [r for r in self.running if r.status <= preempted]
        self._scheduled = []
        self._after_update()
        dt = _now_ns() - t0
        self.stats.update_ns += dt
        self._record(dt)
        return changed

    def _store_prompt_logprobs(self, computed: dict) -> None:
        for rid, (p0, lps, tops) in computed.items():
            req = self.requests.get(rid)
            if req is None or req.prompt_logprobs is None:    # finished or aborted meanwhile
                continue
            prompt = req.prompt_token_ids
            slots = req.prompt_logprobs
            for i, lp in enumerate(lps):
                j = p0 + i + 1
                if slots[j] is None:     # recomputed after preemption: already there
                    slots[j] = [(prompt[j], lp)] + (tops[i] if tops is not None else [])

    def _after_update(self) -> None:
        """Hook for the static scheduler (batch end)."""

    def _record(self, update_ns: int) -> None:
        p = self._pending
        if p is None:
            return
        self._pending = None
        bm = self.block_manager
        bs = self.config.block_size
        cached_free = len(bm._cached_free)
        used = bm.num_blocks - len(bm._free) - cached_free
        tokens = self._kv_tokens - bm.num_shared_refs * bs
        st = self.stats
        st.kv_reserved_slots += used * bs
        st.kv_used_slots += tokens
        self.step_records.rows.append((
            p[0], p[1], p[2], p[3], p[4], len(self.running),
            len(self.waiting) + len(self._arrivals), used, cached_free, tokens,
            p[5], p[6], p[7], update_ns))

    def _stop_status(self, req: Request, tok: int) -> RequestStatus | None:
        sp = req.sampling_params
        if tok in sp.stop_token_ids or tok in req.eos_token_ids:
            req.stop_token_id = tok
            return RequestStatus.FINISHED_STOPPED
        # max_num_tokens is prompt + max_tokens (capped at max_model_len) unless a replay ends
        # the request at its trace length below the client's max_tokens (replay.py).
        if req.num_tokens >= req.max_num_tokens or req.num_tokens >= self.config.max_model_len:
            return RequestStatus.FINISHED_LENGTH
        return None

    def _release(self, req: Request) -> None:
        self._kv_tokens -= req.num_computed_tokens
        self.block_manager.free(req)

    def _finish(self, req: Request, status: RequestStatus, now: float | None) -> None:
        req.status = status
        req.finish_time = now
        self._release(req)
        self._finished_ids.append(req.request_id)
        del self.requests[req.request_id]
        if status == RequestStatus.FINISHED_ABORTED:
            self.stats.num_aborted += 1
        else:
            self.stats.num_finished += 1

    # ---- runs of identical decode steps (core/decode_run.py) -----------------------------
    def plan_decode_run(self, token: int, max_steps: int = 1024):
        """The DecodeRun that the next steps are (at most max_steps), or None: steps in which
        every running request decodes one token until it finishes, provided nothing arrives
        or is aborted meanwhile and the runner samples `token`."""
        return decode_run.plan(self, token, max_steps)

    def apply_decode_run(self, run, starts: list[float], ends: list[float]):
        """Apply a planned run's first len(starts) steps as schedule(starts[j]) +
        update_from_output(..., ends[j]) would; returns (the requests that finished, per
        step (KV blocks in use, running requests' blocks, their computed tokens))."""
        return decode_run.apply(self, run, starts, ends)

    # ---- invariants (tests) ---------------------------------------------------------------
    def block_owners(self) -> list[list[int]]:
        return [r.block_ids for r in self.running]

    def check_invariants(self) -> None:
        self.block_manager.check_owners(self.block_owners())


def create_scheduler(config: SchedulerConfig, predictor=None) -> Scheduler:
    if config.batching == "static":
        from llmserve.core.static_scheduler import StaticBatchScheduler
        return StaticBatchScheduler(config, predictor)
    return Scheduler(config, predictor)
