"""Waiting-queue orders. The scheduler only calls the RequestQueue interface.

Every queue keeps preempted requests in a separate front deque, served before anything else,
so a preempted request keeps its place. Aborted requests are deleted lazily: `remove` only
adjusts the count, and an entry whose request has finished is skipped (and dropped) when it
reaches the head. No operation is O(number waiting).
"""
from __future__ import annotations

import abc
import collections
import heapq
import itertools

from llmserve.core.request import Request

QUEUE_POLICIES = ("fcfs", "shortest_first", "length_bins")
# Policies that order by the predicted output length, so need a predictor.
PREDICTIVE_QUEUE_POLICIES = ("shortest_first", "length_bins")


def predicted_len(req: Request) -> float:
    p = req.predicted_num_output_tokens
    return float(req.sampling_params.max_tokens) if p is None else p


class RequestQueue(abc.ABC):
    def __init__(self):
        self._front: collections.deque[Request] = collections.deque()
        self._n = 0

    def add(self, req: Request) -> None:
        self._n += 1
        self._push(req)

    def add_front(self, req: Request) -> None:
        """Put back a preempted request so it keeps its place (ahead of new arrivals)."""
        self._n += 1
        self._front.appendleft(req)

    def remove(self, req: Request) -> None:
        """The caller marks req finished right after; its entry is dropped when reached."""
        self._n -= 1

    def start_step(self, now: float) -> None:
        """Called once at the start of every admission round (a step or a static batch)."""

    def peek(self, now: float) -> Request | None:
        f = self._front
        while f:
            if not f[0].is_finished:
                return f[0]
            f.popleft()
        return self._peek(now)

    def pop(self, now: float) -> Request:
        req = self.peek(now)
        if req is None:
            raise IndexError("pop from an empty request queue")
        if self._front and self._front[0] is req:
            self._front.popleft()
        else:
            self._pop()
        self._n -= 1
        return req

    def __len__(self) -> int:
        return self._n

    def __iter__(self):
        live = (r for r in itertools.chain(self._front, self._entries()) if not r.is_finished)
        return iter(list(live))

    # ---- what an order provides ------------------------------------------------------------
    @abc.abstractmethod
    def _push(self, req: Request) -> None: ...

    @abc.abstractmethod
    def _peek(self, now: float) -> Request | None:
        """The next request (dropping finished entries at the head), or None."""

    @abc.abstractmethod
    def _pop(self) -> None:
        """Drop the entry _peek just returned."""

    @abc.abstractmethod
    def _entries(self): ...


class FCFSQueue(RequestQueue):
    def __init__(self):
        super().__init__()
        self._q: collections.deque[Request] = collections.deque()

    def _push(self, req):
        self._q.append(req)

    def _peek(self, now):
        q = self._q
        while q:
            if not q[0].is_finished:
                return q[0]
            q.popleft()
        return None

    def _pop(self):
        self._q.popleft()

    def _entries(self):
        return self._q


class ShortestFirstQueue(RequestQueue):
    """Predicted-shortest-first with aging.

    priority(t) = predicted_len - aging_rate * (t - arrival_time), lowest first. Since t is
    common to all waiting requests, the order equals that of the fixed key
    predicted_len + aging_rate * arrival_time, so a heap holds it without re-sorting. A request
    can be overtaken only by one arriving less than predicted_len / aging_rate seconds after it,
    which bounds its wait (tested).
    """

    def __init__(self, aging_rate: float = 0.0):
        super().__init__()
        self.aging_rate = aging_rate
        self._heap: list[tuple[float, int, Request]] = []
        self._seq = itertools.count()

    def key(self, req: Request) -> float:
        return predicted_len(req) + self.aging_rate * req.arrival_time

    def _push(self, req):
        heapq.heappush(self._heap, (self.key(req), next(self._seq), req))

    def _peek(self, now):
        h = self._heap
        while h:
            if not h[0][2].is_finished:
                return h[0][2]
            heapq.heappop(h)
        return None

    def _pop(self):
        heapq.heappop(self._heap)

    def _entries(self):
        return (e[2] for e in sorted(self._heap))


class LengthBinsQueue(RequestQueue):
    """Requests binned by predicted output length; each admission round draws from one bin.

    The bin is the one whose head has waited longest (FCFS across bins, so nothing starves);
    inside a bin, FCFS. With static batching this groups requests of similar length into a
    batch, which cuts decode padding.
    """

    def __init__(self, edges: tuple[int, ...] = (50, 500)):
        super().__init__()
        self.edges = tuple(edges)
        self._bins = [collections.deque() for _ in range(len(self.edges) + 1)]
        self._cur: int | None = None

    def bin_of(self, req: Request) -> int:
        p = predicted_len(req)
        for i, e in enumerate(self.edges):
            if p < e:
                return i
        return len(self.edges)

    def _push(self, req):
        self._bins[self.bin_of(req)].append(req)

    @staticmethod
    def _head(q):
        while q:
            if not q[0].is_finished:
                return q[0]
            q.popleft()
        return None

    def start_step(self, now):
        best, best_t = None, None
        for i, q in enumerate(self._bins):
            h = self._head(q)
            if h is not None and (best_t is None or h.arrival_time < best_t):
                best, best_t = i, h.arrival_time
        self._cur = best

    def _peek(self, now):
        if self._cur is None:
            self.start_step(now)
            if self._cur is None:
                return None
        return self._head(self._bins[self._cur])

    def _pop(self):
        self._bins[self._cur].popleft()

    def _entries(self):
        return itertools.chain(*self._bins)


def create_request_queue(policy: str, aging_rate: float = 0.0,
                         length_bins: tuple[int, ...] = (50, 500)) -> RequestQueue:
    if policy == "fcfs":
        return FCFSQueue()
    if policy == "shortest_first":
        return ShortestFirstQueue(aging_rate)
    if policy == "length_bins":
        return LengthBinsQueue(length_bins)
    raise ValueError(f"queue_policy must be one of {QUEUE_POLICIES}, got {policy!r}")
