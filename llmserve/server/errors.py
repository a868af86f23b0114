"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""
from __future__ import annotations

import json
import re

from fastapi.responses import JSONResponse

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
          500: "server_error", 503: "server_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": _TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)

    def sse(self) -> str:
        """The error as one server-sent event (a stream's headers are already sent)."""
        return f"data: {json.dumps(self.body())}\n\n"


# The engine's ValueErrors name the field first: "SamplingParams.top_p must be ...",
# "prompt token 3 is ...", "prompt (900 tokens) + max_tokens (200) = ... exceeds ...".
_SP_FIELD = re.compile(r"SamplingParams\.(\w+)")


def from_value_error(e: ValueError, prompt_param: str = "prompt") -> APIError:
    msg = str(e)
    m = _SP_FIELD.search(msg)
    if m:
        return APIError(400, msg, m.group(1), "invalid_value")
    if "exceeds max_model_len" in msg or "KV blocks" in msg:
        return APIError(400, msg, prompt_param, "context_length_exceeded")
    if msg.startswith(("prompt", "cannot encode")):
        return APIError(400, msg, prompt_param, "invalid_value")
    if msg.startswith("stop"):
        return APIError(400, msg, "stop", "invalid_value")
    return APIError(400, msg, None, "invalid_value")
