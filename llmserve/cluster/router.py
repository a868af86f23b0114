"""Router policies: which replica a request goes to, from what the router knows of each one.

A policy is a small class in `POLICIES`, built by `make_policy(name, **kwargs)`; a new policy is
a new class with a `name` and a `pick`, nothing else changes. The contract (the
interfaces document, B) is `choose(req, replicas: Sequence[ReplicaState]) -> replica_id`; the
cluster simulator calls the same policies through `pick(req, view)` on a `LoadView` (one numpy
array per field, so a decision over 1,000 replicas is a few vectorised calls, not a Python loop
over dataclasses). `choose` builds that view from the states, so both paths run the same code.

Ties go to the lowest position (deterministic, hand-checkable). That is also what makes stale
views herd: several routers reading the same old snapshot pick the same "least loaded" replica,
which is the effect distributed routing has to live with (see placement.py).

Dead replicas (alive=False) are never chosen; with none alive, choose raises ValueError.
"""
from __future__ import annotations

import collections
import dataclasses
import inspect
import types
from collections.abc import Sequence

import numpy as np

from llmserve.core.block_manager import BlockManager


@dataclasses.dataclass
class ReplicaState:
    """What a router knows about one replica (may be stale)."""
    replica_id: int
    num_running: int = 0
    num_waiting: int = 0
    outstanding_tokens: int = 0     # prompt tokens not yet prefilled + output tokens not yet made
    free_kv_blocks: int = 0
    total_kv_blocks: int = 1
    predicted_work: float = 0.0     # predicted remaining output tokens
    alive: bool = True
    prefill_tokens: int = 0         # prompt tokens not yet prefilled (predicted_work adds them)
    restarts: int = 0               # times this replica was replaced after dying (Ray backend)


@dataclasses.dataclass
class RouteRequest:
    request_id: str
    prompt_token_ids: Sequence[int]
    max_tokens: int
    predicted_output_len: float | None = None


class LoadView:
    """Replica states as arrays (position i = replica ids[i]). Policies read only this."""
    FIELDS = ("num_running", "num_waiting", "outstanding_tokens", "free_kv_blocks",
              "total_kv_blocks", "predicted_work", "prefill_tokens")

    def __init__(self, ids, num_running, num_waiting, outstanding_tokens, free_kv_blocks,
                 total_kv_blocks, predicted_work, alive, prefill_tokens=None):
        self.ids = np.asarray(ids, np.int64)
        self.num_running = np.asarray(num_running, np.float64)
        self.num_waiting = np.asarray(num_waiting, np.float64)
        self.outstanding_tokens = np.asarray(outstanding_tokens, np.float64)
        self.free_kv_blocks = np.asarray(free_kv_blocks, np.float64)
        self.total_kv_blocks = np.asarray(total_kv_blocks, np.float64)
        self.predicted_work = np.asarray(predicted_work, np.float64)
        self.alive = np.asarray(alive, bool)
        self.prefill_tokens = np.zeros(len(self.ids)) if prefill_tokens is None else \
            np.asarray(prefill_tokens, np.float64)

    @classmethod
    def from_states(cls, states: Sequence[ReplicaState]) -> LoadView:
        if not states:
            raise ValueError("replicas: the router needs at least one replica")
        cols = {f: [getattr(s, f) for s in states] for f in cls.FIELDS}
        return cls([s.replica_id for s in states], alive=[s.alive for s in states], **cols)

    def __len__(self) -> int:
        return len(self.ids)

    def states(self) -> list[ReplicaState]:
        return [ReplicaState(int(self.ids[i]), int(self.num_running[i]),
                             int(self.num_waiting[i]), int(self.outstanding_tokens[i]),
                             int(self.free_kv_blocks[i]), int(self.total_kv_blocks[i]),
                             float(self.predicted_work[i]), bool(self.alive[i]),
                             int(self.prefill_tokens[i]))
                for i in range(len(self))]


def _argmin_alive(values: np.ndarray, alive: np.ndarray) -> int:
    """Position of the smallest value among alive replicas (ties: the lowest position)."""
    if alive.all():
        return int(np.argmin(values))
    if not alive.any():
        raise ValueError("no alive replica to route to")
    return int(np.argmin(np.where(alive, values, np.inf)))


def _alive_positions(view: LoadView) -> np.ndarray:
    pos = np.flatnonzero(view.alive)
    if not len(pos):
        raise ValueError("no alive replica to route to")
    return pos


