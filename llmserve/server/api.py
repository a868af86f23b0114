"""The OpenAI-compatible HTTP API: build_app(engine_client, settings) -> FastAPI.

Bodies are read and parsed here rather than by FastAPI's automatic validation, so that a body
over the limit is refused while it streams in (413) and every error has OpenAI's shape with
the parameter named (FastAPI would answer 422 in its own shape).
"""
from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import math
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from llmserve.sampling_params import SamplingParams
from llmserve.server import protocol as P
from llmserve.server.async_engine import (
    EngineShutdownError,
    QueueFullError,
    RequestFailedError,
)
from llmserve.server.chat import ChatTemplate, ChatTemplateError, encode_chat
from llmserve.server.errors import APIError, from_value_error
from llmserve.server.metrics import ServerMetrics
from llmserve.tokenizer import CONTEXT_TOKENS
from llmserve.validation import encode_prompt

log = logging.getLogger("llmserve.server")


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    api_key: str = ""                 # "" = no authentication
    max_body_bytes: int = 1 << 20     # larger request bodies get 413
    max_prompt_tokens: int = 0        # 0 = only the context limit (max_model_len)
    max_stop: int = 8                 # stop strings per request
    body_timeout_s: float = 30.0      # a body not received in full by then gets 408

    def __post_init__(self):
        for f in ("max_body_bytes", "max_prompt_tokens", "max_stop"):
            if getattr(self, f) < 0:
                raise ValueError(f"server setting {f} must be >= 0, got {getattr(self, f)}")
        if not self.body_timeout_s > 0:
            raise ValueError(f"server setting body_timeout_s must be > 0, got "
                             f"{self.body_timeout_s}")


def _to_api_error(e: BaseException, prompt_param: str = "prompt") -> APIError:
    if isinstance(e, APIError):
        return e
    if isinstance(e, ChatTemplateError):
        return APIError(400, str(e), "messages", "invalid_value")
    if isinstance(e, ValueError):
        return from_value_error(e, prompt_param)
    if isinstance(e, QueueFullError):
        return APIError(429, str(e), None, "queue_full",
                        {"Retry-After": str(max(1, math.ceil(e.retry_after_s)))})
    if isinstance(e, EngineShutdownError):
        return APIError(503, str(e), None, "shutting_down")
    if isinstance(e, RequestFailedError):
        return APIError(500, str(e), None, "internal_error")
    log.error("internal error", exc_info=e)
    return APIError(500, f"internal error: {type(e).__name__}", None, "internal_error")


class ClientGone(Exception):
    """The client closed the connection before its body arrived: its event, not ours."""


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"request body of {declared} bytes exceeds the limit of {limit}",
                       None, "request_too_large")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():   # chunked bodies are counted as they arrive
                size += len(chunk)
                if size > limit:
                    raise APIError(413, f"request body exceeds the limit of {limit} bytes",
                                   None, "request_too_large")
                chunks.append(chunk)
    except TimeoutError:
        raise APIError(408, f"the request body did not arrive within {timeout_s:g} s "
                       f"({size} bytes received)", None, "request_timeout") from None
    except ClientDisconnect:
        raise ClientGone() from None
    return b"".join(chunks)


async def _read_json(request: Request, limit: int, timeout_s: float = 30.0):
    return P.loads(await _read_body(request, limit, timeout_s))


async def _wait_disconnect(request: Request) -> None:
    while True:
        msg = await request.receive()
        if msg["type"] == "http.disconnect":
            return


async def _unless_disconnected(coro, request: Request):
    """Run coro; if the client goes away first, cancel it (which aborts the request) and
    return (False, None). Otherwise (True, result)."""
    work = asyncio.ensure_future(coro)
    watch = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if work.done():
        return True, work.result()
    work.cancel()
    try:
        await work
    except (asyncio.CancelledError, Exception):
        pass
    return False, None


async def _last(agen):
    out = None
    async for o in agen:
        out = o
    return out


