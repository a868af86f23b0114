"""Real replicas on Ray: each replica an LLMEngine in a Ray actor, the router in the driver.

    router = RayRouter(EngineConfig(model="tiny"), num_replicas=2, policy="least_tokens")
    router.start()                      # actors built, models loaded (ray.init() if needed)
    outs = router.generate(prompts, SamplingParams(temperature=0))
    router.shutdown()

Replica side (`ReplicaServer`, run as a threaded Ray actor): a background thread steps the
engine whenever it has work; `add`/`abort` reach that thread through a command deque (only it
touches the engine), and the new tokens of each request collect in an outbox that the driver
long-polls (`poll` returns as soon as anything is there, or after `wait_s`). Each poll also
carries the replica's load, so the router's view is one poll old at most.

Driver side (`RayRouter`): validates a request exactly as LLMEngine does (same function), asks
the router policy (llmserve.cluster.router) for a replica among the alive ones, sends it,
and a pump thread turns the replicas' deltas into cumulative RequestOutputs for the request's
listener. When a replica's poll fails (the actor died: killed, crashed, node lost), it is
taken out of routing and every request it held is sent again, from its prompt, to a replica
the policy chooses: recomputed from scratch, nothing lost. Tokens already streamed are not
streamed twice: a re-routed request's snapshots resume only once the new replica has caught
up. That the recomputed tokens equal the lost ones needs deterministic sampling: greedy is,
and a request without a seed gets one derived from its id here (an engine would otherwise
draw it from its own request counter, which differs between replicas).

A dead replica is then replaced, up to `max_restarts` times per replica: after a backoff
(`restart_backoff_s`, doubling with each restart of that replica) the router starts a fresh
ReplicaServer actor with the same EngineConfig and replica id, and puts it back into routing
once its ready() answers (model loaded, warm-up compiled if the config asks for it). Past
`max_restarts` the replica stays dead. Requests that find no replica alive while one is
restarting wait in the driver for it instead of failing.

Why the router starts the new actor instead of Ray's own `max_restarts` actor option: the
router must notice the death anyway (to resend the requests), and doing the restart itself
keeps one code path for every way an actor goes: Ray restarts nothing after
`ray.kill(no_restart=True)`, gives no backoff between restarts, and the driver could not tell
"restarting" from "dead for good" without the state API (which needs the dashboard this
runs without). A Ray-restarted actor would also keep its handle, so a late reply of the old
incarnation could not be told from the new one's; here each incarnation is its own handle,
and the old one is killed for sure (an actor Ray merely reports unavailable might otherwise
come back holding requests that were already resent).

`RayRouterClient` is the server's EngineClient (llmserve/server/async_engine.py) over a
RayRouter, so the OpenAI server can front N replicas instead of one engine.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

from llmserve.config import EngineConfig
from llmserve.outputs import RequestMetrics, RequestOutput
from llmserve.sampling_params import SamplingParams
from llmserve.validation import validate_request

log = logging.getLogger("llmserve.cluster")


# ---- replica side -----------------------------------------------------------------------------
class ReplicaServer:
    """One LLMEngine stepped by its own thread. Plain class: RayRouter wraps it in ray.remote
    (tests can drive it without Ray)."""

    def __init__(self, engine_config: EngineConfig, replica_id: int):
        from llmserve.engine import LLMEngine
        self.replica_id = replica_id
        self.engine = LLMEngine(engine_config)
        self._cmds: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._cv = threading.Condition()
        self._out: dict[str, dict] = {}      # request id -> delta not yet polled
        self._sent: dict[str, int] = {}      # request id -> output tokens already in a delta
        self._stopping = False
        self._stats = self._load()
        self._thread = threading.Thread(target=self._run, name=f"replica-{replica_id}",
                                        daemon=True)
        self._thread.start()

    def ready(self) -> dict:
        return self._stats

    def add(self, request_id: str, prompt_ids: list[int], sp: SamplingParams) -> None:
        self._cmds.append(("add", request_id, prompt_ids, sp))
        self._wake.set()

    def abort(self, request_id: str) -> None:
        self._cmds.append(("abort", request_id))
        self._wake.set()

    def poll(self, wait_s: float = 0.05) -> tuple[list[dict], dict]:
        """(deltas, load): each delta {id, tokens, logprobs, top_logprobs, finished,
        finish_reason, num_preemptions[, prompt_logprobs in a request's first]} or {id, error};
        tokens are the new ones since the last poll."""
        with self._cv:
            if not self._out:
                self._cv.wait(wait_s)
            out, self._out = list(self._out.values()), {}
            return out, self._stats

    def shutdown(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(5.0)

    # ---- the engine thread ----------------------------------------------------------------
    def _run(self) -> None:
        eng = self.engine
        while not self._stopping:
            self._wake.clear()
            self._apply_commands()
            if not eng.has_unfinished():
                self._publish([])
                self._wake.wait(0.5)
                continue
            try:
                changed = eng.step_requests()
            except Exception as e:   # fail what is in flight, keep serving
                log.exception("replica %d: step failed", self.replica_id)
                errs = []
                for rid in list(self._sent):
                    eng.abort(rid)
                    errs.append({"id": rid, "error": f"replica step failed: {e!r}"})
                self._sent.clear()
                self._publish(errs)
                continue
            deltas = []
            for req in changed:
                rid = req.request_id
                failed = eng.errors.pop(rid, None) if eng.errors else None
                n = self._sent.get(rid)
                if n is None:          # aborted meanwhile
                    continue
                if failed is not None:     # the step failed on it: aborted alone
                    del self._sent[rid]
                    deltas.append({"id": rid, "error": failed})
                    continue
                toks = req.output_token_ids
                lps = req.output_logprobs if req.sampling_params.logprobs else None
                tops = req.output_top_logprobs if req.sampling_params.top_logprobs else None
                d = {"id": rid, "tokens": list(toks[n:]),
                     "logprobs": None if lps is None else list(lps[n:]),
                     "top_logprobs": None if tops is None else list(tops[n:]),
                     "finished": req.is_finished,
                     "finish_reason": req.finish_reason.value if req.finish_reason else None,
                     "num_preemptions": req.num_preemptions}
                if n == 0 and req.prompt_logprobs is not None:
                    # Complete by the first delta (a request changes once its prefill is done).
                    d["prompt_logprobs"] = list(req.prompt_logprobs)
                if req.is_finished:
                    del self._sent[rid]
                else:
                    self._sent[rid] = len(toks)
                deltas.append(d)
            self._publish(deltas)

    def _apply_commands(self) -> None:
        errs = []
        while self._cmds:
            cmd = self._cmds.popleft()
            if cmd[0] == "add":
                _, rid, ids, sp = cmd
                try:
                    self.engine.add_request(ids, sp, rid)
                    self._sent[rid] = 0
                except ValueError as e:      # the driver validated; belt and braces
                    errs.append({"id": rid, "error": str(e)})
            elif self._sent.pop(cmd[1], None) is not None:
                self.engine.abort(cmd[1])
                with self._cv:
                    self._out.pop(cmd[1], None)
        if errs:
            self._publish(errs)

    def _publish(self, deltas: list[dict]) -> None:
        stats = self._load()
        with self._cv:
            self._stats = stats
            out = self._out
            for d in deltas:
                prev = out.get(d["id"])
                if prev is not None and "tokens" in prev and "tokens" in d:
                    # Several steps between two polls: one delta per request.
                    d = {**d, "tokens": prev["tokens"] + d["tokens"],
                         **{k: None if d[k] is None else prev[k] + d[k]
                            for k in ("logprobs", "top_logprobs")}}
                    if "prompt_logprobs" in prev:
                        d["prompt_logprobs"] = prev["prompt_logprobs"]
                out[d["id"]] = d
            if deltas:
                self._cv.notify_all()

    def _load(self) -> dict:
        sched = self.engine.scheduler
        bm = sched.block_manager
        st = sched.stats
        return {"replica_id": self.replica_id, "pid": os.getpid(),
                "num_running": sched.num_running,
                "num_waiting": sched.num_waiting, "kv_blocks_total": bm.num_blocks,
                "kv_blocks_used": bm.num_used_blocks, "kv_blocks_free": bm.num_free_blocks,
                "kv_blocks_cached": bm.num_cached_free_blocks,
                "num_preemptions": st.num_preemptions,
                "prefix_hit_tokens": st.num_cache_hit_tokens, "num_steps": st.num_steps,
                "num_finished": st.num_finished, "num_aborted": st.num_aborted,
                "num_compiles": getattr(getattr(self.engine.runner, "stats", None),
                                        "num_compiles", 0),
                "max_model_len": self.engine.config.max_model_len}


# ---- driver side ------------------------------------------------------------------------------
@dataclasses.dataclass
class _Flight:
    """A request the driver has routed and not yet seen finish."""
    request_id: str
    prompt: str | None
    prompt_ids: list[int]
    sp: SamplingParams
    listener: Callable[[Any], None] | None
    arrival: float
    replica: int = -1
    tokens: list = dataclasses.field(default_factory=list)
    logprobs: list | None = None
    top_logprobs: list | None = None
    prompt_logprobs: list | None = None
    emitted: int = 0                 # tokens already delivered to the listener
    first_token_time: float | None = None
    attempts: int = 0


class RayRouter:
    def __init__(self, engine_config: EngineConfig, num_replicas: int,
                 policy: str = "least_tokens", policy_kwargs: dict | None = None, *,
                 num_gpus_per_replica: float = 0.0, num_cpus_per_replica: float = 1.0,
                 poll_wait_s: float = 0.05, max_restarts: int = 3,
                 restart_backoff_s: float = 1.0, restart_timeout_s: float = 900.0):
        """num_gpus_per_replica: 1 in production (Ray pins each actor to its own GPU); 0 on a
        CPU machine. The policy is any llmserve.cluster.router policy name. max_restarts: how
        many times a dead replica is replaced (0: never); restart_backoff_s: wait before the
        first replacement of a replica, doubled for each later one (a replica that crashes at
        once must not spin); restart_timeout_s: a replacement not ready by then (never
        scheduled: no free GPU; or hung loading) is killed and counts as a failed restart."""
        from llmserve.cluster.router import make_policy
        if isinstance(num_replicas, bool) or not isinstance(num_replicas, int) \
                or num_replicas < 1:
            raise ValueError(f"num_replicas must be an int >= 1, got {num_replicas!r}")
        if num_gpus_per_replica < 0 or num_cpus_per_replica < 0:
            raise ValueError("num_gpus_per_replica and num_cpus_per_replica must be >= 0")
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) \
                or max_restarts < 0:
            raise ValueError(f"max_restarts must be an int >= 0, got {max_restarts!r}")
        if not restart_backoff_s >= 0:
            raise ValueError(f"restart_backoff_s must be >= 0, got {restart_backoff_s!r}")
        if not restart_timeout_s > 0:
            raise ValueError(f"restart_timeout_s must be > 0, got {restart_timeout_s!r}")
        self.config = engine_config
        self.num_replicas = num_replicas
        kw = dict(policy_kwargs or {})
        if policy == "prefix_aware":
            kw.setdefault("block_size", engine_config.block_size)
        self.policy = make_policy(policy, **kw)
        self.model_config, self.tokenizer = _model_and_tokenizer(engine_config)
        self._resources = dict(num_gpus=num_gpus_per_replica, num_cpus=num_cpus_per_replica)
        self.poll_wait_s = poll_wait_s
        self.max_restarts = max_restarts
        self.restart_backoff_s = restart_backoff_s
        self.restart_timeout_s = restart_timeout_s
        self.actors: list = []
        self.alive: list[bool] = []          # takes requests (status "alive")
        self.status: list[str] = []          # per replica: "alive", "restarting" or "dead"
        self.restarts: list[int] = []        # replacement actors started, per replica
        # One dict per replacement that answered ready(): replica, restart (1, 2, ...),
        # down_s (death noticed -> new actor ready, backoff included).
        self.restart_log: list[dict] = []
        self._actor_cls = None
        self._starting: list = []            # replacement actor not yet ready, or None
        self._restart_at: list[float] = []   # when to start the next replacement
        self._ready_by: list[float] = []     # ...and when it must be ready
        self._died_at: list[float] = []
        self._parked: collections.deque = collections.deque()   # ids waiting for a replica
        self.replica_stats: list[dict] = []
        self._lock = threading.RLock()
        self._flights: dict[str, _Flight] = {}
        self._by_replica: list[set[str]] = []
        self._pump: threading.Thread | None = None
        self._stopping = False
        self._counter = itertools.count()
        self.num_rerouted = 0
        self.num_failed = 0
        self.finished_per_replica: list[int] = []

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Create the replica actors and wait until each has its model (ray.init() first if
        this process has no Ray connection)."""
        ray = import_ray()
        if self._pump is not None:
            return
        if not ray.is_initialized():
            ray.init(include_dashboard=False)
        actor_cls = ray.remote(ReplicaServer).options(max_concurrency=4, **self._resources)
        self._actor_cls = actor_cls
        self.actors = [actor_cls.remote(self.config, i) for i in range(self.num_replicas)]
        self.replica_stats = ray.get([a.ready.remote() for a in self.actors])
        if not self.config.max_model_len:
            # Each replica derived its limit from the model and its KV pool; the router
            # admits what every replica takes, and replacements get that value outright.
            self.config = self.config.replace(
                max_model_len=min(s["max_model_len"] for s in self.replica_stats))
        n = self.num_replicas
        self.alive = [True] * n
        self.status = ["alive"] * n
        self.restarts = [0] * n
        self._starting = [None] * n
        self._restart_at = [0.0] * n
        self._ready_by = [0.0] * n
        self._died_at = [0.0] * n
        self._by_replica = [set() for _ in range(self.num_replicas)]
        self.finished_per_replica = [0] * self.num_replicas
        self._pump = threading.Thread(target=self._pump_loop, name="ray-router", daemon=True)
        self._pump.start()

    def shutdown(self) -> None:
        self._stopping = True
        if self._pump is not None:
            self._pump.join(5.0)
        with self._lock:
            flights = list(self._flights.values())
            self._flights.clear()
            self._parked.clear()
        for f in flights:
            _notify(f.listener, RuntimeError("the router shut down"))
        for a in list(self.actors) + [a for a in self._starting if a is not None]:
            _kill(a)

    # ---- requests -------------------------------------------------------------------------
    def validate(self, prompt, sp: SamplingParams) -> list[int]:
        """Token ids of the prompt, or ValueError naming the field: the check every engine
        makes (llmserve/validation.py), so a replica never gets a request it would refuse."""
        return validate_request(prompt, sp, tokenizer=self.tokenizer,
                                vocab_size=self.model_config.vocab_size,
                                max_model_len=self.config.max_model_len)[0]

    def submit(self, prompt, sp: SamplingParams | None = None, request_id: str | None = None,
               listener: Callable[[Any], None] | None = None) -> str:
        """Route one request. listener(item) is called from the pump thread with each new
        cumulative RequestOutput (the last finished) or an Exception (the request failed)."""
        if self._pump is None:
            raise RuntimeError("RayRouter.start() was not called")
        sp = sp if sp is not None else SamplingParams()
        ids = self.validate(prompt, sp)
        with self._lock:
            rid = request_id if request_id is not None else f"ray-{next(self._counter)}"
            if rid in self._flights:
                raise ValueError(f"request_id {rid!r} is already in use")
            if sp.seed is None:
                # A seed of the request's own, so a recompute elsewhere draws the same tokens.
                sp = dataclasses.replace(
                    sp, seed=(zlib.crc32(rid.encode()) ^ self.config.seed * 1_000_003) % 2**32)
            f = _Flight(rid, prompt if isinstance(prompt, str) else None, ids, sp, listener,
                        time.monotonic())
            self._flights[rid] = f
            self._dispatch(f)
        return rid

    def abort(self, request_id: str) -> None:
        with self._lock:
            f = self._flights.pop(request_id, None)
            if f is None:
                return
            if f.replica < 0:            # parked: no replica holds it
                self._parked.remove(request_id)
                return
            self._by_replica[f.replica].discard(request_id)
            self.policy.on_finish(request_id, f.replica)
            actor = self.actors[f.replica] if self.alive[f.replica] else None
        if actor is not None:      # a dead one has nothing left to free
            actor.abort.remote(request_id)

    def generate(self, prompts: Sequence, sampling_params=None) -> list[RequestOutput]:
        """LLM.generate over the cluster: outputs in input order (blocking)."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompts = list(prompts)
        sps = (list(sampling_params) if isinstance(sampling_params, (list, tuple))
               else [sampling_params or SamplingParams()] * len(prompts))
        if len(sps) != len(prompts):
            raise ValueError(f"got {len(sps)} sampling_params for {len(prompts)} prompts")
        for i, (p, sp) in enumerate(zip(prompts, sps)):
            try:
                self.validate(p, sp)
            except ValueError as e:
                raise ValueError(f"prompt {i}: {e}") from None
        results: list = [None] * len(prompts)
        left = threading.Semaphore(0)

        def listener_for(i):
            def on_item(item):
                if isinstance(item, BaseException) or item.finished:
                    results[i] = item
                    left.release()
            return on_item

        for i, (p, sp) in enumerate(zip(prompts, sps)):
            self.submit(p, sp, listener=listener_for(i))
        for _ in prompts:
            left.acquire()
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return results

    # ---- load and stats -------------------------------------------------------------------
    def replica_states(self) -> list:
        """What the policy sees: in-flight counts and outstanding tokens from the driver's own
        bookkeeping (exact), KV blocks from the last poll (one poll old). No length predictor
        runs in the driver: predicted_work is the requests' remaining max_tokens."""
        from llmserve.cluster.router import ReplicaState
        states = []
        for i in range(len(self.actors)):
            st = self.replica_stats[i]
            flights = [self._flights[r] for r in self._by_replica[i]]
            remaining_out = sum(f.sp.max_tokens - len(f.tokens) for f in flights)
            prefill = sum(len(f.prompt_ids) for f in flights if not f.tokens)
            running = min(len(flights), st.get("num_running", 0))
            states.append(ReplicaState(
                i, num_running=running, num_waiting=len(flights) - running,
                outstanding_tokens=prefill + remaining_out,
                free_kv_blocks=st.get("kv_blocks_free", 0),
                total_kv_blocks=max(1, st.get("kv_blocks_total", 1)),
                predicted_work=float(remaining_out), alive=self.alive[i],
                prefill_tokens=prefill, restarts=self.restarts[i]))
        return states

    def stats(self) -> dict:
        """Sums over the alive replicas (last poll) plus the router's own counters, and per
        replica its status ("alive", "restarting", "dead") and restarts so far."""
        with self._lock:
            out: dict = collections.Counter()
            for st, ok in zip(self.replica_stats, self.alive):
                if ok:
                    out.update({k: v for k, v in st.items()
                                if isinstance(v, int) and k not in ("replica_id", "pid")})
            out = dict(out)
            out.update(num_replicas=len(self.actors), num_replicas_alive=sum(self.alive),
                       num_in_flight=len(self._flights), num_rerouted=self.num_rerouted,
                       num_failed=self.num_failed, num_restarts=sum(self.restarts),
                       replica_status=list(self.status), replica_restarts=list(self.restarts))
            return out

    # ---- routing (caller holds the lock) --------------------------------------------------
    def _dispatch(self, f: _Flight) -> None:
        from llmserve.cluster.router import RouteRequest
        req = RouteRequest(f.request_id, f.prompt_ids, f.sp.max_tokens)
        try:
            replica = self.policy.choose(req, self.replica_states())
        except ValueError as e:          # no alive replica
            if "restarting" in self.status:      # one is coming back: wait for it
                f.replica = -1
                self._parked.append(f.request_id)
                return
            del self._flights[f.request_id]
            self.num_failed += 1
            _notify(f.listener, RuntimeError(f"request {f.request_id} cannot run: {e}"))
            return
        self.policy.on_dispatch(req, replica)
        f.replica = replica
        f.attempts += 1
        self._by_replica[replica].add(f.request_id)
        self.actors[replica].add.remote(f.request_id, f.prompt_ids, f.sp)

    def _replica_died(self, replica: int, err: Exception) -> None:
        with self._lock:
            if not self.alive[replica]:
                return
            self.alive[replica] = False
            now = time.monotonic()
            if self.restarts[replica] < self.max_restarts:
                self.status[replica] = "restarting"
                self._died_at[replica] = now
                self._restart_at[replica] = now + self._backoff(replica)
            else:
                self.status[replica] = "dead"
            lost = sorted(self._by_replica[replica])
            self._by_replica[replica] = set()
            log.warning("replica %d died (%s); re-routing its %d request(s); %s", replica,
                        type(err).__name__, len(lost),
                        f"restart {self.restarts[replica] + 1} of {self.max_restarts} in "
                        f"{self._restart_at[replica] - now:.1f} s"
                        if self.status[replica] == "restarting" else "it stays dead")
            forget = getattr(self.policy, "forget_replica", None)
            if forget is not None:
                forget(replica)
            for rid in lost:
                f = self._flights[rid]
                self.policy.on_finish(rid, replica)
                # From scratch: the replica's KV cache (and any partial output) died with it.
                f.tokens = []
                f.logprobs = f.top_logprobs = f.prompt_logprobs = None
                self.num_rerouted += 1
                self._dispatch(f)
            old = self.actors[replica]
        _kill(old)      # dead already, or only unreachable: then it must not come back

    def _backoff(self, replica: int) -> float:
        return self.restart_backoff_s * 2 ** self.restarts[replica]

    def _start_replacements(self, pending: dict) -> None:
        """Start the replacement actors whose backoff is over, give up on those past their
        ready deadline (pump thread)."""
        now = time.monotonic()
        for i in range(len(self.actors)):
            late = self._starting[i]
            if late is not None and now > self._ready_by[i]:
                self._restart_failed(i, late, TimeoutError(
                    f"not ready after {self.restart_timeout_s:.0f} s"))
            if self.status[i] == "restarting" and self._starting[i] is None \
                    and now >= self._restart_at[i]:
                with self._lock:
                    self.restarts[i] += 1
                    actor = self._actor_cls.remote(self.config, i)
                    self._starting[i] = actor
                    self._ready_by[i] = now + self.restart_timeout_s
                log.info("replica %d: starting replacement %d", i, self.restarts[i])
                pending[actor.ready.remote()] = ("ready", i, actor)

    def _replica_back(self, replica: int, actor, stats: dict) -> None:
        with self._lock:
            self._starting[replica] = None
            self.actors[replica] = actor
            self.replica_stats[replica] = stats
            self.status[replica] = "alive"
            self.alive[replica] = True
            down = time.monotonic() - self._died_at[replica]
            self.restart_log.append(dict(replica=replica, restart=self.restarts[replica],
                                         down_s=down))
            log.warning("replica %d is back (restart %d, down %.1f s); %d parked request(s)",
                        replica, self.restarts[replica], down, len(self._parked))
            parked, self._parked = list(self._parked), collections.deque()
            for rid in parked:
                f = self._flights.get(rid)
                if f is not None:
                    self._dispatch(f)

    def _restart_failed(self, replica: int, actor, err: Exception) -> None:
        """The replacement died before it was ready: try again, or give up on the replica."""
        with self._lock:
            self._starting[replica] = None
            if self.restarts[replica] < self.max_restarts:
                self._restart_at[replica] = time.monotonic() + self._backoff(replica)
            else:
                self.status[replica] = "dead"
            log.warning("replica %d: replacement %d failed to start (%s); %s", replica,
                        self.restarts[replica], err,
                        "retrying" if self.status[replica] == "restarting" else "it stays dead")
            if not any(s in ("alive", "restarting") for s in self.status):
                for rid in list(self._parked):
                    f = self._flights.pop(rid)
                    self.num_failed += 1
                    _notify(f.listener, RuntimeError(
                        f"request {rid} cannot run: every replica is dead"))
                self._parked.clear()
        _kill(actor)

    # ---- the pump thread ------------------------------------------------------------------
    def _pump_loop(self) -> None:
        import ray
        from ray.exceptions import RayError
        pending: dict = {}   # ObjectRef -> ("poll" | "ready", replica, the actor it went to)
        polling: set[int] = set()
        while not self._stopping:
            self._start_replacements(pending)
            for i, a in enumerate(self.actors):
                if self.alive[i] and i not in polling:
                    pending[a.poll.remote(self.poll_wait_s)] = ("poll", i, a)
                    polling.add(i)
            if not pending:
                time.sleep(0.05)
                continue
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.2)
            if ready:    # take whatever else is ready too, in one go
                ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
            for ref in ready:
                kind, i, actor = pending.pop(ref)
                if kind == "ready":
                    if actor is not self._starting[i]:
                        continue         # given up on already (timed out)
                    try:
                        stats = ray.get(ref)
                    except RayError as e:     # died in its constructor, or unschedulable
                        self._restart_failed(i, actor, e)
                        continue
                    self._replica_back(i, actor, stats)
                    continue
                polling.discard(i)
                try:
                    deltas, stats = ray.get(ref)
                except RayError as e:   # died (killed, crashed, node lost) or unreachable
                    if actor is self.actors[i]:
                        self._replica_died(i, e)
                    continue
                if actor is self.actors[i]:
                    self._apply(i, deltas, stats)

    def _apply(self, replica: int, deltas: list[dict], stats: dict) -> None:
        now = time.monotonic()
        notes = []
        with self._lock:
            self.replica_stats[replica] = stats
            for d in deltas:
                f = self._flights.get(d["id"])
                if f is None or f.replica != replica:
                    continue          # aborted, or a re-routed request's old replica
                if "error" in d:
                    del self._flights[f.request_id]
                    self._by_replica[replica].discard(f.request_id)
                    self.num_failed += 1
                    notes.append((f.listener, RuntimeError(d["error"])))
                    continue
                f.tokens += d["tokens"]
                if d["logprobs"] is not None:
                    f.logprobs = (f.logprobs or []) + d["logprobs"]
                if d.get("top_logprobs") is not None:
                    f.top_logprobs = (f.top_logprobs or []) + d["top_logprobs"]
                if d.get("prompt_logprobs") is not None:
                    f.prompt_logprobs = d["prompt_logprobs"]
                if f.first_token_time is None and f.tokens:
                    f.first_token_time = now
                finished = d["finished"]
                if finished:
                    del self._flights[f.request_id]
                    self._by_replica[replica].discard(f.request_id)
                    self.policy.on_finish(f.request_id, replica)
                    self.finished_per_replica[replica] += 1
                # After a re-route, nothing until the recompute passes what was streamed.
                if finished or len(f.tokens) > f.emitted:
                    f.emitted = len(f.tokens)
                    notes.append((f.listener, self._output(f, d, finished, now)))
        for listener, item in notes:
            _notify(listener, item)

    def _output(self, f: _Flight, d: dict, finished: bool, now: float) -> RequestOutput:
        text = None
        if finished and self.tokenizer is not None:
            text = self.tokenizer.decode(f.tokens)
        return RequestOutput(
            request_id=f.request_id, prompt=f.prompt, prompt_token_ids=f.prompt_ids,
            token_ids=list(f.tokens), text=text, finished=finished,
            finish_reason=d["finish_reason"] if finished else None,
            logprobs=list(f.logprobs) if f.logprobs is not None else None,
            top_logprobs=list(f.top_logprobs) if f.top_logprobs is not None else None,
            prompt_logprobs=(list(f.prompt_logprobs) if f.prompt_logprobs is not None
                             else None),
            metrics=RequestMetrics(f.arrival, None, f.first_token_time,
                                   now if finished else None, len(f.prompt_ids),
                                   len(f.tokens), d["num_preemptions"]))


def import_ray():
    """The ray module, or an ImportError that says how to install it (an extra)."""
    try:
        import ray
    except ImportError as e:
        raise ImportError("Ray replicas need the `ray` package, an optional extra: "
                          "pip install -e '.[cluster]'") from e
    return ray


def _kill(actor) -> None:
    import ray
    try:
        ray.kill(actor, no_restart=True)
    except Exception:            # gone already
        pass


def _notify(listener, item) -> None:
    if listener is None:
        return
    try:
        listener(item)
    except Exception:           # a listener's failure must not stop the pump
        log.exception("request listener failed")


def _model_and_tokenizer(ec: EngineConfig):
    """The model's shapes and tokenizer without its weights (the driver only validates)."""
    from llmserve.model.config import get_preset
    from llmserve.model.gguf_loader import resolve_checkpoint
    from llmserve.tokenizer import load_tokenizer
    path = resolve_checkpoint(ec.model)     # a directory, a .gguf file, a packaged name
    if path is not None:
        from llmserve.model import loader
        cfg = loader.load_config(path)
    else:
        cfg = get_preset(ec.model)
    if ec.dtype != "auto":
        cfg = cfg.replace(dtype=ec.dtype)
    return cfg, load_tokenizer(path, cfg)


# ---- the server's EngineClient over the router -------------------------------------------------
class RayRouterClient:
    """EngineClient (llmserve/server/async_engine.py) whose requests go through a RayRouter."""

    def __init__(self, router: RayRouter, model_name: str, *, max_waiting_requests: int = 0,
                 owns_router: bool = True):
        """owns_router: start() starts it and shutdown() kills its replicas."""
        if max_waiting_requests < 0:
            raise ValueError(f"max_waiting_requests must be >= 0, got {max_waiting_requests}")
        self.router = router
        self.model_name = model_name
        self.tokenizer = router.tokenizer
        self.max_waiting_requests = max_waiting_requests
        self.owns_router = owns_router
        self._active: set[str] = set()
        self._draining = False

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def max_model_len(self) -> int:
        # Known once the router has started: replicas derive it from their KV pools.
        return self.router.config.max_model_len

    async def start(self) -> None:
        if self.owns_router:
            await asyncio.get_running_loop().run_in_executor(None, self.router.start)

    def stats(self) -> dict:
        return self.router.stats()

    async def abort(self, request_id: str) -> None:
        self.router.abort(request_id)

    async def generate(self, prompt, sampling_params: SamplingParams, request_id: str, *,
                       stop: Sequence[str] = ()):
        from llmserve.server.async_engine import (
            EngineShutdownError,
            QueueFullError,
            RequestFailedError,
            TextTracker,
            validate_stop,
        )
        if self._draining:
            raise EngineShutdownError("the server is shutting down and accepts no new requests")
        stop = validate_stop(stop)
        ids = self.router.validate(prompt, sampling_params)
        if request_id in self._active:
            raise ValueError(f"request_id {request_id!r} is already in use")
        if self.max_waiting_requests and \
                self.router.stats().get("num_waiting", 0) >= self.max_waiting_requests:
            raise QueueFullError(f"the waiting queues are full ({self.max_waiting_requests} "
                                 "requests); retry later", retry_after_s=1.0)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def listener(item):
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:      # the event loop is closed: nobody is listening
                pass

        tracker = TextTracker(self.tokenizer, stop, ids)
        self._active.add(request_id)
        finished = False
        try:
            self.router.submit(prompt, sampling_params, request_id, listener)
            while True:
                item = await queue.get()
                while not queue.empty() and not isinstance(item, BaseException):
                    item = queue.get_nowait()      # snapshots are cumulative: the newest
                if isinstance(item, BaseException):
                    finished = True
                    if isinstance(item, EngineShutdownError):
                        raise item
                    raise RequestFailedError(f"request processing failed: {item}")
                stopped = tracker.update(item.token_ids, item.finished)
                item.text = tracker.text
                if stopped and not item.finished:
                    self.router.abort(request_id)
                    item.finished, item.finish_reason = True, "stop"
                elif stopped:
                    item.finish_reason = "stop"
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            self._active.discard(request_id)
            if not finished:
                self.router.abort(request_id)

    async def shutdown(self, grace_s: float) -> None:
        from llmserve.server.async_engine import EngineShutdownError
        self._draining = True
        deadline = time.monotonic() + max(0.0, grace_s)
        while self._active and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        with self.router._lock:
            left = [f for f in self.router._flights.values() if f.request_id in self._active]
        for f in left:
            self.router.abort(f.request_id)
            _notify(f.listener, EngineShutdownError(
                "the server is shutting down; the request was aborted after the grace period"))
        if self.owns_router:
            await asyncio.get_running_loop().run_in_executor(None, self.router.shutdown)