class RouterPolicy:
    name = ""
    # Replica states one decision reads (None: all of them); the decision-cost model uses it.
    replicas_read: int | None = None

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def choose(self, req: RouteRequest, replicas: Sequence[ReplicaState]) -> int:
        view = LoadView.from_states(replicas)
        return int(view.ids[self.pick(req, view)])

    def pick(self, req: RouteRequest, view: LoadView) -> int:
        """Position (not id) of the chosen replica in view."""
        raise NotImplementedError

    def on_dispatch(self, req: RouteRequest, replica_id: int) -> None:
        pass

    def on_finish(self, request_id: str, replica_id: int) -> None:
        pass

    def join(self, index: int, num_routers: int, num_replicas: int) -> None:
        """This instance is router `index` of `num_routers` routing to the same `num_replicas`
        (placement.make_decision_points calls it). Routers fed interleaved arrivals must not
        move in step: per-router randomness comes from the seed the caller gives each one
        (cluster_sim derives it from the router index); a policy with deterministic state
        staggers it here."""


class RoundRobin(RouterPolicy):
    """Replicas in turn by position; a dead one is skipped. Router k of K starts at replica
    k * N // K: all starting at 0, K routers fed request i % K would cycle in lockstep and send
    runs of K consecutive requests to one replica; evenly spaced, any N consecutive requests
    send at most 2 to one replica (K <= N), and requests jN..jN+N-1 reach N distinct replicas
    when K divides N."""
    name = "round_robin"
    replicas_read = 1

    def __init__(self, seed: int = 0):
        super().__init__(seed)
        self.next = 0

    def join(self, index, num_routers, num_replicas):
        self.next = index * num_replicas // num_routers

    def pick(self, req, view):
        n = len(view)
        alive = view.alive
        for k in range(n):
            i = (self.next + k) % n
            if alive[i]:
                self.next = i + 1
                return i
        raise ValueError("no alive replica to route to")


class Random(RouterPolicy):
    name = "random"
    replicas_read = 1

    def pick(self, req, view):
        pos = _alive_positions(view)
        return int(pos[self.rng.integers(len(pos))])


class LeastRequests(RouterPolicy):
    """Fewest running + waiting requests."""
    name = "least_requests"

    def pick(self, req, view):
        return _argmin_alive(view.num_running + view.num_waiting, view.alive)


class LeastTokens(RouterPolicy):
    """Fewest outstanding tokens (prompt left to prefill + output tokens left, at max_tokens)."""
    name = "least_tokens"

    def pick(self, req, view):
        return _argmin_alive(view.outstanding_tokens, view.alive)


class PowerOfTwo(RouterPolicy):
    """Two distinct alive replicas drawn at random, the one with fewer outstanding tokens
    (ties: the first drawn). O(1) state per decision, and robust to stale views (Mitzenmacher)."""
    name = "power_of_two"
    replicas_read = 2

    def pick(self, req, view):
        alive = _alive_positions(view)
        n = len(alive)
        if n == 1:
            return int(alive[0])
        a = int(self.rng.integers(n))
        b = int(self.rng.integers(n - 1))
        b += b >= a
        a, b = alive[a], alive[b]
        load = view.outstanding_tokens
        return int(b if load[b] < load[a] else a)


class KVAware(RouterPolicy):
    """Most free KV blocks (absolute: a bigger pool takes more)."""
    name = "kv_aware"

    def pick(self, req, view):
        return _argmin_alive(-view.free_kv_blocks, view.alive)


class PredictedWork(RouterPolicy):
    """Least predicted remaining work: the length predictor's remaining output tokens summed
    over the replica's requests, plus its prompt tokens not yet prefilled. It is least_tokens
    with each request's max_tokens replaced by its predicted length (no public router uses
    predicted length)."""
    name = "predicted_work"

    def pick(self, req, view):
        return _argmin_alive(view.predicted_work + view.prefill_tokens, view.alive)


# ---- prefix affinity -------------------------------------------------------------------------
def prefix_block_hashes(token_ids: Sequence[int], block_size: int) -> list[int]:
    """Chained hashes of the prompt's full blocks that a replica's prefix cache can match:
    computed by BlockManager's own hashing function (so router and caches agree on every hash),
    over the first (len - 1) // block_size blocks, as BlockManager.match_prefix limits a match."""
    n = (len(token_ids) - 1) // block_size
    if n <= 0:
        return []
    holder = types.SimpleNamespace(block_hashes=[], token_ids=token_ids)
    return BlockManager._hash_blocks(types.SimpleNamespace(block_size=block_size), holder, n)


