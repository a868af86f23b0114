"""Cluster simulation: N replicas, each its own Scheduler + SimRunner, under one virtual clock.

Each replica runs the same scheduler code as the single-replica simulator (replay.py driving an
LLMEngine on a VirtualClock), and a replica's steps happen at the same virtual times: a step
scheduled at t runs for the cost model's step time dt, and its results land at t + dt, when the
next step is scheduled (requests that arrived meanwhile join it). With one replica and free
routing decisions the result is the single-replica simulator's, request for request (tested).

Discrete events in one heap of (time, priority, seq, ...): a replica's next step, a routed
request reaching its replica, a distributed router's snapshot refresh, a load sample, a replica
failure. Arrivals are merged from the sorted workload without entering the heap. Only replicas
with work have a step event; an idle replica costs nothing until a request reaches it. Results
are applied lazily (the update of the step that ends at t runs at t, just before the next
schedule), so a router reading a replica's load mid-step sees the state before that step's
tokens: what a real router would see.

Load a router sees per replica (placement.LiveLoad): running and waiting requests, free KV
blocks, outstanding tokens = sum over its live requests of (prompt + the client's max_tokens)
minus the tokens it has computed for them (a preempted request's lost tokens count again: they
must be recomputed), and, for predicted_work, the sum of predicted remaining output tokens
(each request's prediction counted down by the tokens it makes, not below zero).

The client's max_tokens: a router does not know a request's true length. Requests end at their
trace length (ignore_eos + max_tokens, as in replay.py), but the router and the load it reads
use min(client_max_tokens, max_model_len - prompt), at least the true length (so a workload
with outputs beyond client_max_tokens should raise it, or that bound tells the router the true
length of its longest requests). The load
imbalance is measured on the true outstanding tokens (true output lengths), not on what the
routers see.
"""
from __future__ import annotations

import dataclasses
import gc
import heapq
import itertools
import logging
import math
import time
import types

import numpy as np

from llmserve.cluster.placement import LiveLoad, PlacementConfig, make_decision_points
from llmserve.cluster.router import RouteRequest, check_policy_name, make_policy
from llmserve.core.request import Request, RequestStatus
from llmserve.core.scheduler import create_scheduler
from llmserve.sampling_params import SamplingParams
from llmserve.workload.replay import prepare

log = logging.getLogger(__name__)

_PREEMPTED = RequestStatus.PREEMPTED
# Event kinds, and their order among events at the same time: snapshots first, then requests
# reaching replicas and failures, then steps, then load samples.
_SNAP, _DISPATCH, _KILL, _STEP, _SAMPLE = range(5)
_PRIO = {_SNAP: 0, _DISPATCH: 1, _KILL: 1, _STEP: 2, _SAMPLE: 3}


