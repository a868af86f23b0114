"""Waiting-queue orders. The scheduler only calls the RequestQueue interface."""
from __future__ import annotations

import abc
import collections

from llmserve.core.request import Request

QUEUE_POLICIES = ("fcfs",)


class RequestQueue(abc.ABC):
    @abc.abstractmethod
    def add(self, req: Request) -> None: ...

    @abc.abstractmethod
    def add_front(self, req: Request) -> None:
        """Put back a preempted request so it keeps its place."""

    @abc.abstractmethod
    def peek(self, now: float) -> Request: ...

    @abc.abstractmethod
    def pop(self, now: float) -> Request: ...

    @abc.abstractmethod
    def remove(self, req: Request) -> None: ...

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __iter__(self): ...


class FCFSQueue(RequestQueue):
    def __init__(self):
        self._q: collections.deque[Request] = collections.deque()

    def add(self, req):
        self._q.append(req)

    def add_front(self, req):
        self._q.appendleft(req)

    def peek(self, now):
        return self._q[0]

    def pop(self, now):
        return self._q.popleft()

    def remove(self, req):
        self._q.remove(req)

    def __len__(self):
        return len(self._q)

    def __iter__(self):
        return iter(self._q)


def create_request_queue(policy: str) -> RequestQueue:
    if policy == "fcfs":
        return FCFSQueue()
    raise ValueError(f"queue_policy must be one of {QUEUE_POLICIES}, got {policy!r}")