@dataclasses.dataclass
class _Call:
    """One parsed request on its way through the engine."""
    chat: bool
    req: P._Sampling
    rid: str
    prompt_ids: list[int]
    created: int
    sp: SamplingParams
    stop: tuple[str, ...]
    echo: str | None = None     # completions echo=true: the prompt text the choice starts with

    @property
    def logprobs(self) -> bool:
        lp = self.req.logprobs
        return bool(lp) if self.chat else lp is not None


def build_app(engine, settings: ServerSettings | None = None,
              chat_template: ChatTemplate | None = None) -> FastAPI:
    """engine: an EngineClient (already built; its start()/shutdown() run in the app's
    lifespan). chat_template: None = the default template."""
    settings = settings or ServerSettings()
    if chat_template is None:
        from llmserve.server.chat import DEFAULT_CHAT_TEMPLATE
        chat_template = ChatTemplate(DEFAULT_CHAT_TEMPLATE)
    metrics = ServerMetrics(engine)
    tok = engine.tokenizer
    # Header bytes are compared, not text: a client may send a non-ASCII key as UTF-8 (what
    # curl and most clients send) or as latin-1 (what HTTP's text form of a header is).
    keys = [settings.api_key.encode()]
    try:
        keys.append(settings.api_key.encode("latin-1"))
    except UnicodeEncodeError:
        pass

    async def lifespan(app):
        await engine.start()
        yield
        if not getattr(engine, "draining", False):
            await engine.shutdown(0.0)

    app = FastAPI(title="llmserve", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.engine = engine
    app.state.metrics = metrics

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        return APIError(exc.status_code, str(exc.detail), None, None).response()

    @app.exception_handler(Exception)
    async def _internal(request, exc):
        return _to_api_error(exc).response()

    def check_auth(request: Request) -> None:
        if not keys[0]:
            return
        auth = next((v for k, v in request.headers.raw if k.lower() == b"authorization"), b"")
        scheme, _, given = auth.partition(b" ")
        given = given.strip()
        # every form compared, in constant time, so the timing tells nothing of which matched
        ok = [hmac.compare_digest(given, k) for k in keys]
        if scheme.lower() != b"bearer" or not any(ok):
            raise APIError(401, "missing or invalid API key (Authorization: Bearer <key>)",
                           None, "invalid_api_key")

    def prepare(body, chat: bool) -> _Call:
        req = P.parse(P.ChatCompletionRequest if chat else P.CompletionRequest, body)
        if req.model != engine.model_name:
            raise APIError(400, f"model {req.model!r} is not served here; this server serves "
                           f"{engine.model_name!r}", "model", "model_not_found")
        pparam = "messages" if chat else "prompt"
        if chat:
            msgs = [{"role": m.role, "content": m.text()} for m in req.messages]
            ids = encode_chat(tok, chat_template.render(msgs))
            max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None \
                else req.max_tokens
        else:
            prompt = req.single_prompt()
            if isinstance(prompt, str):
                if not prompt:
                    raise APIError(400, "prompt is empty", "prompt", "invalid_value")
                ids = encode_prompt(tok, prompt)
            else:
                ids = prompt
            max_tokens = req.max_tokens if req.max_tokens is not None else (
                16 if "max_tokens" not in req.model_fields_set else None)
        limit = settings.max_prompt_tokens
        if limit and len(ids) > limit:
            raise APIError(400, f"the prompt has {len(ids)} tokens, more than this server's "
                           f"limit of {limit}", pparam, "prompt_too_long")
        if max_tokens is None:        # null: whatever the context leaves
            max_tokens = max(1, engine.max_model_len - len(ids))
        stop = req.stop
        if isinstance(stop, str):
            stop = [stop]
        if stop and len(stop) > settings.max_stop:
            raise APIError(400, f"{len(stop)} stop strings; at most {settings.max_stop}",
                           "stop", "invalid_value")
        if stop and not all(stop):
            raise APIError(400, "stop strings must be non-empty", "stop", "invalid_value")
        echo = None
        prompt_lps = None
        if not chat and req.echo:
            echo = prompt if isinstance(prompt, str) else tok.decode(ids)
            # With logprobs the prompt's come first; max_tokens=0 (what lm-eval-harness
            # sends for loglikelihoods) needs them asked of the engine in any case.
            prompt_lps = req.logprobs if req.logprobs is not None else (
                0 if max_tokens == 0 else None)
        sp = SamplingParams(max_tokens=max_tokens, temperature=req.temperature,
                            top_p=req.top_p, top_k=req.top_k, seed=req.seed,
                            stop_token_ids=tuple(req.stop_token_ids or ()),
                            ignore_eos=req.ignore_eos,
                            logprobs=bool(req.logprobs) if chat else req.logprobs is not None,
                            top_logprobs=(req.top_logprobs or 0) if chat else
                            (req.logprobs or 0), prompt_logprobs=prompt_lps)
        return _Call(chat, req, ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex,
                     list(ids), P.now(), sp, tuple(stop or ()), echo)

    # ---- response bodies ------------------------------------------------------------------
    def choice_logprobs(call: _Call, token_ids, logprobs, offset: int, tops=None, context=()):
        if not call.logprobs:
            return None
        if call.sp.top_logprobs and tops is None:
            # A backend that does not carry alternatives (none asked of it): empty entries,
            # so each position still has its slot.
            tops = [[] for _ in token_ids]
        elif not call.sp.top_logprobs:
            tops = None
        if call.chat:
            return P.chat_logprobs(tok, token_ids, logprobs, tops, context)
        return P.completion_logprobs(tok, token_ids, logprobs, offset, tops, context)

    def with_echo(call: _Call, out, lp):
        """Prepend the echoed prompt's logprobs to the completion's (offsets already after
        the prompt text)."""
        if call.echo is None or lp is None:
            return lp
        head = P.echo_logprobs(tok, out.prompt_token_ids, out.prompt_logprobs,
                               bool(call.sp.top_logprobs))
        return P.join_logprobs(head, lp)

    def full_response(call: _Call, out) -> dict:
        echo = call.echo or ""
        lp = with_echo(call, out, choice_logprobs(call, out.token_ids, out.logprobs or [],
                                                  len(echo), out.top_logprobs,
                                                  out.prompt_token_ids))
        if call.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": out.text or ""},
                      "logprobs": lp, "finish_reason": out.finish_reason}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": echo + (out.text or ""), "logprobs": lp,
                      "finish_reason": out.finish_reason}
            obj = "text_completion"
        return {"id": call.rid, "object": obj, "created": call.created,
                "model": engine.model_name, "choices": [choice],
                "usage": P.usage(len(out.prompt_token_ids), len(out.token_ids))}

    def chunk(call: _Call, delta: str | None, finish_reason, lp, role: bool = False) -> str:
        if call.chat:
            d = {}
            if role:
                d["role"] = "assistant"
            if delta is not None:
                d["content"] = delta
            choice = {"index": 0, "delta": d, "logprobs": lp, "finish_reason": finish_reason}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": delta or "", "logprobs": lp,
                      "finish_reason": finish_reason}
            obj = "text_completion"
        body = {"id": call.rid, "object": obj, "created": call.created,
                "model": engine.model_name, "choices": [choice]}
        return f"data: {json.dumps(body)}\n\n"

    async def sse(call: _Call, agen, first):
        sent_text, sent_toks, out = "", 0, first
        # echo: the prompt, and its logprobs, go in the first chunk.
        echo = call.echo or ""
        pending_echo = call.echo is not None
        # text_offset of the next token: the sum of the sent tokens' texts, as in the
        # non-streamed response (the text itself lags while a character's bytes are split).
        off = len(echo)
        try:
            if call.chat:
                yield chunk(call, "", None, None, role=True)
            while True:
                text = out.text or ""
                delta = text[len(sent_text):]
                new = out.token_ids[sent_toks:]
                if delta or out.finished or (call.logprobs and new) or pending_echo:
                    tops = out.top_logprobs
                    lp = choice_logprobs(call, new, (out.logprobs or [])[sent_toks:], off,
                                         None if tops is None else tops[sent_toks:],
                                         # the context's last tokens only: no copy
                                         # of the whole output per chunk
                                         out.prompt_token_ids[-CONTEXT_TOKENS:] +
                                         out.token_ids[max(0, sent_toks - CONTEXT_TOKENS):
                                                       sent_toks])
                    if lp is not None and not call.chat:
                        off += sum(map(len, lp["tokens"]))
                    if pending_echo:
                        lp, delta = with_echo(call, out, lp), echo + delta
                        pending_echo = False
                    yield chunk(call, delta, out.finish_reason if out.finished else None, lp)
                sent_text, sent_toks = text, len(out.token_ids)
                if out.finished:
                    break
                out = await agen.__anext__()
            metrics.observe(out)
            metrics.http.labels(call.chat and "chat" or "completions", "200").inc()
            so = call.req.stream_options
            if so is not None and so.include_usage:
                body = {"id": call.rid, "object": "chat.completion.chunk" if call.chat
                        else "text_completion", "created": call.created,
                        "model": engine.model_name, "choices": [],
                        "usage": P.usage(len(out.prompt_token_ids), len(out.token_ids))}
                yield f"data: {json.dumps(body)}\n\n"
            yield "data: [DONE]\n\n"
        except Exception as e:        # headers are sent: the error goes as an event
            err = _to_api_error(e)
            metrics.http.labels(call.chat and "chat" or "completions", str(err.status)).inc()
            yield err.sse()
            yield "data: [DONE]\n\n"
        finally:
            await agen.aclose()
            if out is None or not out.finished:
                await engine.abort(call.rid)

    async def handle(request: Request, chat: bool) -> Response:
        endpoint = "chat" if chat else "completions"
        call = None
        try:
            if getattr(engine, "draining", False):    # until the process exits (README)
                raise EngineShutdownError("the server is shutting down and accepts no new "
                                          "requests")
            check_auth(request)
            body = await _read_json(request, settings.max_body_bytes, settings.body_timeout_s)
            call = prepare(body, chat)
            agen = engine.generate(call.prompt_ids, call.sp, call.rid, stop=call.stop)
            if call.req.stream:
                ok, first = await _unless_disconnected(agen.__anext__(), request)
            else:
                ok, first = await _unless_disconnected(_last(agen), request)
            if not ok:
                await engine.abort(call.rid)
                metrics.disconnects.labels(endpoint, "waiting").inc()
                return Response(status_code=499)      # nobody is listening
        except ClientGone:
            metrics.disconnects.labels(endpoint, "body").inc()
            return Response(status_code=499)
        except Exception as e:
            err = _to_api_error(e, "messages" if chat else "prompt")
            metrics.http.labels(endpoint, str(err.status)).inc()
            return err.response()
        headers = {"X-Request-Id": call.rid}
        if call.req.stream:
            return StreamingResponse(sse(call, agen, first), media_type="text/event-stream",
                                     headers=headers)
        metrics.observe(first)
        metrics.http.labels(endpoint, "200").inc()
        return JSONResponse(full_response(call, first), headers=headers)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await handle(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await handle(request, chat=True)

    @app.get("/v1/models")
    async def models(request: Request):
        try:
            check_auth(request)
        except APIError as e:
            return e.response()
        return {"object": "list", "data": [{"id": engine.model_name, "object": "model",
                                            "created": 0, "owned_by": "llmserve",
                                            "max_model_len": engine.max_model_len}]}

    @app.get("/health")
    async def health():
        if getattr(engine, "draining", False):
            return APIError(503, "shutting down", None, "shutting_down").response()
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
