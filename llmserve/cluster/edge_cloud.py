"""Edge/cloud offload in simulation: where should a request run, and what does it cost?

One edge device (a Jetson-class box running a small model) sits next to the client; a cloud
cluster (H100 replicas running a larger model) sits a network away. Every device is its own
`Scheduler` + `SimRunner` (the same scheduler code the engine serves with) under one
discrete-event clock, with an `EnergyMeter` (energy.py). A strategy decides, per request or per
batch of requests arriving within `batch_window_s`, which side serves each one:

  always_edge / always_cloud   fixed baselines
  ucb / ucb_tuned / thompson   bandits (bandit.py) learning from each finished request's
                               reward; `ucb:none` etc. override the context (see below)
  oracle                       greedy oracle: before deciding, it simulates the request on both
                               sides from the current state (a copy of the device with the
                               requests already in flight to it, no future arrivals) and takes
                               the side with the better reward (ties: edge). In a batch it
                               decides and dispatches one request at a time, within the edge
                               capacity. Greedy: it ignores what its choice does to later
                               requests, so it is not a bound on every strategy in general;
                               with no queueing it is optimal per request.

Network (cloud only; the edge is local): a request reaches the cloud after RTT/2 + jitter +
prompt bytes / uplink, and every token reaches the client RTT/2 + jitter + token bytes /
downlink after it is made. Jitter is exponential with mean `jitter_mean_s`, one draw per request
and direction, the same draws for every strategy (common random numbers). TPOT is measured at
the device (a constant per-request delay does not change it; per-token jitter is not modelled).
The cloud routes a request to its replica with the fewest outstanding requests.

Reward of a request (in [0, 1], the bandit's and the oracle's objective):
    (w_slo * [TTFT <= slo_ttft and TPOT <= slo_tpot at the client]
     + w_energy * max(0, 1 - marginal_J / energy_ref_j)) / (w_slo + w_energy)
marginal_J is the energy the request's busy share cost over idling (energy.py). The bandit
learns it when the request's last token reaches the client, or earlier for a miss: a request
whose first token has not reached the client by arrival + slo_ttft_s has missed its SLO, and is
reported then (as a miss, with the energy it has used so far, a lower bound) and not again.
Without that timeout the worst choices report last: a request queued behind an overloaded edge
tells the bandit so only after its long wait, while more requests follow it there.

Contexts: "none" (one bandit), "size" (prompt-length buckets `size_edges`), or "size_load" (size
buckets x buckets of the edge's outstanding requests `load_edges`, which the client can see).
The load context is there because the edge's answer depends on its queue: without it the best
side is not stationary (the bandit's own choices load the edge).

Answer quality is not modelled: the edge's smaller model is assumed to give acceptable answers.
"""
from __future__ import annotations

import dataclasses
import heapq
import logging
import math
import pickle
import time

import numpy as np

from llmserve.cluster.bandit import BANDITS, make_bandit
from llmserve.cluster.energy import EnergyMeter, PowerProfile
from llmserve.core.request import Request
from llmserve.core.scheduler import SchedulerConfig, create_scheduler
from llmserve.runner.sim_runner import SimRunner
from llmserve.sampling_params import SamplingParams

log = logging.getLogger(__name__)

EDGE, CLOUD = 0, 1
SIDES = ("edge", "cloud")
FIXED = ("always_edge", "always_cloud")
STRATEGIES = FIXED + BANDITS + ("oracle",)
CONTEXTS = ("none", "size", "size_load")


# Shapes of small Llama models an edge box runs, from their Hugging Face config.json
# (meta-llama/Llama-3.2-1B and -3B: tied embeddings, GQA with 8 KV heads).
def _llama32(hidden, inter, layers, heads, head_dim):
    from llmserve.model.config import ModelConfig
    return ModelConfig(vocab_size=128256, hidden_size=hidden, intermediate_size=inter,
                       num_layers=layers, num_heads=heads, num_kv_heads=8, head_dim=head_dim,
                       max_position_embeddings=131072, tie_word_embeddings=True,
                       dtype="bfloat16")


EDGE_MODELS = {"llama3.2-1b": lambda: _llama32(2048, 8192, 16, 32, 64),
               "llama3.2-3b": lambda: _llama32(3072, 8192, 28, 24, 128)}


def model_config(name: str):
    if name in EDGE_MODELS:
        return EDGE_MODELS[name]()
    from llmserve.model.config import get_preset
    return get_preset(name)


