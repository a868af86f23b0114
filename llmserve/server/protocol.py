"""Request models (pydantic, strict: a wrong type is an error, not a coercion; an unknown field
is an error, not ignored) and the response/chunk builders of the OpenAI API."""
from __future__ import annotations

import json
import time
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmserve.sampling_params import FLOAT32_MAX, INT32_MAX, MAX_TOP_LOGPROBS
from llmserve.server.errors import APIError
from llmserve.tokenizer import CONTEXT_TOKENS, decode_continuation, decode_each_after

MAX_COMPLETION_LOGPROBS = 5     # OpenAI's limit for /v1/completions logprobs


# The ranges of the types each value becomes in the engine step (SamplingParams checks the
# same), declared here so the 400 names the field as the client sent it.
Count = Annotated[int, Field(ge=-INT32_MAX, le=INT32_MAX)]
TokenId = Annotated[int, Field(ge=0, le=INT32_MAX)]
Real = Annotated[float, Field(allow_inf_nan=False, ge=-FLOAT32_MAX, le=FLOAT32_MAX)]


class _HugeInt:
    """An integer literal too long for any field (json.loads would refuse it with a hint
    about sys.set_int_max_str_digits, naming no field); found and named by loads()."""

    def __init__(self, digits: int):
        self.digits = digits


def _parse_int(s: str):
    return _HugeInt(len(s.lstrip("-"))) if len(s) > 20 else int(s)


def _lone_surrogate(s: str) -> int:
    for i, ch in enumerate(s):
        if "\ud800" <= ch <= "\udfff":
            return i
    return -1


def loads(raw: bytes):
    """A request body -> Python, or a 400: not JSON; an integer too long for any field, or a
    string holding a lone surrogate (JSON's \\ud800 escapes can carry one; it has no UTF-8
    form), each named by its path (`param` = the top-level field)."""
    try:
        body = json.loads(raw, parse_int=_parse_int)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}", None,
                       "invalid_json") from None
    stack = [((), body)]
    while stack:
        path, v = stack.pop()
        where = ".".join(map(str, path)) or "the body"
        if isinstance(v, _HugeInt):
            raise APIError(400, f"{where}: an integer of {v.digits} digits is out of range",
                           str(path[0]) if path else None, "invalid_value")
        if isinstance(v, str) and (i := _lone_surrogate(v)) >= 0:
            raise APIError(400, f"{where} holds a lone surrogate U+{ord(v[i]):04X} at "
                           f"character {i}: not valid Unicode text", str(path[0]) if path
                           else None, "invalid_value")
        if isinstance(v, dict):
            for k, x in v.items():
                if _lone_surrogate(k) >= 0:
                    raise APIError(400, f"a key in {where} holds a lone surrogate: not valid "
                                   "Unicode text", str(path[0]) if path else None,
                                   "invalid_value")
                stack.append(((*path, k), x))
        elif isinstance(v, list):
            stack.extend(((*path, i), x) for i, x in enumerate(v))
    return body


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    """Fields shared by both endpoints. OpenAI fields we cannot honour are declared so that a
    non-default value gets a precise 400 (see `unsupported`)."""
    model: str
    max_tokens: Count | None = None
    temperature: Annotated[Real, Field(ge=0)] = 1.0
    top_p: Annotated[Real, Field(gt=0, le=1)] = 1.0
    top_k: Annotated[int, Field(ge=-1, le=INT32_MAX)] = -1   # extension (vLLM's), -1 disables
    seed: Annotated[int, Field(ge=0, lt=2**32)] | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[TokenId] | None = None   # extension
    ignore_eos: bool = False                  # extension
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Count = 1
    presence_penalty: Real = 0.0
    frequency_penalty: Real = 0.0
    logit_bias: dict[str, Real] | None = None
    user: str | None = None          # an opaque end-user id: accepted, not used

    def unsupported(self) -> APIError | None:
        if self.n != 1:
            return APIError(400, f"n={self.n} is not supported: only n=1", "n", "unsupported")
        for f in ("presence_penalty", "frequency_penalty"):
            if getattr(self, f) != 0:
                return APIError(400, f"{f} is not supported (must be 0)", f, "unsupported")
        if self.logit_bias:
            return APIError(400, "logit_bias is not supported", "logit_bias", "unsupported")
        if self.stream_options is not None and not self.stream:
            return APIError(400, "stream_options is only allowed with stream=true",
                            "stream_options", "invalid_value")
        return None


