"""Where routing decisions are made: one centralized router or several distributed ones.

centralized   one router reads every replica's exact, current load; every request passes
              through it, one decision at a time.
distributed   `num_routers` routers, request i to router i % num_routers (a front load balancer).
              Each decides from a snapshot of the replicas' load that it refreshes every
              `staleness_s` (so the snapshot it reads is 0..staleness_s old; routers refresh at
              staggered phases), plus, with `local_accounting`, the requests it dispatched itself
              since that snapshot (what a router knows without asking). Each has its own policy
              instance, so prefix_aware's record covers only the prompts that router sent;
              random choices draw from a seed per router, and round_robin router k starts at
              replica k * replicas // num_routers, so the routers do not move in lockstep.

Decision cost: each router serves its requests one at a time (FIFO), each decision taking
decision_base_s + decision_per_replica_s x (replicas the policy reads: all of them for a
least-loaded scan, 2 for power_of_two, 1 for round_robin/random). A request reaches its replica
when its decision ends, and its TTFT counts the wait. So a centralized router becomes a
bottleneck exactly when arrival rate x decision time approaches 1, and distributing it divides
that load by num_routers at the price of stale information: the trade is measured, not assumed.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from llmserve.cluster.router import LoadView, RouterPolicy

PLACEMENTS = ("centralized", "distributed")


@dataclasses.dataclass(frozen=True)
class PlacementConfig:
    placement: str = "centralized"      # centralized | distributed
    num_routers: int = 1                # distributed: routers (centralized: 1)
    staleness_s: float = 0.0            # distributed: snapshot refresh period (max age), s
    decision_base_s: float = 1e-4       # per decision, whatever the cluster size
    decision_per_replica_s: float = 1e-7  # per replica state the policy reads
    local_accounting: bool = True       # distributed: count own dispatches since the snapshot

    def __post_init__(self):
        def bad(field, expected, value):
            raise ValueError(f"placement config: {field} must be {expected}, got {value!r}")
        if self.placement not in PLACEMENTS:
            bad("placement", f"one of {PLACEMENTS}", self.placement)
        if isinstance(self.num_routers, bool) or not isinstance(self.num_routers, int) or \
                self.num_routers < 1:
            bad("num_routers", "an int >= 1", self.num_routers)
        if self.placement == "centralized" and self.num_routers != 1:
            bad("num_routers", "1 with placement='centralized'", self.num_routers)
        for f in ("staleness_s", "decision_base_s", "decision_per_replica_s"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                bad(f, "a number >= 0", v)
            object.__setattr__(self, f, float(v))
        if self.placement == "centralized" and self.staleness_s:
            bad("staleness_s", "0 with placement='centralized' (it reads exact load)",
                self.staleness_s)

    @classmethod
    def from_dict(cls, d) -> PlacementConfig:
        d = dict(d)
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"placement config: unknown fields {unknown}")
        return cls(**d)


class LiveLoad:
    """The cluster's current per-replica load, one array per LoadView field (the simulator
    writes them as replicas change)."""

    def __init__(self, ids, total_kv_blocks):
        n = len(ids)
        self.view = LoadView(ids, np.zeros(n), np.zeros(n), np.zeros(n),
                             np.asarray(total_kv_blocks, np.float64),
                             np.asarray(total_kv_blocks, np.float64), np.zeros(n),
                             np.ones(n, bool))


class DecisionPoint:
    """One router: its policy, its view of the load, and its FIFO decision queue."""

    def __init__(self, index: int, policy: RouterPolicy, cfg: PlacementConfig, live: LiveLoad):
        self.index = index
        self.policy = policy
        self.cfg = cfg
        self.live = live
        self.stale = cfg.placement == "distributed" and cfg.staleness_s > 0
        lv = live.view
        if self.stale:
            # Own arrays; `alive` stays the live one (health is not what goes stale here).
            self.view = LoadView(lv.ids, lv.num_running.copy(), lv.num_waiting.copy(),
                                 lv.outstanding_tokens.copy(), lv.free_kv_blocks.copy(),
                                 lv.total_kv_blocks, lv.predicted_work.copy(), lv.alive,
                                 lv.prefill_tokens.copy())
            self.view.alive = lv.alive
        else:
            self.view = lv
        reads = getattr(policy, "replicas_read", None)
        self.reads = reads
        self.free_at = 0.0
        self.num_decisions = 0
        self.busy_s = 0.0
        self.queue_wait_s = 0.0

    def decision_s(self) -> float:
        n = len(self.view) if self.reads is None else min(self.reads, len(self.view))
        return self.cfg.decision_base_s + self.cfg.decision_per_replica_s * n

    def admit(self, t: float) -> float:
        """A request reaches this router at t: when its decision is made (FIFO)."""
        d = self.decision_s()
        start = t if t > self.free_at else self.free_at
        self.queue_wait_s += start - t
        self.free_at = start + d
        self.busy_s += d
        self.num_decisions += 1
        return self.free_at

    def refresh(self) -> None:
        lv, v = self.live.view, self.view
        for f in ("num_running", "num_waiting", "outstanding_tokens", "free_kv_blocks",
                  "predicted_work", "prefill_tokens"):
            np.copyto(getattr(v, f), getattr(lv, f))

    def note_dispatch(self, pos: int, tokens: float, prompt: float, predicted: float) -> None:
        """Local accounting: this router's own dispatch since its snapshot."""
        if self.stale and self.cfg.local_accounting:
            v = self.view
            v.num_waiting[pos] += 1
            v.outstanding_tokens[pos] += tokens
            v.prefill_tokens[pos] += prompt
            v.predicted_work[pos] += predicted


def make_decision_points(cfg: PlacementConfig, make_policy, live: LiveLoad
                         ) -> list[DecisionPoint]:
    """make_policy(k) -> the k-th router's policy instance (with a seed of its own, if it
    draws random numbers); each is told its place among the routers (RouterPolicy.join)."""
    n = cfg.num_routers if cfg.placement == "distributed" else 1
    points = []
    for k in range(n):
        policy = make_policy(k)
        policy.join(k, n, len(live.view))
        points.append(DecisionPoint(k, policy, cfg, live))
    return points
