"""Combinatorial multi-armed bandits for edge/cloud offload: UCB and Thompson sampling.

Base arms are (context, side) pairs: a side is where a request runs (0 = edge, 1 = cloud) and a
context is a small integer the caller derives from what is known at decision time (here: the
prompt's size bucket and the edge's queue-length bucket, see edge_cloud.py). Rewards are in
[0, 1] (edge_cloud.reward combines SLO attainment and energy with configurable weights).

Per request, the bandit picks the arm with the highest index in the request's context. Per
batch of requests the choice is combinatorial (a super-arm: one side for every request of the
batch) under a capacity: at most `capacity[side]` requests of a batch may go to a side (an
edge box accepts only so many at once). Following CUCB (Chen, Wang & Yuan, ICML 2013) the
bandit computes every base arm's index once and hands them to an oracle that picks the best
feasible super-arm for those indices; feedback is semi-bandit (each request's own reward
updates its own base arm). For two sides the oracle below is exact: requests take their better
side, and where a side is over capacity the ones that lose least by moving go to the other.

  UCB        UCB1 index: mean + c * sqrt(2 ln t / n), t = pulls in the context, untried arms
             first (Auer, Cesa-Bianchi & Fischer 2002).
  UCB-tuned  UCB1-Tuned from the same paper: the bonus uses the arm's observed variance,
             c * sqrt(ln t / n * min(1/4, var + sqrt(2 ln t / n))). When rewards vary little
             (every request meets its SLO, energies differ by a few percent) UCB1's bonus
             dwarfs the gaps and it keeps exploring for thousands of pulls; this one does not.
  Thompson   Beta-Bernoulli posterior per arm; a reward r in [0, 1] is turned into a Bernoulli
             trial with success probability r (Agrawal & Goyal 2012), so it stays exact for
             bounded rewards. One posterior draw per request and arm.
"""
from __future__ import annotations

import math

import numpy as np

BANDITS = ("ucb", "ucb_tuned", "thompson")


class Bandit:
    name = "bandit"

    def __init__(self, num_arms: int = 2, num_contexts: int = 1, seed: int = 0):
        if isinstance(num_arms, bool) or not isinstance(num_arms, int) or num_arms < 2:
            raise ValueError(f"bandit.num_arms must be an int >= 2, got {num_arms!r}")
        if isinstance(num_contexts, bool) or not isinstance(num_contexts, int) or \
                num_contexts < 1:
            raise ValueError(f"bandit.num_contexts must be an int >= 1, got {num_contexts!r}")
        self.num_arms = num_arms
        self.num_contexts = num_contexts
        self.counts = np.zeros((num_contexts, num_arms))
        self.sums = np.zeros((num_contexts, num_arms))
        self.sq_sums = np.zeros((num_contexts, num_arms))
        self.rng = np.random.default_rng(seed)

    def _check(self, context: int) -> None:
        if not 0 <= context < self.num_contexts:
            raise ValueError(f"context must be in [0, {self.num_contexts}), got {context}")

    def index(self, context: int) -> np.ndarray:
        """A score per arm in this context; higher = pick."""
        raise NotImplementedError

    def select(self, context: int = 0) -> int:
        s = self.index(context)
        return int(np.argmax(s))

    def select_batch(self, contexts, capacity: dict[int, int] | None = None) -> list[int]:
        """One arm per request of the batch (CUCB: indices, then the capacity oracle)."""
        scores = np.array([self.index(c) for c in contexts]).reshape(len(contexts),
                                                                     self.num_arms)
        return best_assignment(scores, capacity)

    def update(self, context: int, arm: int, reward: float) -> None:
        self._check(context)
        if not 0 <= arm < self.num_arms:
            raise ValueError(f"arm must be in [0, {self.num_arms}), got {arm}")
        if not (0.0 <= reward <= 1.0):
            raise ValueError(f"bandit reward must be in [0, 1], got {reward}")
        self.counts[context, arm] += 1
        self.sums[context, arm] += reward
        self.sq_sums[context, arm] += reward * reward

    def means(self) -> np.ndarray:
        return self.sums / np.maximum(self.counts, 1)


