"""The engine behind the HTTP server: `EngineClient` (the contract) and `AsyncLLMEngine`.

EngineClient (also implemented by the Ray cluster's RayRouterClient):
    model_name: str; max_model_len: int; tokenizer (an llmserve.tokenizer object)
    async start() -> None
    generate(prompt, sampling_params, request_id, *, stop=()) -> AsyncIterator[RequestOutput]
        Yields cumulative RequestOutput snapshots (token_ids, text, logprobs and, when
        sampling_params.top_logprobs asks, top_logprobs so far); the last has finished=True.
        A consumer that falls behind gets the newest snapshot only (they are cumulative, so
        nothing is lost). `stop` are stop strings: the text is cut before the
        first one and the request ends with finish_reason "stop".
        Raises, before anything is yielded: ValueError naming the field (bad input),
        QueueFullError (the waiting queue is at its bound -> HTTP 429), EngineShutdownError
        (draining -> 503). Raises later: RequestFailedError (this request's processing failed
        -> 500; other requests are unaffected), EngineShutdownError (aborted at the end of the
        shutdown grace period).
        Closing the iterator early (client gone, task cancelled) aborts the request.
    async abort(request_id) -> None
        The engine thread frees the request's blocks before its next schedule() call.
    stats() -> dict: num_running, num_waiting, kv_blocks_total/used/free/cached,
        num_preemptions, prefix_hit_tokens, num_steps, num_finished, num_aborted, num_failed
    async shutdown(grace_s) -> None
        New requests are refused at once; running ones may finish for grace_s seconds; the
        rest then end with EngineShutdownError; the engine thread stops.

AsyncLLMEngine runs one LLMEngine's step loop in a background thread. Only that thread
touches the engine: adds and aborts reach it through a command deque, and each step's
outputs go back to the event loops in one call_soon_threadsafe per loop.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from llmserve.outputs import RequestOutput
from llmserve.sampling_params import SamplingParams
from llmserve.tokenizer import CONTEXT_TOKENS, decode_continuation

log = logging.getLogger("llmserve.server")


class QueueFullError(Exception):
    """The waiting queue is at its bound; retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineShutdownError(Exception):
    """The engine is shutting down (request refused, or aborted after the grace period)."""


class RequestFailedError(Exception):
    """One request's processing raised; that request is aborted, the engine goes on."""


@runtime_checkable
class EngineClient(Protocol):
    model_name: str
    max_model_len: int
    tokenizer: Any

    async def start(self) -> None: ...

    def generate(self, prompt, sampling_params: SamplingParams, request_id: str, *,
                 stop: Sequence[str] = ()) -> AsyncIterator[RequestOutput]: ...

    async def abort(self, request_id: str) -> None: ...

    def stats(self) -> dict: ...

    async def shutdown(self, grace_s: float) -> None: ...


def validate_stop(stop) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = (stop,)
    stop = tuple(stop)
    if any(not isinstance(s, str) or not s for s in stop):
        raise ValueError(f"stop must be a non-empty string or a list of them, got {stop!r}")
    return stop


class TextTracker:
    """Cumulative text of one request's output tokens, and the stop-string check.

    Text is decoded whole each step (a window decode saves little at these lengths and a
    full decode is what LLM.generate returns); while unfinished, trailing U+FFFD is held back:
    it may be the first bytes of a character the next token completes.
    """

    __slots__ = ("checked", "context", "stop", "text", "tokenizer")

    def __init__(self, tokenizer, stop: tuple[str, ...], context: Sequence[int] = ()):
        self.tokenizer = tokenizer
        self.context = list(context[-CONTEXT_TOKENS:])   # prompt tail: see decode_continuation
        self.stop = stop
        self.text = ""
        self.checked = 0          # text before this offset holds no stop string

    def update(self, token_ids: list[int], finished: bool) -> bool:
        """Recompute the text; True if a stop string was found (text cut before it)."""
        if self.tokenizer is None:
            return False
        text = decode_continuation(self.tokenizer, self.context, token_ids)
        if not finished:
            text = text.rstrip("\ufffd")
        if not self.stop:
            self.text = text
            return False
        longest = max(map(len, self.stop))
        start = max(0, self.checked - longest + 1)
        hits = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
        self.checked = len(text)
        if hits:
            self.text = text[:min(hits)]
            return True
        # Hold back what may be the start of a stop string, so streamed text is never
        # taken back.
        self.text = text if finished else text[:max(0, len(text) - longest + 1)]
        return False