class PrefixAware(RouterPolicy):
    """Longest recorded prefix match wins, unless that replica is overloaded.

    Per replica, a record (LRU, `capacity_blocks` hashes) of the prefix block hashes of the
    prompts it was sent; an index hash -> replicas holding it finds the longest match in one
    walk over the prompt's blocks. Among the replicas with the longest match (>= min_match
    blocks) the least outstanding tokens wins; if that replica's load exceeds the least loaded
    alive replica's by more than `imbalance_abs` tokens AND by a factor `imbalance_rel`, balance
    wins (least_tokens), as SGLang's router and Ray's prefix-aware router trade affinity for
    balance. No match: least_tokens.
    """
    name = "prefix_aware"

    def __init__(self, seed: int = 0, block_size: int = 16, imbalance_abs: float = 16384.0,
                 imbalance_rel: float = 1.5, min_match_blocks: int = 1,
                 capacity_blocks: int = 1 << 20):
        super().__init__(seed)
        if block_size < 1 or block_size & (block_size - 1):
            raise ValueError(f"router.block_size must be a power of two, got {block_size}")
        if imbalance_abs < 0 or imbalance_rel < 1:
            raise ValueError(f"router.imbalance_abs must be >= 0 and router.imbalance_rel >= 1, "
                             f"got {imbalance_abs} and {imbalance_rel}")
        if min_match_blocks < 1 or capacity_blocks < 1:
            raise ValueError("router.min_match_blocks and router.capacity_blocks must be >= 1")
        self.block_size = block_size
        self.imbalance_abs = float(imbalance_abs)
        self.imbalance_rel = float(imbalance_rel)
        self.min_match_blocks = min_match_blocks
        self.capacity_blocks = capacity_blocks
        self.records: dict[int, collections.OrderedDict] = {}
        self.index: dict[int, set[int]] = {}
        self._hashes: dict[str, list[int]] = {}
        self.num_affinity = self.num_balanced = self.num_no_match = 0

    def _match(self, hashes: list[int]) -> tuple[set[int], int]:
        """(replica ids holding the longest recorded prefix, its length in blocks)."""
        best: set[int] = set()
        depth = 0
        index = self.index
        for h in hashes:
            holders = index.get(h)
            if not holders:
                break
            cand = holders if not depth else best & holders
            if not cand:
                break
            best, depth = cand, depth + 1
        return best, depth

    def pick(self, req, view):
        hashes = prefix_block_hashes(req.prompt_token_ids, self.block_size)
        self._hashes[req.request_id] = hashes
        load = view.outstanding_tokens
        least = _argmin_alive(load, view.alive)
        holders, depth = self._match(hashes)
        if depth < self.min_match_blocks:
            self.num_no_match += 1
            return least
        pos = {int(r): i for i, r in enumerate(view.ids)} if len(holders) else {}
        cand = [pos[r] for r in holders if r in pos and view.alive[pos[r]]]
        if not cand:
            self.num_no_match += 1
            return least
        best = min(cand, key=lambda i: (load[i], i))
        lo = load[least]
        if load[best] - lo > self.imbalance_abs and load[best] > self.imbalance_rel * lo:
            self.num_balanced += 1
            return least
        self.num_affinity += 1
        return best

    def on_dispatch(self, req, replica_id):
        hashes = self._hashes.pop(req.request_id, None)
        if hashes is None:
            hashes = prefix_block_hashes(req.prompt_token_ids, self.block_size)
        rec = self.records.get(replica_id)
        if rec is None:
            rec = self.records[replica_id] = collections.OrderedDict()
        index = self.index
        for h in hashes:
            if h in rec:
                rec.move_to_end(h)
            else:
                rec[h] = None
                index.setdefault(h, set()).add(replica_id)
        while len(rec) > self.capacity_blocks:
            h, _ = rec.popitem(last=False)
            s = index[h]
            s.discard(replica_id)
            if not s:
                del index[h]

    def forget_replica(self, replica_id: int) -> None:
        """Drop a replica's record (it died, its cache is gone)."""
        for h in self.records.pop(replica_id, {}):
            s = self.index.get(h)
            if s is not None:
                s.discard(replica_id)
                if not s:
                    del self.index[h]


POLICIES: dict[str, type[RouterPolicy]] = {c.name: c for c in (
    RoundRobin, Random, LeastRequests, LeastTokens, PowerOfTwo, KVAware, PrefixAware,
    PredictedWork)}


def check_policy_name(name: str) -> str:
    if name not in POLICIES:
        raise ValueError(f"router.policy must be one of {sorted(POLICIES)}, got {name!r}")
    return name


def _params(cls) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self"}


def make_policy(name: str, **kwargs) -> RouterPolicy:
    """A fresh policy by name; kwargs go to its constructor (seed, prefix_aware's thresholds).
    A keyword some other policy takes is ignored, so one config serves them all; a keyword no
    policy takes is an error."""
    cls = POLICIES[check_policy_name(name)]
    known = set().union(*(_params(c) for c in POLICIES.values()))
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"router options {unknown} are not known; policies take {sorted(known)}")
    accepted = _params(cls)
    return cls(**{k: v for k, v in kwargs.items() if k in accepted})