class UCB(Bandit):
    name = "ucb"

    def __init__(self, num_arms: int = 2, num_contexts: int = 1, seed: int = 0,
                 exploration: float = 1.0):
        super().__init__(num_arms, num_contexts, seed)
        if isinstance(exploration, bool) or not isinstance(exploration, (int, float)) or \
                not exploration >= 0:
            raise ValueError(f"bandit.exploration must be >= 0, got {exploration!r}")
        self.c = float(exploration)

    def index(self, context: int) -> np.ndarray:
        self._check(context)
        n = self.counts[context]
        if (n == 0).any():      # untried arms first, in a seeded random order
            return np.where(n == 0, 1e9 + self.rng.random(self.num_arms), -1.0)
        t = n.sum()
        return self.sums[context] / n + self.c * np.sqrt(2.0 * math.log(t) / n)


class UCBTuned(UCB):
    name = "ucb_tuned"

    def index(self, context: int) -> np.ndarray:
        self._check(context)
        n = self.counts[context]
        if (n == 0).any():
            return np.where(n == 0, 1e9 + self.rng.random(self.num_arms), -1.0)
        log_t = math.log(n.sum())
        mean = self.sums[context] / n
        var = np.maximum(self.sq_sums[context] / n - mean * mean, 0.0) + np.sqrt(
            2.0 * log_t / n)
        return mean + self.c * np.sqrt(log_t / n * np.minimum(0.25, var))


class Thompson(Bandit):
    name = "thompson"

    def __init__(self, num_arms: int = 2, num_contexts: int = 1, seed: int = 0):
        super().__init__(num_arms, num_contexts, seed)
        self.alpha = np.ones((num_contexts, num_arms))
        self.beta = np.ones((num_contexts, num_arms))

    def index(self, context: int) -> np.ndarray:
        self._check(context)
        return self.rng.beta(self.alpha[context], self.beta[context])

    def update(self, context: int, arm: int, reward: float) -> None:
        super().update(context, arm, reward)
        if self.rng.random() < reward:
            self.alpha[context, arm] += 1
        else:
            self.beta[context, arm] += 1


def make_bandit(name: str, num_arms: int = 2, num_contexts: int = 1, seed: int = 0,
                exploration: float = 1.0) -> Bandit:
    if name == "ucb":
        return UCB(num_arms, num_contexts, seed, exploration)
    if name == "ucb_tuned":
        return UCBTuned(num_arms, num_contexts, seed, exploration)
    if name == "thompson":
        return Thompson(num_arms, num_contexts, seed)
    raise ValueError(f"bandit must be one of {BANDITS}, got {name!r}")


def best_assignment(scores: np.ndarray, capacity: dict[int, int] | None = None) -> list[int]:
    """Arm per row maximising the summed scores with at most capacity[a] rows on arm a.

    Greedy: every row takes its best arm; an arm over capacity keeps its rows with the largest
    margin over their next feasible arm and moves the others there. Exact for two arms (the
    edge/cloud case: the rows kept are the ones that lose most by moving), a heuristic beyond.
    """
    scores = np.asarray(scores, float)
    n, k = scores.shape
    capacity = dict(capacity or {})
    for a, c in capacity.items():
        if not 0 <= a < k:
            raise ValueError(f"capacity names arm {a}, arms are 0..{k - 1}")
        if c < 0:
            raise ValueError(f"capacity of arm {a} must be >= 0, got {c}")
    if sum(capacity.get(a, n) for a in range(k)) < n:
        raise ValueError(f"capacities {capacity} cannot place a batch of {n}")
    allowed = np.ones((n, k), bool)
    choice = np.argmax(scores, axis=1)
    for _ in range(k):
        moved = False
        for a, cap in capacity.items():
            rows = np.flatnonzero(choice == a)
            if len(rows) <= cap:
                continue
            alt = np.where(allowed[rows], scores[rows], -np.inf)
            alt[:, a] = -np.inf
            margin = scores[rows, a] - alt.max(axis=1)
            order = rows[np.argsort(-margin, kind="stable")]
            for r in order[cap:]:
                allowed[r, a] = False
                choice[r] = int(np.argmax(np.where(allowed[r], scores[r], -np.inf)))
            moved = True
        if not moved:
            break
    return [int(c) for c in choice]