# ---- configuration ------------------------------------------------------------------------------
def _num(field: str, v, lo: float | None = None, strict: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        raise ValueError(f"{field} must be a number, got {v!r}")
    if lo is not None and (v <= lo if strict else v < lo):
        raise ValueError(f"{field} must be {'>' if strict else '>='} {lo}, got {v}")
    return float(v)


def _edges(field: str, v) -> tuple[int, ...]:
    if isinstance(v, str):
        v = [x for x in v.replace(" ", "").split(",") if x]
    try:
        e = tuple(int(x) for x in v)
    except (TypeError, ValueError):
        raise ValueError(f"{field} must be comma-separated ints, got {v!r}") from None
    if any(b <= a for a, b in zip(e, e[1:])) or any(x < 0 for x in e):
        raise ValueError(f"{field} must be increasing non-negative ints, got {v!r}")
    return e


@dataclasses.dataclass(frozen=True)
class SideConfig:
    hardware: str
    model: str
    num_replicas: int
    max_num_seqs: int
    max_num_batched_tokens: int
    memory_utilization: float
    power: PowerProfile


@dataclasses.dataclass(frozen=True)
class EdgeCloudConfig:
    edge: SideConfig
    cloud: SideConfig
    max_model_len: int = 4096
    block_size: int = 16
    rtt_s: float = 0.04
    jitter_mean_s: float = 0.005
    uplink_mbps: float = 20.0
    downlink_mbps: float = 50.0
    prompt_bytes_per_token: float = 4.0
    output_bytes_per_token: float = 150.0
    request_overhead_bytes: float = 500.0
    edge_delay_s: float = 0.0
    slo_ttft_s: float = 1.0
    slo_tpot_s: float = 0.1
    w_slo: float = 1.0
    w_energy: float = 0.25
    energy_ref_j: float = 2000.0
    context: str = "size_load"
    size_edges: tuple = (512, 2048)
    load_edges: tuple = (2, 8)
    exploration: float = 1.0
    batch_window_s: float = 0.0
    edge_batch_capacity: int = 0
    seed: int = 0

    @property
    def num_contexts(self) -> int:
        return num_contexts(self, self.context)


def _side(name: str, d: dict) -> SideConfig:
    def get(k):
        if k not in d:
            raise ValueError(f"{name}.{k} is missing")
        return d[k]
    for k in ("num_replicas", "max_num_seqs", "max_num_batched_tokens"):
        v = get(k)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}.{k} must be an int >= 1, got {v!r}")
    mu = _num(f"{name}.memory_utilization", get("memory_utilization"), 0, strict=True)
    if mu > 1:
        raise ValueError(f"{name}.memory_utilization must be in (0, 1], got {mu}")
    from llmserve.sim.hardware import get_hardware
    get_hardware(get("hardware"))
    model_config(get("model"))
    try:
        power = PowerProfile(busy_w=_num(f"{name}.busy_w", get("busy_w")),
                             idle_w=_num(f"{name}.idle_w", get("idle_w")),
                             idle_share=_num(f"{name}.idle_share", get("idle_share")),
                             pue=_num(f"{name}.pue", get("pue")))
    except ValueError as e:
        raise ValueError(f"{name}.{str(e).removeprefix('power.')}") from None
    return SideConfig(get("hardware"), get("model"), get("num_replicas"), get("max_num_seqs"),
                      get("max_num_batched_tokens"), mu, power)