class _Stream:
    """Engine-thread state of one request."""

    __slots__ = ("loop", "queue", "tracker")

    def __init__(self, loop, queue, tracker):
        self.loop = loop
        self.queue = queue
        self.tracker = tracker


class AsyncLLMEngine:
    history_steps = 4096          # per-step records kept (see _trim_history)

    def __init__(self, engine, model_name: str, *, max_waiting_requests: int = 0,
                 fault_hook: Callable[[RequestOutput], None] | None = None):
        """engine: an LLMEngine, owned by this object from now on.
        max_waiting_requests: bound of the scheduler's waiting queue (0 = none); a request
        arriving when it is reached gets QueueFullError.
        fault_hook: testing only; called with each request's output snapshot inside that
        request's processing, so an exception it raises exercises the per-request failure
        path."""
        if max_waiting_requests < 0:
            raise ValueError(f"max_waiting_requests must be >= 0, got {max_waiting_requests}")
        self.engine = engine
        self.model_name = model_name
        self.max_model_len = engine.config.max_model_len
        self.tokenizer = engine.tokenizer
        self.max_waiting_requests = max_waiting_requests
        self.fault_hook = fault_hook
        self._cmds: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._streams: dict[str, _Stream] = {}     # engine thread only
        self._active: set[str] = set()             # event-loop side: open generate() calls
        self._draining = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._num_failed = 0
        self._stats: dict = {}
        self._publish_stats()

    # ---- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="llmserve-engine",
                                            daemon=True)
            self._thread.start()

    async def shutdown(self, grace_s: float) -> None:
        self._draining = True
        deadline = time.monotonic() + max(0.0, grace_s)
        while self._active and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self._active:
            log.warning("shutdown: %d request(s) still running after the %.1f s grace period; "
                        "aborting them", len(self._active), grace_s)
            self._submit(("abort_all", EngineShutdownError(
                "the server is shutting down; the request was aborted after the grace period")))
            end = time.monotonic() + 5.0
            while self._active and time.monotonic() < end:
                await asyncio.sleep(0.01)
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 10.0)

    @property
    def draining(self) -> bool:
        return self._draining

    def stats(self) -> dict:
        return dict(self._stats)

    # ---- requests (event-loop side) ---------------------------------------------------------
    def _submit(self, cmd) -> None:
        self._cmds.append(cmd)
        self._wake.set()

    async def abort(self, request_id: str) -> None:
        self._submit(("abort", request_id))

    async def generate(self, prompt, sampling_params: SamplingParams, request_id: str, *,
                       stop: Sequence[str] = ()) -> AsyncIterator[RequestOutput]:
        if self._draining:
            raise EngineShutdownError("the server is shutting down and accepts no new requests")
        if self._thread is None:
            raise RuntimeError("AsyncLLMEngine.start() was not called")
        stop = validate_stop(stop)
        # Validation reads only immutable engine state, so it runs here and a bad request
        # never reaches the engine thread.
        ids, _ = self.engine.validate(prompt, sampling_params)
        if request_id in self._active:
            raise ValueError(f"request_id {request_id!r} is already in use")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        tracker = TextTracker(self.tokenizer, stop, ids)
        self._active.add(request_id)
        self._submit(("add", request_id, ids, sampling_params, _Stream(loop, queue, tracker)))
        finished = False
        error = None
        try:
            while True:
                item = error if error is not None else await queue.get()
                while not queue.empty() and not isinstance(item, BaseException):
                    nxt = queue.get_nowait()       # snapshots are cumulative: keep the newest,
                    if isinstance(nxt, BaseException):
                        error = nxt                # but the tokens made before an error go first
                        break
                    item = nxt
                if isinstance(item, BaseException):
                    finished = True                 # the engine thread already dropped it
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            self._active.discard(request_id)
            if not finished:
                self._submit(("abort", request_id))

    # ---- the engine thread ------------------------------------------------------------------
    def _run(self) -> None:
        eng = self.engine
        while not self._stopping:
            self._wake.clear()
            try:
                self._apply_commands()
            except Exception as e:    # a dead engine thread would hang every request
                log.exception("applying requests to the engine failed")
                self._fail_all(RequestFailedError(f"engine error: {e!r}"))
                continue
            if not eng.has_unfinished():
                self._publish_stats()
                self._wake.wait(0.5)
                continue
            n_steps = len(eng.step_times)
            try:
                changed = eng.step_requests()
            except Exception as e:  # a failed step must not end the loop
                log.exception("engine step failed; failing the requests in flight")
                self._fail_all(RequestFailedError(f"engine step failed: {e!r}"))
                continue
            if changed:
                self._process(changed)
            elif len(eng.step_times) == n_steps:
                self._wake.wait(0.001)     # nothing schedulable yet (e.g. static batch timeout)
            self._trim_history()
            self._publish_stats()
        self._fail_all(EngineShutdownError("the engine stopped"))

    def _apply_commands(self) -> None:
        cmds = self._cmds
        eng = self.engine
        out: dict = {}
        try:
            while cmds:
                cmd = cmds.popleft()
                kind = cmd[0]
                if kind == "add":
                    _, rid, ids, sp, stream = cmd
                    try:
                        if self.max_waiting_requests and \
                                eng.scheduler.num_waiting >= self.max_waiting_requests:
                            raise QueueFullError(
                                f"the waiting queue is full ({self.max_waiting_requests} "
                                "requests); retry later", retry_after_s=1.0)
                        eng.add_request(ids, sp, rid)
                    except Exception as e:  # delivered to that request only
                        out.setdefault(stream.loop, []).append((stream.queue, e))
                        continue
                    self._streams[rid] = stream
                elif kind == "abort":
                    if self._streams.pop(cmd[1], None) is not None:
                        eng.abort(cmd[1])
                elif kind == "abort_all":
                    for rid, stream in self._streams.items():
                        eng.abort(rid)
                        out.setdefault(stream.loop, []).append((stream.queue, cmd[1]))
                    self._streams.clear()
        finally:           # refusals already decided must reach their clients
            self._deliver(out)

    def _process(self, changed) -> None:
        out: dict = {}
        streams = self._streams
        hook = self.fault_hook
        errors = self.engine.errors
        for req in changed:
            failed = errors.pop(req.request_id, None) if errors else None
            stream = streams.get(req.request_id)
            if stream is None:
                continue
            try:
                finished = req.is_finished
                if failed is not None:    # a step failed on it; the engine aborted it alone
                    self._num_failed += 1
                    del streams[req.request_id]
                    out.setdefault(stream.loop, []).append(
                        (stream.queue, RequestFailedError(failed)))
                    continue
                toks = req.output_token_ids
                stopped = stream.tracker.update(toks, finished)
                if stopped and not finished:
                    self.engine.abort(req.request_id)     # frees its blocks now
                    finished = True
                o = RequestOutput.from_request(req, stream.tracker.text)
                if stopped:
                    o.finished, o.finish_reason = True, "stop"
                if hook is not None:
                    hook(o)
                item = o
            except Exception as e:  # fails this request only
                log.exception("request %s failed; aborting it", req.request_id)
                self.engine.abort(req.request_id)
                self._num_failed += 1
                item, finished = RequestFailedError(f"request processing failed: {e!r}"), True
            if finished:
                del streams[req.request_id]
            out.setdefault(stream.loop, []).append((stream.queue, item))
        self._deliver(out)

    def _fail_all(self, err: Exception) -> None:
        out: dict = {}
        for rid, stream in self._streams.items():
            try:
                self.engine.abort(rid)
            except Exception:
                log.exception("abort of %s failed", rid)
            out.setdefault(stream.loop, []).append((stream.queue, err))
        self._num_failed += len(self._streams)
        self._streams.clear()
        self._deliver(out)

    @staticmethod
    def _deliver(out: dict) -> None:
        for loop, items in out.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:       # that event loop is closed: nobody is listening
                pass

    def _trim_history(self) -> None:
        """The engine keeps every step's time and record (benchmarks read them); a server
        running for days keeps only the last history_steps."""
        keep = self.history_steps
        for seq in (self.engine.step_times,
                    getattr(self.engine.scheduler.step_records, "rows", ())):
            if len(seq) > 2 * keep:
                del seq[:-keep]

    def _publish_stats(self) -> None:
        eng = self.engine
        sched = eng.scheduler
        bm = sched.block_manager
        st = sched.stats
        self._stats = {
            "num_running": sched.num_running,
            "num_waiting": sched.num_waiting,
            "kv_blocks_total": bm.num_blocks,
            "kv_blocks_used": bm.num_used_blocks,
            "kv_blocks_free": bm.num_free_blocks,
            "kv_blocks_cached": bm.num_cached_free_blocks,
            "num_preemptions": st.num_preemptions,
            "prefix_hit_tokens": st.num_cache_hit_tokens,
            "num_steps": st.num_steps,
            "num_finished": st.num_finished,
            "num_aborted": st.num_aborted,
            "num_failed": self._num_failed,
        }


def _put_all(items) -> None:
    for queue, item in items:
        queue.put_nowait(item)