def parse_replicas(spec) -> list[str]:
    """'h100-80gb:8' or 'a100-80gb:4,h100-80gb:4' -> one hardware name per replica."""
    from llmserve.sim.hardware import PROFILES
    out = []
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    for p in parts:
        name, _, count = p.partition(":")
        try:
            k = int(count) if count else 1
        except ValueError:
            k = -1
        if name not in PROFILES or k < 0:
            raise ValueError(f"cluster.replicas must be HARDWARE:COUNT[,...] with hardware in "
                             f"{sorted(PROFILES)} and COUNT >= 0, got {spec!r}")
        out += [name] * k
    if not out:
        raise ValueError(f"cluster.replicas must give at least one replica, got {spec!r}")
    return out


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    replicas: str = "h100-80gb:8"       # HARDWARE:COUNT[,HARDWARE:COUNT...] (mixed allowed)
    model: str = "llama3-8b"            # model preset whose shapes the cost model uses
    engine: dict = dataclasses.field(default_factory=dict)  # EngineConfig fields per replica
    memory_utilization: float = 0.9     # fraction of HBM for weights + KV (sizes each pool)
    policy: str = "least_tokens"        # router policy (router.POLICIES)
    router_options: dict = dataclasses.field(default_factory=dict)  # make_policy kwargs
    predictor: str = "oracle"           # predicted_work's predictor (core/predictors.py spec)
    placement: PlacementConfig = PlacementConfig()
    client_max_tokens: int = 1000       # the max_tokens a router sees (see module doc)
    sample_interval_s: float = 0.5      # load samples (figures, imbalance), simulated seconds
    idle_tick_s: float = 1e-3           # a replica with work but nothing runnable retries after
    time_limit_s: float = 0.0           # stop at this simulated time, abort the rest (0: none)
    dead_replicas: tuple = ()           # replica ids dead from the start
    failures: tuple = ()                # (replica_id, time_s) pairs: dies then, work re-routed
    seed: int = 0                       # router randomness and generated token ids
    num_workers: int = 1                # processes simulating the replicas (parallel.py);
    #                                     1: this process alone. > 1 needs distributed
    #                                     placement with staleness_s > 0 (its lookahead)

    def __post_init__(self):
        def bad(field, expected, value):
            raise ValueError(f"cluster config: {field} must be {expected}, got {value!r}")
        hw = parse_replicas(self.replicas)
        check_policy_name(self.policy)
        if isinstance(self.placement, dict) or hasattr(self.placement, "to_dict"):
            d = self.placement.to_dict() if hasattr(self.placement, "to_dict") else self.placement
            object.__setattr__(self, "placement", PlacementConfig.from_dict(d))
        for f in ("memory_utilization",):
            v = getattr(self, f)
            if not isinstance(v, (int, float)) or not 0 < v <= 1:
                bad(f, "a float in (0, 1]", v)
        for f in ("sample_interval_s", "idle_tick_s"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                bad(f, "a number > 0", v)
        if not isinstance(self.time_limit_s, (int, float)) or not self.time_limit_s >= 0:
            bad("time_limit_s", "a number >= 0", self.time_limit_s)
        if isinstance(self.client_max_tokens, bool) or not isinstance(
                self.client_max_tokens, int) or self.client_max_tokens < 1:
            bad("client_max_tokens", "an int >= 1", self.client_max_tokens)
        dead = tuple(int(x) for x in self.dead_replicas)
        if any(not 0 <= x < len(hw) for x in dead):
            bad("dead_replicas", f"replica ids in [0, {len(hw)})", self.dead_replicas)
        if len(set(dead)) == len(hw):
            bad("dead_replicas", "not every replica", self.dead_replicas)
        object.__setattr__(self, "dead_replicas", dead)
        fails = []
        for f in self.failures:
            try:
                r, t = int(f[0]), float(f[1])
            except (TypeError, ValueError, IndexError):
                bad("failures", "(replica_id, time_s) pairs", self.failures)
            if not 0 <= r < len(hw) or not t >= 0:
                bad("failures", f"(replica_id in [0, {len(hw)}), time_s >= 0) pairs",
                    self.failures)
            fails.append((r, t))
        object.__setattr__(self, "failures", tuple(fails))
        from llmserve.core.predictors import parse_predictor_spec
        parse_predictor_spec(self.predictor)
        make_policy(self.policy, **dict(self.router_options))    # option errors now
        nw = self.num_workers
        if isinstance(nw, bool) or not isinstance(nw, int) or not 1 <= nw <= len(hw):
            bad("num_workers", f"an int in [1, replicas={len(hw)}]", nw)
        pl = self.placement
        if nw > 1 and not (pl.placement == "distributed" and pl.staleness_s > 0):
            bad("num_workers", "1 unless placement is 'distributed' with staleness_s > 0 (the "
                "routers must read snapshots, whose refresh period is the workers' lookahead; "
                f"placement={pl.placement!r}, staleness_s={pl.staleness_s})", nw)
        if nw > 1 and (self.failures or self.time_limit_s):
            bad("num_workers", "1 with failures or time_limit_s (not supported across "
                "processes)", nw)

    @property
    def hardware(self) -> list[str]:
        return parse_replicas(self.replicas)

    @classmethod
    def from_dict(cls, d) -> ClusterConfig:
        if hasattr(d, "to_dict"):
            d = d.to_dict()
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown cluster config field(s) {unknown}; known: {sorted(known)}")
        for k in ("engine", "router_options"):
            if k in d and hasattr(d[k], "to_dict"):
                d[k] = d[k].to_dict()
        for k in ("dead_replicas", "failures"):
            if k in d:
                d[k] = tuple(tuple(x) if isinstance(x, list) else x for x in d[k])
        return cls(**d)


def step_replica(rep, t: float, idle_tick_s: float, pred_rem: dict | None,
                 finished) -> tuple[float | None, int]:
    """One event of one replica at time t: apply its pending step's output (each finished
    request goes to `finished(rep, q)`; `pred_rem`, when predictions are tracked, loses one
    predicted token per sampled one), then schedule and run its next step. -> (the time of its
    next event, or None when it has no work left; runner ns). Both cluster loops (one process,
    and the worker processes of llmserve.cluster.parallel) step replicas through this."""
    s = rep.sched
    if rep.pending is not None:
        out, rout = rep.pending
        rep.pending = None
        st = s.stats
        ended = st.num_finished + st.num_aborted
        changed = s.update_from_output(out, rout, t)
        if pred_rem is not None:
            tot = 0.0
            for rid in rout.sampled:
                rem = pred_rem.get(rid)
                if rem:
                    d = 1.0 if rem >= 1.0 else rem
                    pred_rem[rid] = rem - d
                    tot += d
            rep.pred_total -= tot
            rep.out_made += len(rout.sampled)
        if st.num_finished + st.num_aborted != ended:
            for q in changed:
                if q.status > _PREEMPTED:
                    finished(rep, q)
    if not s.has_unfinished():
        rep.next_t = None
        return None, 0
    out = s.schedule(t)
    ns = 0
    if out.scheduled:
        t0 = time.perf_counter_ns()
        rout = rep.runner.execute(out)
        ns = time.perf_counter_ns() - t0
        rep.pending = (out, rout)
        nt = t + rout.step_time_s
    else:
        nt = t + idle_tick_s
    rep.gen += 1
    rep.next_t = nt
    return nt, ns


class Replica:
    __slots__ = ("id", "hardware", "sched", "runner", "num_kv_blocks", "pending", "next_t",
                 "gen", "alive", "live_tokens", "live_cap", "live_true", "out_made",
                 "pred_total", "num_dispatched", "num_finished")

    def __init__(self, rid, hardware, sched, runner, num_kv_blocks):
        self.id = rid
        self.hardware = hardware
        self.sched = sched
        self.runner = runner
        self.num_kv_blocks = num_kv_blocks
        self.pending = None          # (SchedulerOutput, RunnerOutput) of the step in flight
        self.next_t = None           # time of its valid step event (None: idle, no event)
        self.gen = 0                 # step events carry it; an older one is stale
        self.alive = True
        self.live_tokens = 0         # sum of prompt + client max_tokens of its live requests
        self.live_cap = 0            # sum of client max_tokens of its live requests
        self.live_true = 0           # sum of prompt + true output length of its live requests
        self.out_made = 0            # output tokens its live requests made (predicted_work)
        self.pred_total = 0.0        # predicted remaining output tokens of its live requests
        self.num_dispatched = 0
        self.num_finished = 0


@dataclasses.dataclass
class ClusterResult:
    requests: dict              # arrays per finished request (+ 'replica', 'request' index)
    samples: dict               # 't', 'outstanding' [T, N] (true: with true output lengths),
    #                             'requests' [T, N] (running + waiting), 'alive' [T, N]
    replicas: list              # per-replica dicts
    routers: list               # per-router dicts
    num_requests: int
    num_rejected: int
    num_aborted: int
    num_truncated: int
    num_rerouted: int
    arrival_end: float          # last arrival time
    end: float                  # last finish (or the time limit)
    wall_s: float
    profile: dict               # wall seconds by part
    config: dict


class ClusterSim:
    def __init__(self, config: ClusterConfig):
        from llmserve.config import EngineConfig
        from llmserve.model.config import get_preset
        from llmserve.runner.sim_runner import SimRunner
        from llmserve.sim.cost_model import CostModel
        from llmserve.sim.hardware import get_hardware
        self.config = config
        self.model_config = get_preset(config.model)
        eng = {"max_num_seqs": 256, "max_num_batched_tokens": 2048, "max_model_len": 8192}
        eng.update(config.engine)
        eng["model"] = config.model
        eng["load_format"] = "dummy"
        base = EngineConfig.from_dict(eng)
        self.engine_config = base
        cms = {}
        self.replicas: list[Replica] = []
        for r, hw in enumerate(config.hardware):
            if hw not in cms:
                cm = CostModel(self.model_config, get_hardware(hw), block_size=base.block_size)
                nb = base.num_kv_blocks or cm.num_kv_blocks(base.block_size,
                                                            config.memory_utilization)
                cms[hw] = (cm, nb)
            cm, nb = cms[hw]
            sched = create_scheduler(base.scheduler_config(nb))
            self.replicas.append(Replica(r, hw, sched, SimRunner(cm), nb))
        self.cost_models = {hw: cm for hw, (cm, _) in cms.items()}
        self.live = LiveLoad(range(len(self.replicas)),
                             [r.num_kv_blocks for r in self.replicas])
        opts = dict(config.router_options)
        opts.setdefault("block_size", base.block_size)

        def policy_for(k):
            # A seed per router: with one seed, K random/power_of_two routers fed interleaved
            # arrivals would draw the same replicas in lockstep.
            return make_policy(config.policy, **{**opts, "seed": opts.get("seed", config.seed)
                                                 * 1_000_003 + k})
        self.routers = make_decision_points(config.placement, policy_for, self.live)
        self.track_pred = config.policy == "predicted_work"
        # The true outstanding tokens per replica (true output lengths): what the load
        # imbalance is measured on, whatever the routers see.
        self.true_outstanding = np.zeros(len(self.replicas))
        for r in config.dead_replicas:
            self._mark_dead(r)

    # ---- helpers --------------------------------------------------------------------------
    def _mark_dead(self, r: int) -> None:
        self.replicas[r].alive = False
        self.live.view.alive[r] = False
        for dp in self.routers:
            forget = getattr(dp.policy, "forget_replica", None)
            if forget is not None:
                forget(r)

    def _cap(self, prompt_len: int, output_len: int) -> int:
        c = min(self.config.client_max_tokens, self.engine_config.max_model_len - prompt_len)
        return max(c, output_len)

    def _predictions(self, reqs, ids_of) -> np.ndarray:
        """Predicted output length per request, one batched call per 4,096 requests."""
        from llmserve.core.predictors import create_predictor
        pred = create_predictor(self.config.predictor)
        if pred is None:
            raise ValueError("cluster config: predictor must not be 'none' with "
                             "policy='predicted_work'")
        out = np.zeros(len(reqs))
        ec = self.engine_config
        for s in range(0, len(reqs), 4096):
            stubs = [types.SimpleNamespace(
                request_id=str(i), true_num_output_tokens=reqs[i].output_len,
                prompt_token_ids=ids_of(i),
                sampling_params=types.SimpleNamespace(
                    max_tokens=self._cap(reqs[i].prompt_len, reqs[i].output_len)))
                for i in range(s, min(s + 4096, len(reqs)))]
            means, _ = pred.predict(stubs)
            for j, m in enumerate(means):
                m = float(m)
                # Clipped to what the client allows, never to a bound that holds the true
                # length (_cap raises the cap to a longer true output).
                cap = min(self.config.client_max_tokens,
                          ec.max_model_len - reqs[s + j].prompt_len)
                out[s + j] = min(max(m, 1.0), cap) if math.isfinite(m) else cap
        return out

    def _refresh(self, rep: Replica) -> None:
        v = self.live.view
        r = rep.id
        s = rep.sched
        v.num_running[r] = len(s.running)
        v.num_waiting[r] = s.num_waiting
        # _kv_tokens: the computed tokens of its block-owning requests, kept by the scheduler.
        kv = s._kv_tokens
        out = rep.live_tokens - kv
        v.outstanding_tokens[r] = out
        self.true_outstanding[r] = rep.live_true - kv
        v.free_kv_blocks[r] = s.block_manager.num_free_blocks
        if self.track_pred:
            v.predicted_work[r] = rep.pred_total if rep.pred_total > 0 else 0.0
            # Prompt tokens still to prefill: outstanding minus the output tokens still
            # allowed (off by one per request past its first token; a preempted request's
            # prompt counts again, as it must be recomputed).
            pre = out - (rep.live_cap - rep.out_made)
            v.prefill_tokens[r] = pre if pre > 0 else 0.0

    # ---- the run --------------------------------------------------------------------------
    def run(self, workload, *, rate_scale: float = 1.0, max_requests: int | None = None,
            progress_every_s: float = 30.0, label: str = "") -> ClusterResult:
        if self.config.num_workers > 1:
            from llmserve.cluster.parallel import run_parallel
            return run_parallel(self, workload, rate_scale=rate_scale,
                                max_requests=max_requests, progress_every_s=progress_every_s,
                                label=label)
        cfg = self.config
        ec = self.engine_config
        reqs, num_cut = prepare(workload, rate_scale=rate_scale, max_requests=max_requests,
                                max_model_len=ec.max_model_len)
        n = len(reqs)
        due = [w.arrival_s for w in reqs]
        vocab = self.model_config.vocab_size
        rng = np.random.default_rng(cfg.seed)
        reps = self.replicas
        routers = self.routers
        nrouters = len(routers)
        view = self.live.view
        track_pred = self.track_pred
        cap_of = self._cap
        # Token ids are drawn at arrival, in arrival order (as replay.py draws them), so every
        # policy and placement sees the identical stream.
        held_ids: dict[int, list] = {}
        need_ids = any(r.sched.config.enable_prefix_caching for r in reps) or \
            cfg.policy == "prefix_aware" or self.track_pred
        pred_len = None
        if track_pred:
            def ids_of(i):
                w = reqs[i]
                if w.prompt_token_ids is not None:
                    return w.prompt_token_ids
                return np.random.default_rng([cfg.seed, i]).integers(0, vocab, w.prompt_len)
            pred_len = self._predictions(reqs, ids_of)
        pred_rem: dict[str, float] = {}
        step_pred = pred_rem if track_pred else None

        heap: list = []
        push, pop = heapq.heappush, heapq.heappop
        seq = itertools.count()
        rows: list[tuple] = []
        sample_t: list[float] = []
        sample_out: list[np.ndarray] = []
        sample_req: list[np.ndarray] = []
        sample_alive: list[np.ndarray] = []
        counters = {"rejected": 0, "rerouted": 0, "busy": 0, "pending_dispatch": 0}
        route_ns = 0
        runner_ns = 0

        stale = [dp for dp in routers if dp.stale]
        period = cfg.placement.staleness_s
        for dp in stale:
            dp.refresh()
            push(heap, (period * (dp.index + 1) / len(stale), 0, next(seq), _SNAP, dp.index, 0))
        push(heap, (0.0, 3, next(seq), _SAMPLE, 0, 0))
        for r, t in cfg.failures:
            push(heap, (t, 1, next(seq), _KILL, r, 0))
        limit = cfg.time_limit_s or math.inf

        def dispatch(i: int, t: float, ids, k: int) -> None:
            nonlocal route_ns
            w = reqs[i]
            rid = str(i)
            dp = routers[k]
            cap = cap_of(w.prompt_len, w.output_len)
            p = float(pred_len[i]) if pred_len is not None else None
            rr = RouteRequest(rid, ids, cap, p)
            t0 = time.perf_counter_ns()
            pos = dp.policy.pick(rr, dp.view)
            route_ns += time.perf_counter_ns() - t0
            rep = reps[pos]
            if not rep.alive:
                raise AssertionError(f"router chose dead replica {pos}")
            req = Request(rid, ids, SamplingParams(max_tokens=w.output_len, ignore_eos=True,
                                                   temperature=0.0), due[i])
            try:
                rep.sched.add_request(req)
            except ValueError as e:
                counters["rejected"] += 1
                log.warning("request %d rejected: %s", i, e)
                return
            req.true_num_output_tokens = w.output_len
            if w.prompt_text is not None:
                req.prompt_text = w.prompt_text
            rep.live_tokens += w.prompt_len + cap
            rep.live_cap += cap
            rep.live_true += w.prompt_len + w.output_len
            rep.num_dispatched += 1
            if p is not None:
                rep.pred_total += p
                pred_rem[rid] = p
            dp.note_dispatch(pos, w.prompt_len + cap, w.prompt_len, p or 0.0)
            dp.policy.on_dispatch(rr, pos)
            self._refresh(rep)
            if rep.pending is None and rep.next_t != t:
                if rep.next_t is None:
                    counters["busy"] += 1
                rep.gen += 1
                rep.next_t = t
                push(heap, (t, 2, next(seq), _STEP, pos, rep.gen))

        def finished(rep: Replica, q: Request) -> None:
            rows.append((q.arrival_time, q.first_scheduled_time, q.first_token_time,
                         q.finish_time, q.num_prompt_tokens, q.num_output_tokens,
                         q.num_preemptions, q.num_cached_tokens, rep.id, int(q.request_id)))
            rep.num_finished += 1
            cap = cap_of(q.num_prompt_tokens, q.sampling_params.max_tokens)
            rep.live_tokens -= q.num_prompt_tokens + cap
            rep.live_cap -= cap
            rep.live_true -= q.num_prompt_tokens + q.sampling_params.max_tokens
            if track_pred:
                rep.pred_total -= pred_rem.pop(q.request_id, 0.0)
                rep.out_made -= q.num_output_tokens
            routers[int(q.request_id) % nrouters].policy.on_finish(q.request_id, rep.id)

        def kill(r: int, t: float) -> None:
            rep = reps[r]
            if not rep.alive:
                return
            self._mark_dead(r)
            if rep.next_t is not None:
                counters["busy"] -= 1
            rep.gen += 1
            rep.next_t = None
            rep.pending = None
            s = rep.sched
            s._scheduled = []     # the step in flight is lost with the replica
            for rid in list(s.requests):
                q = s.abort(rid, t)
                if q is None:
                    continue
                i = int(rid)
                held_ids[i] = q.prompt_token_ids
                pred_rem.pop(rid, None)
                k = i % nrouters
                if not routers[k].view.alive.any():
                    continue
                counters["rerouted"] += 1
                counters["pending_dispatch"] += 1
                push(heap, (routers[k].admit(t), 1, next(seq), _DISPATCH, i, k))
            rep.live_tokens = rep.live_cap = rep.live_true = rep.out_made = 0
            rep.pred_total = 0.0
            self._refresh(rep)

        wall0 = time.perf_counter()
        cpu0 = time.process_time()
        next_log = wall0 + progress_every_s
        gc_was = gc.isenabled()
        gc.freeze()
        gc.disable()
        i = 0
        t = 0.0
        try:
            while True:
                top = heap[0][0] if heap else math.inf
                if i < n and due[i] <= top:
                    t = due[i]
                    if t > limit:
                        break
                    w = reqs[i]
                    ids = w.prompt_token_ids
                    if ids is None:
                        if need_ids:
                            ids = rng.integers(0, vocab, w.prompt_len).tolist()
                        else:       # token values unused: no prefix cache reads them
                            ids = [0] * w.prompt_len
                    k = i % nrouters
                    d = routers[k].admit(t)
                    if d == t:
                        dispatch(i, t, ids, k)
                    else:
                        held_ids[i] = ids
                        counters["pending_dispatch"] += 1
                        push(heap, (d, 1, next(seq), _DISPATCH, i, k))
                    i += 1
                    continue
                if not heap:
                    break
                t, _, _, kind, x, g = pop(heap)
                if t > limit:
                    break
                if kind == _STEP:
                    rep = reps[x]
                    if g != rep.gen:
                        continue
                    nt, ns = step_replica(rep, t, cfg.idle_tick_s, step_pred, finished)
                    runner_ns += ns
                    if nt is None:
                        counters["busy"] -= 1
                    else:
                        push(heap, (nt, 2, next(seq), _STEP, x, rep.gen))
                    self._refresh(rep)
                    if time.perf_counter() >= next_log:
                        next_log += progress_every_s
                        log.info("%s t=%.2fs arrived %d/%d finished %d busy replicas %d",
                                 label, t, i, n, len(rows), counters["busy"])
                elif kind == _DISPATCH:
                    counters["pending_dispatch"] -= 1
                    dispatch(x, t, held_ids.pop(x), g)
                elif kind == _SNAP:
                    routers[x].refresh()
                    if i < n or counters["pending_dispatch"]:
                        push(heap, (t + period, 0, next(seq), _SNAP, x, 0))
                elif kind == _SAMPLE:
                    sample_t.append(t)
                    sample_out.append(self.true_outstanding.astype(np.float32))
                    sample_req.append((view.num_running + view.num_waiting).astype(np.int32))
                    sample_alive.append(view.alive.copy())
                    # The schedulers' per-step records are not used here and would grow to
                    # millions of rows on a large cluster.
                    for rep in reps:
                        rep.sched.step_records.rows.clear()
                    if i < n or counters["busy"] or counters["pending_dispatch"]:
                        push(heap, (t + cfg.sample_interval_s, 3, next(seq), _SAMPLE, 0, 0))
                elif kind == _KILL:
                    kill(x, t)
        finally:
            if gc_was:
                gc.enable()
            gc.unfreeze()
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        aborted = 0
        end = t
        for rep in reps:
            for rid in list(rep.sched.requests):
                if rep.sched.abort(rid, t) is not None:
                    aborted += 1
        aborted += counters["pending_dispatch"] + (n - i)
        if rows and not aborted:
            end = max(r[3] for r in rows)
        return self._result(reqs, n, num_cut, rows, sample_t, sample_out, sample_req,
                            sample_alive, counters, aborted, end, wall, route_ns, runner_ns,
                            cpu)

    def _result(self, reqs, n, num_cut, rows, sample_t, sample_out, sample_req, sample_alive,
                counters, aborted, end, wall, route_ns, runner_ns, cpu) -> ClusterResult:
        fields = ("arrival", "first_scheduled", "first_token", "finish", "prompt_len",
                  "output_len", "preemptions", "cached_tokens", "replica", "request")
        if rows:
            table = np.array([[np.nan if v is None else v for v in r] for r in rows],
                             np.float64)
            req = {f: table[:, k].copy() for k, f in enumerate(fields)}
        else:
            req = {f: np.zeros(0) for f in fields}
        nrep = len(self.replicas)
        samples = {"t": np.asarray(sample_t),
                   "outstanding": np.stack(sample_out) if sample_out
                   else np.zeros((0, nrep), np.float32),
                   "requests": np.stack(sample_req) if sample_req
                   else np.zeros((0, nrep), np.int32),
                   "alive": np.stack(sample_alive) if sample_alive
                   else np.zeros((0, nrep), bool)}
        sched_ns = sum(r.sched.stats.schedule_ns + r.sched.stats.update_ns
                       for r in self.replicas)
        replicas = [{"id": r.id, "hardware": r.hardware, "num_kv_blocks": r.num_kv_blocks,
                     "alive": r.alive, "dispatched": r.num_dispatched,
                     "finished": r.num_finished, "steps": r.runner.num_steps,
                     "busy_s": r.runner.busy_s, "preemptions": r.sched.stats.num_preemptions,
                     "cache_hit_tokens": r.sched.stats.num_cache_hit_tokens}
                    for r in self.replicas]
        routers = [{"index": dp.index, "decisions": dp.num_decisions, "busy_s": dp.busy_s,
                    "queue_wait_s": dp.queue_wait_s, "decision_s": dp.decision_s(),
                    **{k: getattr(dp.policy, k) for k in
                       ("num_affinity", "num_balanced", "num_no_match")
                       if hasattr(dp.policy, k)}}
                   for dp in self.routers]
        profile = {"wall_s": wall, "scheduler_s": sched_ns / 1e9,
                   "cost_model_s": runner_ns / 1e9, "router_pick_s": route_ns / 1e9}
        profile["event_loop_other_s"] = wall - sum(v for k, v in profile.items()
                                                   if k != "wall_s")
        # CPU seconds of this process over the run: the wall time on an otherwise idle core.
        profile["process_cpu_s"] = cpu
        cfg = dataclasses.asdict(self.config)
        return ClusterResult(req, samples, replicas, routers, n, counters["rejected"], aborted,
                             num_cut, counters["rerouted"],
                             reqs[-1].arrival_s if reqs else 0.0, end, wall, profile, cfg)


def simulate(config: ClusterConfig, workload, **kw) -> ClusterResult:
    return ClusterSim(config).run(workload, **kw)


# ---- metrics ----------------------------------------------------------------------------------
def load_cv(samples: dict, t_max: float | None = None) -> np.ndarray:
    """Coefficient of variation of outstanding tokens across alive replicas, per load sample
    (samples up to t_max, where the mean is > 0)."""
    t = samples["t"]
    keep = t <= t_max if t_max is not None else np.ones(t.shape, bool)
    out = []
    for x, a in zip(samples["outstanding"][keep], samples["alive"][keep]):
        x = x[a].astype(np.float64)
        m = x.mean() if x.size else 0.0
        if m > 0:
            out.append(x.std() / m)
    return np.asarray(out)


def summarize_cluster(res: ClusterResult, *, slo_ttft_s: float, slo_tpot_s: float) -> dict:
    """Figures of one cluster run, with summary.summarize's definitions where they overlap:
    throughput and goodput per second of makespan (workload start to last finish)."""
    from llmserve.metrics.summary import _dist, latencies
    req = res.requests
    req = dict(req, itl=np.zeros(0))
    lat = latencies(req)
    makespan = max(res.end, 1e-12)
    n_fin = int(req["finish"].size)
    out = {"num_requests": res.num_requests, "num_finished": n_fin,
           "num_rejected": res.num_rejected, "num_aborted": res.num_aborted,
           "num_rerouted": res.num_rerouted, "makespan_s": float(makespan)}
    n_out = float(req["output_len"].sum())
    n_in = float(req["prompt_len"].sum())
    out["request_throughput"] = n_fin / makespan
    out["output_throughput_tok_s"] = n_out / makespan
    for name in ("ttft", "tpot", "e2e"):
        _dist(name, lat[name], out)
    ok = (lat["ttft"] <= slo_ttft_s) & ~(lat["tpot"] > slo_tpot_s)
    out["goodput_rps"] = float(ok.sum()) / makespan
    out["slo_attainment"] = float(ok.sum()) / res.num_requests if res.num_requests else 0.0
    out["prefix_hit_rate"] = float(req["cached_tokens"].sum() / n_in) if n_in else 0.0
    cv = load_cv(res.samples, res.arrival_end)
    out["load_cv_mean"] = float(cv.mean()) if cv.size else math.nan
    out["load_cv_p90"] = float(np.percentile(cv, 90)) if cv.size else math.nan
    out["preemptions"] = int(sum(r["preemptions"] for r in res.replicas))
    per = np.array([r["finished"] for r in res.replicas if r["alive"]], float)
    out["requests_per_replica_cv"] = float(per.std() / per.mean()) if per.size and \
        per.mean() > 0 else math.nan
    busy = np.array([r["busy_s"] for r in res.replicas], float)
    out["replica_busy_fraction_mean"] = float(busy.mean() / makespan)
    d = sum(r["decisions"] for r in res.routers)
    out["router_wait_mean_s"] = sum(r["queue_wait_s"] for r in res.routers) / d if d else 0.0
    out["router_utilization"] = max(r["busy_s"] for r in res.routers) / makespan
    out["wall_s"] = res.wall_s
    out["simulated_requests_per_wall_s"] = res.num_requests / res.wall_s if res.wall_s else None
    return out