def make_config(cfg) -> EdgeCloudConfig:
    """EdgeCloudConfig from the ConfigDict of configs/edge_cloud.py (or a plain dict); every
    bad field is a ValueError that names it."""
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    net, slo, rew, ban = (d.get(k, {}) for k in ("network", "slo", "reward", "bandit"))
    kw = {}
    for sec, src, keys in (
            ("network", net, ("rtt_s", "jitter_mean_s", "prompt_bytes_per_token",
                              "output_bytes_per_token", "request_overhead_bytes",
                              "edge_delay_s")),
            ("reward", rew, ("w_slo", "w_energy")),
            ("bandit", ban, ("exploration", "batch_window_s"))):
        for k in keys:
            if k in src:
                kw[k] = _num(f"{sec}.{k}", src[k], 0.0)
    for sec, src, keys in (("network", net, ("uplink_mbps", "downlink_mbps")),
                           ("slo", slo, ("ttft_s", "tpot_s")),
                           ("reward", rew, ("energy_ref_j",))):
        for k in keys:
            if k in src:
                kw[k if sec != "slo" else f"slo_{k}"] = _num(f"{sec}.{k}", src[k], 0.0,
                                                             strict=True)
    if "w_slo" in kw and kw["w_slo"] + kw.get("w_energy", 1.0) <= 0:
        raise ValueError("reward.w_slo + reward.w_energy must be > 0")
    if "context" in ban:
        if ban["context"] not in CONTEXTS:
            raise ValueError(f"bandit.context must be one of {CONTEXTS}, got {ban['context']!r}")
        kw["context"] = ban["context"]
    for k in ("size_edges", "load_edges"):
        if k in ban:
            kw[k] = _edges(f"bandit.{k}", ban[k])
    for k in ("edge_batch_capacity", "seed"):
        if k in ban:
            v = ban[k]
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"bandit.{k} must be an int >= 0, got {v!r}")
            kw[k] = v
    for k in ("max_model_len", "block_size"):
        if k in d:
            v = d[k]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{k} must be an int >= 1, got {v!r}")
            kw[k] = v
    for k in ("edge", "cloud"):
        if k not in d:
            raise ValueError(f"config section {k!r} is missing")
    return EdgeCloudConfig(_side("edge", d["edge"]), _side("cloud", d["cloud"]), **kw)


def parse_strategy(spec: str, default_context: str) -> tuple[str, str]:
    """'ucb' -> ('ucb', default context); 'thompson:none' -> ('thompson', 'none')."""
    name, _, ctx = spec.strip().partition(":")
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES} (bandits may add :CONTEXT), "
                         f"got {spec!r}")
    ctx = ctx or default_context
    if ctx not in CONTEXTS:
        raise ValueError(f"strategy {spec!r}: context must be one of {CONTEXTS}, got {ctx!r}")
    if ":" in spec and name not in BANDITS:
        raise ValueError(f"strategy {spec!r}: only bandits ({BANDITS}) take a context")
    return name, ctx


def num_contexts(cfg: EdgeCloudConfig, context: str) -> int:
    if context == "none":
        return 1
    n = len(cfg.size_edges) + 1
    return n * (len(cfg.load_edges) + 1) if context == "size_load" else n


def context_of(cfg: EdgeCloudConfig, context: str, prompt_len: int, edge_load: int) -> int:
    if context == "none":
        return 0
    s = int(np.searchsorted(cfg.size_edges, prompt_len, side="right"))
    if context == "size":
        return s
    return s * (len(cfg.load_edges) + 1) + int(np.searchsorted(cfg.load_edges, edge_load,
                                                               side="right"))


def reward(cfg: EdgeCloudConfig, met: bool, marginal_j: float) -> float:
    e = max(0.0, 1.0 - marginal_j / cfg.energy_ref_j)
    return (cfg.w_slo * float(met) + cfg.w_energy * e) / (cfg.w_slo + cfg.w_energy)


# ---- devices ------------------------------------------------------------------------------------
class Device:
    """One replica: scheduler + SimRunner + energy meter; a step in flight ends at busy_until."""

    def __init__(self, name: str, side: int, sc: SideConfig, cfg: EdgeCloudConfig, cost_model,
                 num_kv_blocks: int):
        self.name, self.side = name, side
        self.scheduler = create_scheduler(SchedulerConfig(
            max_num_seqs=sc.max_num_seqs, max_num_batched_tokens=sc.max_num_batched_tokens,
            block_size=cfg.block_size, num_kv_blocks=num_kv_blocks,
            max_model_len=cfg.max_model_len, policy="chunked"))
        self.runner = SimRunner(cost_model)
        self.meter = EnergyMeter(sc.power)
        self.busy_until: float | None = None
        self._step = None
        self.in_transit = 0

    @property
    def outstanding(self) -> int:
        s = self.scheduler
        return s.num_running + s.num_waiting + self.in_transit

    def start_step(self, now: float) -> float | None:
        """Schedule and run one step at `now`; returns when it ends (None: nothing to run)."""
        s = self.scheduler
        if self.busy_until is not None or not s.has_unfinished():
            return None
        out = s.schedule(now)
        while not out.scheduled and out.preempted_req_ids:
            out = s.schedule(now)   # a step that only preempted: the freed blocks admit work
        if not out.scheduled:
            return None
        ro = self.runner.execute(out)
        self.meter.record_step(ro.step_time_s, {r.req_id: len(r.token_ids)
                                                for r in out.scheduled})
        self._step = (out, ro)
        self.busy_until = now + ro.step_time_s
        return self.busy_until

    def end_step(self) -> list[Request]:
        """Apply the step in flight at its end time; returns the requests it finished."""
        out, ro = self._step
        now = self.busy_until
        self._step, self.busy_until = None, None
        s = self.scheduler
        done = [r for r in s.update_from_output(out, ro, now) if r.is_finished]
        for r in done:      # keep the state small: forks copy it
            s.requests.pop(r.request_id, None)
        s.step_records.rows.clear()
        return done