class CompletionRequest(_Sampling):
    prompt: str | list[TokenId] | list[str] | list[list[TokenId]]
    logprobs: Count | None = None
    best_of: Count | None = None
    echo: bool = False
    suffix: str | None = None

    def unsupported(self) -> APIError | None:
        err = super().unsupported()
        if err:
            return err
        if self.best_of not in (None, 1):
            return APIError(400, f"best_of={self.best_of} is not supported: only 1",
                            "best_of", "unsupported")
        if self.max_tokens is not None and self.max_tokens < 0:
            return APIError(400, f"max_tokens={self.max_tokens} must be >= 1 (0 only with "
                            "echo=true)", "max_tokens", "invalid_value")
        if self.max_tokens == 0 and not self.echo:
            return APIError(400, "max_tokens=0 needs echo=true (the prompt, and with logprobs "
                            "its logprobs, alone)", "max_tokens", "invalid_value")
        if self.suffix is not None:
            return APIError(400, "suffix is not supported", "suffix", "unsupported")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_COMPLETION_LOGPROBS:
            return APIError(400, f"logprobs={self.logprobs} is out of range: 0 to "
                            f"{MAX_COMPLETION_LOGPROBS} (the most likely tokens returned per "
                            "position, as OpenAI)", "logprobs", "invalid_value")
        return None

    def single_prompt(self) -> str | list[int]:
        p = self.prompt
        if isinstance(p, list) and p and isinstance(p[0], (str, list)):
            if len(p) != 1:
                raise APIError(400, f"a batch of {len(p)} prompts is not supported: send one "
                               "prompt per request", "prompt", "unsupported")
            p = p[0]
        return p


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Count | None = None
    logprobs: bool = False
    top_logprobs: Count | None = None

    def unsupported(self) -> APIError | None:
        err = super().unsupported()
        if err:
            return err
        if self.top_logprobs is not None:
            if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
                return APIError(400, f"top_logprobs={self.top_logprobs} is out of range: 0 to "
                                f"{MAX_TOP_LOGPROBS}", "top_logprobs", "invalid_value")
            if self.top_logprobs and not self.logprobs:
                return APIError(400, "top_logprobs needs logprobs=true", "top_logprobs",
                                "invalid_value")
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            return APIError(400, "give max_tokens or max_completion_tokens, not both",
                            "max_completion_tokens", "invalid_value")
        for f in ("max_tokens", "max_completion_tokens"):
            v = getattr(self, f)
            if v is not None and v < 1:
                return APIError(400, f"{f}={v} must be >= 1", f, "invalid_value")
        return None


_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal",
                 "finite_number"}


def _body_path(body, loc) -> tuple:
    """A pydantic error location without its union tags ('str', 'list[int]'): the path of
    keys and indexes into the body as the client sent it."""
    out, v = [], body
    for x in loc:
        if isinstance(v, dict) and x in v:
            v = v[x]
        elif isinstance(v, list) and isinstance(x, int) and 0 <= x < len(v):
            v = v[x]
        elif isinstance(v, dict) and not out:
            pass                 # a missing top-level field: named below by its loc
        else:
            continue
        out.append(x)
    return tuple(out)


def parse(model_cls, body) -> _Sampling:
    """Validate a decoded JSON body; the first error becomes a 400 naming its parameter."""
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, got "
                       f"{type(body).__name__}", None, "invalid_json")
    try:
        req = model_cls.model_validate(body)
    except ValidationError as e:
        # Of a union's errors, the branch that got furthest into the value says the most
        # (a token id out of range, rather than "prompt should be a string").
        errs = e.errors()
        err = max(errs, key=lambda x: len(_body_path(body, x.get("loc") or ())))
        loc = _body_path(body, err.get("loc") or ())
        param = str(loc[0]) if loc else None
        where = ".".join(str(x) for x in loc)
        if err["type"] == "extra_forbidden":
            # Nested too (stream_options.x): the parameter that is not ours, by its path.
            raise APIError(400, f"unsupported parameter {where!r}", where,
                           "unsupported_parameter") from None
        # A value of the right type out of its range is invalid_value, as the engine's own
        # refusals are; anything else is the wrong type.
        code = "invalid_value" if err["type"] in _RANGE_ERRORS else "invalid_type"
        raise APIError(400, f"invalid {where}: {err['msg']}", param, code) from None
    bad = req.unsupported()
    if bad is not None:
        raise bad
    return req