def _kv_blocks(cost_model, block_size: int, mu: float) -> int:
    return cost_model.num_kv_blocks(block_size, mu, activation_reserve_bytes=1e9)


@dataclasses.dataclass
class Outcome:
    side: int
    context: int
    ttft_s: float       # at the client
    tpot_s: float       # nan for a one-token answer
    e2e_s: float        # at the client
    met: bool
    marginal_j: float
    reward: float
    finish_s: float     # last token at the client
    decided_s: float    # when the strategy chose the side


# ---- the simulation -----------------------------------------------------------------------------
class EdgeCloudSim:
    def __init__(self, cfg: EdgeCloudConfig, workload: list, strategy: str = "always_cloud"):
        from llmserve.sim.cost_model import CostModel
        from llmserve.sim.hardware import get_hardware
        self.cfg = cfg
        self.strategy, self.context = parse_strategy(strategy, cfg.context)
        if not workload:
            raise ValueError("the workload has no requests")
        self.workload = sorted(workload, key=lambda w: w.arrival_s)
        self.devices: list[Device] = []
        for side, sc in ((EDGE, cfg.edge), (CLOUD, cfg.cloud)):
            cm = CostModel(model_config(sc.model), get_hardware(sc.hardware),
                           block_size=cfg.block_size)
            nb = _kv_blocks(cm, cfg.block_size, sc.memory_utilization)
            for k in range(sc.num_replicas):
                self.devices.append(Device(f"{SIDES[side]}{k}", side, sc, cfg, cm, nb))
        self.edge = [d for d in self.devices if d.side == EDGE]
        self.cloud = [d for d in self.devices if d.side == CLOUD]
        rng = np.random.default_rng(cfg.seed + 7919)
        n = len(self.workload)
        self.jitter = rng.exponential(cfg.jitter_mean_s, (n, 2)) if cfg.jitter_mean_s > 0 \
            else np.zeros((n, 2))
        self.bandit = None
        if self.strategy in BANDITS:
            self.bandit = make_bandit(self.strategy, 2, num_contexts(cfg, self.context),
                                      seed=cfg.seed, exploration=cfg.exploration)

    # network delays of request i
    def up_delay(self, i: int, side: int) -> float:
        c = self.cfg
        if side == EDGE:
            return c.edge_delay_s
        w = self.workload[i]
        bits = 8 * (c.request_overhead_bytes + w.prompt_len * c.prompt_bytes_per_token)
        return c.rtt_s / 2 + self.jitter[i, 0] + bits / (c.uplink_mbps * 1e6)

    def down_delay(self, i: int, side: int) -> float:
        c = self.cfg
        if side == EDGE:
            return c.edge_delay_s
        return c.rtt_s / 2 + self.jitter[i, 1] + 8 * c.output_bytes_per_token / (
            c.downlink_mbps * 1e6)

    def _request(self, i: int, t: float) -> Request:
        w = self.workload[i]
        p = min(w.prompt_len, self.cfg.max_model_len - 1)
        o = max(1, min(w.output_len, self.cfg.max_model_len - p))
        return Request(str(i), [1] * p, SamplingParams(max_tokens=o, ignore_eos=True,
                                                       temperature=0.0), t)

    def _pick_replica(self, side: int) -> Device:
        devs = self.edge if side == EDGE else self.cloud
        return min(devs, key=lambda d: d.outstanding)

    def _outcome(self, i: int, side: int, ctx: int, req: Request, dev: Device,
                 decided: float) -> Outcome:
        w = self.workload[i]
        down = self.down_delay(i, side)
        ttft = req.first_token_time + down - w.arrival_s
        n = len(req.token_times)
        tpot = (req.finish_time - req.first_token_time) / (n - 1) if n > 1 else float("nan")
        met = ttft <= self.cfg.slo_ttft_s and not tpot > self.cfg.slo_tpot_s
        mj = dev.meter.marginal_j(req.request_id)
        return Outcome(side, ctx, ttft, tpot, req.finish_time + down - w.arrival_s, met, mj,
                       reward(self.cfg, met, mj), req.finish_time + down, decided)

    # ---- the oracle's look-ahead ----------------------------------------------------------------
    def _lookahead(self, i: int, side: int, now: float, transit: list) -> Outcome:
        dev = self._pick_replica(side)
        pending = [(t, r) for t, d, r in transit if d is dev]
        # pickle copies the block pool's long int lists in C, far faster than deepcopy
        fork, pending = pickle.loads(pickle.dumps((dev, pending), pickle.HIGHEST_PROTOCOL))
        target = self._request(i, now + self.up_delay(i, side))
        pending.append((target.arrival_time, target))
        pending.sort(key=lambda x: x[0])
        t = now
        while not target.is_finished:
            if fork.busy_until is not None:
                t = fork.busy_until
                fork.end_step()
            while pending and pending[0][0] <= t:
                fork.scheduler.add_request(pending.pop(0)[1])
            if target.is_finished:
                break
            if fork.start_step(t) is None:
                if not pending:
                    raise RuntimeError("oracle look-ahead: the target request cannot run")
                t = pending[0][0]
        return self._outcome(i, side, 0, target, fork, now)

    # ---- the run --------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        wall0 = time.perf_counter()
        heap: list = []
        seq = 0

        def push(t, kind, payload):
            nonlocal seq
            heapq.heappush(heap, (t, seq, kind, payload))
            seq += 1

        for i, w in enumerate(self.workload):
            push(w.arrival_s, "arrive", i)
        batch: list[int] = []
        transit: list[tuple[float, Device, Request]] = []
        owner: dict[str, tuple[int, int, Device, float]] = {}
        outcomes: dict[int, Outcome] = {}
        reported: set[str] = set()
        while heap:
            now, _, kind, payload = heapq.heappop(heap)
            if kind == "arrive":
                batch.append(payload)
                if cfg.batch_window_s <= 0:
                    self._decide(batch, now, push, transit, owner)
                    batch = []
                elif len(batch) == 1:
                    push(now + cfg.batch_window_s, "decide", None)
            elif kind == "decide":
                self._decide(batch, now, push, transit, owner)
                batch = []
            elif kind == "deliver":
                dev, req = payload
                transit.remove((req.arrival_time, dev, req))
                dev.in_transit -= 1
                dev.scheduler.add_request(req)
                end = dev.start_step(now)
                if end is not None:
                    push(end, "step", dev)
            elif kind == "step":
                dev = payload
                for req in dev.end_step():
                    i, ctx, d, decided = owner.pop(req.request_id)
                    oc = self._outcome(i, dev.side, ctx, req, dev, decided)
                    outcomes[i] = oc
                    if self.bandit is not None and req.request_id not in reported:
                        push(oc.finish_s, "feedback", (ctx, oc.side, oc.reward))
                end = dev.start_step(now)
                if end is not None:
                    push(end, "step", dev)
            elif kind == "feedback":
                self.bandit.update(*payload)
            elif kind == "deadline":
                i, ctx, side, dev, req = payload
                first = req.first_token_time
                if first is None or first + self.down_delay(i, side) > now:
                    reported.add(req.request_id)
                    self.bandit.update(ctx, side, reward(cfg, False,
                                                         dev.meter.marginal_j(req.request_id)))
        if len(outcomes) != len(self.workload):
            raise RuntimeError(f"{len(self.workload) - len(outcomes)} requests never finished")
        return self._result(outcomes, time.perf_counter() - wall0)

    def _decide(self, batch, now, push, transit, owner) -> None:
        cfg = self.cfg
        edge_load = sum(d.outstanding for d in self.edge)
        ctxs = [context_of(cfg, self.context, self.workload[i].prompt_len, edge_load)
                for i in batch]
        cap = {EDGE: cfg.edge_batch_capacity} if cfg.edge_batch_capacity > 0 else None
        if self.strategy == "oracle":
            # One request at a time, each dispatched before the next is looked at, so a
            # batch-mate already sent to a side is in that side's look-ahead.
            on_edge = 0
            for i, ctx in zip(batch, ctxs):
                r = [self._lookahead(i, s, now, transit).reward for s in (EDGE, CLOUD)]
                side = EDGE if r[EDGE] >= r[CLOUD] else CLOUD
                if side == EDGE and cap and on_edge >= cap[EDGE]:
                    side = CLOUD
                on_edge += side == EDGE
                self._dispatch(i, ctx, side, now, push, transit, owner)
            return
        if self.strategy == "always_edge":
            sides = [EDGE] * len(batch)
        elif self.strategy == "always_cloud":
            sides = [CLOUD] * len(batch)
        else:
            sides = self.bandit.select_batch(ctxs, cap)
        for i, ctx, side in zip(batch, ctxs, sides):
            self._dispatch(i, ctx, side, now, push, transit, owner)

    def _dispatch(self, i, ctx, side, now, push, transit, owner) -> None:
        dev = self._pick_replica(side)
        t = now + self.up_delay(i, side)
        req = self._request(i, t)
        dev.in_transit += 1
        transit.append((t, dev, req))
        owner[req.request_id] = (i, ctx, dev, now)
        push(t, "deliver", (dev, req))
        if self.bandit is not None:
            push(self.workload[i].arrival_s + self.cfg.slo_ttft_s, "deadline",
                 (i, ctx, side, dev, req))

    def _result(self, outcomes: dict[int, Outcome], wall_s: float) -> dict:
        n = len(self.workload)
        oc = [outcomes[i] for i in range(n)]
        arr = {f: np.array([getattr(o, f) for o in oc], float)
               for f in ("side", "context", "ttft_s", "tpot_s", "e2e_s", "met", "marginal_j",
                         "reward", "finish_s", "decided_s")}
        return {"strategy": self.strategy, "context": self.context, "num_requests": n,
                "requests": arr, "makespan_s": float(arr["finish_s"].max()),
                "devices": [{"name": d.name, "side": SIDES[d.side], "busy_s": d.meter.busy_s,
                             "power": dataclasses.asdict(d.meter.power),
                             "request_busy_s": dict(d.meter.request_busy_s)}
                            for d in self.devices],
                "wall_s": wall_s}