# ---- responses ----------------------------------------------------------------------------
def usage(num_prompt: int, num_output: int) -> dict:
    return {"prompt_tokens": num_prompt, "completion_tokens": num_output,
            "total_tokens": num_prompt + num_output}


def _contexts(context, token_ids) -> list[list[int]]:
    """The few ids before each token: a token's text is what it adds after them
    (decode_continuation), so a SentencePiece word piece keeps its leading space."""
    ctx, out = [int(t) for t in context[-CONTEXT_TOKENS:]], []
    for t in token_ids:
        out.append(ctx)
        ctx = (ctx + [int(t)])[-CONTEXT_TOKENS:]
    return out


def completion_logprobs(tokenizer, token_ids, logprobs, text_offset: int, tops=None,
                        context=()) -> dict:
    """tops: per token, its [(token id, logprob)] alternatives (None: logprobs=0, none).
    context: the ids before token_ids (the prompt, and earlier output when streaming)."""
    ctxs = _contexts(context, token_ids)
    toks = [decode_continuation(tokenizer, c, [t]) for c, t in zip(ctxs, token_ids)]
    offsets = []
    for t in toks:
        offsets.append(text_offset)
        text_offset += len(t)
    top = None
    if tops is not None:
        # OpenAI's shape: {token text: logprob}. Two ids that decode to the same text (byte
        # fragments of one character) share a key; the more likely one, listed first, wins.
        # None alternatives (an echoed prompt's first token) stay null.
        top = []
        for c, alts in zip(ctxs, tops):
            if alts is None:
                top.append(None)
                continue
            d = {}
            texts = decode_each_after(tokenizer, c, [[t] for t, _ in alts])
            for s, (_, lp) in zip(texts, alts):
                d.setdefault(s, lp)
            top.append(d)
    return {"tokens": toks, "token_logprobs": list(logprobs), "top_logprobs": top,
            "text_offset": offsets}


def echo_logprobs(tokenizer, prompt_ids, prompt_logprobs, with_top: bool) -> dict:
    """The echoed prompt's part of a completion's logprobs (offsets from 0): its first token
    has no logprob (null, as OpenAI and vLLM). prompt_logprobs: RequestOutput.prompt_logprobs
    (None: the backend returned none, every value null). Alternatives, as vLLM: the top
    tokens, then the prompt token itself when it is not among them."""
    entries = prompt_logprobs or [None] * len(prompt_ids)
    lps = [None if e is None else e[0][1] for e in entries]
    tops = None
    if with_top:
        tops = [None if e is None else e[1:] + e[:1] for e in entries]
    return completion_logprobs(tokenizer, prompt_ids, lps, 0, tops)


def join_logprobs(a: dict, b: dict) -> dict:
    """Two completion logprobs objects, a's tokens first."""
    top = None if a["top_logprobs"] is None else a["top_logprobs"] + b["top_logprobs"]
    return {"tokens": a["tokens"] + b["tokens"],
            "token_logprobs": a["token_logprobs"] + b["token_logprobs"], "top_logprobs": top,
            "text_offset": a["text_offset"] + b["text_offset"]}


def _chat_entry(s: str, lp: float) -> dict:
    return {"token": s, "logprob": lp, "bytes": list(s.encode("utf-8"))}


def chat_logprobs(tokenizer, token_ids, logprobs, tops=None, context=()) -> dict:
    """tops: per token, its [(token id, logprob)] alternatives (None: top_logprobs=0).
    context: as completion_logprobs."""
    out = []
    ctxs = _contexts(context, token_ids)
    for i, (t, lp) in enumerate(zip(token_ids, logprobs)):
        # the token and its alternatives share their context: decoded once
        alts = [] if tops is None else tops[i]
        texts = decode_each_after(tokenizer, ctxs[i], [[t]] + [[a] for a, _ in alts])
        e = _chat_entry(texts[0], lp)
        e["top_logprobs"] = [_chat_entry(s, alp) for s, (_, alp) in zip(texts[1:], alts)]
        out.append(e)
    return {"content": out}


def now() -> int:
    return int(time.time())