# ---- summaries ----------------------------------------------------------------------------------
def system_energy_j(result: dict, horizon_s: float) -> dict:
    """Energy of every device over a common horizon (J), by side, and attributed per request."""
    by_side = {"edge": 0.0, "cloud": 0.0}
    for d in result["devices"]:
        p = PowerProfile(**d["power"])
        by_side[d["side"]] += p.energy_j(d["busy_s"], horizon_s)
    return by_side


def summarize(result: dict, horizon_s: float | None = None) -> dict:
    """Energy per request (every device over the horizon, idle included, / requests), SLO
    attainment, mean reward, share sent to the edge, latencies."""
    r = result["requests"]
    h = horizon_s if horizon_s is not None else result["makespan_s"]
    if h < result["makespan_s"] - 1e-9:
        raise ValueError(f"horizon {h} s is shorter than the run ({result['makespan_s']} s)")
    e = system_energy_j(result, h)
    n = result["num_requests"]
    total = e["edge"] + e["cloud"]
    pct = (lambda x, q: float(np.nanpercentile(x, q)) if np.isfinite(x).any() else math.nan)
    return {"strategy": result["strategy"], "context": result["context"], "num_requests": n,
            "horizon_s": h, "energy_per_request_j": total / n,
            "edge_energy_j": e["edge"], "cloud_energy_j": e["cloud"],
            "marginal_j_mean": float(r["marginal_j"].mean()),
            "slo_attainment": float(r["met"].mean()), "mean_reward": float(r["reward"].mean()),
            "edge_fraction": float((r["side"] == EDGE).mean()),
            "ttft_p50_s": pct(r["ttft_s"], 50), "ttft_p99_s": pct(r["ttft_s"], 99),
            "tpot_p50_s": pct(r["tpot_s"], 50), "tpot_p99_s": pct(r["tpot_s"], 99),
            "makespan_s": result["makespan_s"], "wall_s": result["wall_s"]}


def simulate(cfg: EdgeCloudConfig, workload: list, strategy: str) -> dict:
    return EdgeCloudSim(cfg, workload, strategy).run()
