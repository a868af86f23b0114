"""The server's edges (issue 18): a client gone while sending its body, a stalled body, a
non-ASCII API key in either encoding, and the messages of hostile values (each a 400 naming
its field). A mock-runner engine: nothing here needs the model's tokens."""
import json
import logging
import socket
import time

import httpx
import pytest
from server_utils import serve_in_thread, wait_idle

from llmserve.config import EngineConfig
from llmserve.engine import LLMEngine
from llmserve.model.config import get_preset
from llmserve.runner.mock_runner import MockRunner
from llmserve.server.async_engine import AsyncLLMEngine
from llmserve.tokenizer import ByteTokenizer

KEY = "clé-ü-秘密"


def _mock_engine():
    eng = LLMEngine(EngineConfig(max_num_seqs=8, max_model_len=256, num_kv_blocks=64),
                    runner=MockRunner(256), model=(get_preset("tiny"), None, ByteTokenizer()))
    return AsyncLLMEngine(eng, "mock")


@pytest.fixture(scope="module")
def srv():
    engine = _mock_engine()
    s = serve_in_thread(engine, api_key=KEY, body_timeout_s=1.0)
    s.engine = engine
    yield s
    s.stop()


def _auth(key_bytes=KEY.encode()):
    return {b"authorization": b"Bearer " + key_bytes}


def _counter(url, name, **labels):
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    total = 0.0
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    assert want is not None
    return total


def _raw(srv, head: bytes, body: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    s.sendall(head + body)
    return s


def _head(n: int) -> bytes:
    return (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + KEY.encode() + b"\r\n"
            b"Content-Length: " + str(n).encode() + b"\r\n\r\n")


def test_disconnect_during_the_body_is_a_client_event(srv, caplog):
    before_500 = _counter(srv.url, "llmserve_http_responses_total", status="500")
    before = _counter(srv.url, "llmserve_http_client_disconnects_total", stage="body")
    with caplog.at_level(logging.INFO, logger="llmserve"):
        for _ in range(20):
            _raw(srv, _head(1000), b'{"model": "mock", "pro').close()
        deadline = time.monotonic() + 10
        while _counter(srv.url, "llmserve_http_client_disconnects_total",
                       stage="body") < before + 20 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert _counter(srv.url, "llmserve_http_client_disconnects_total", stage="body") == \
        before + 20
    assert _counter(srv.url, "llmserve_http_responses_total", status="500") == before_500
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_stalled_body_gets_408_and_the_connection_closes(srv):
    t0 = time.monotonic()
    socks = [_raw(srv, _head(500), b'{"model": "mock"') for _ in range(10)]
    for s in socks:
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break                      # the server closed it
            data += chunk
        assert data.startswith(b"HTTP/1.1 408"), data[:80]
        assert b'"request_timeout"' in data
        s.close()
    assert time.monotonic() - t0 < 8        # body_timeout_s=1, not forever
    assert wait_idle(srv.engine)["num_running"] == 0


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
def test_non_ascii_api_key_in_either_encoding(srv, encoding):
    key = "clé-ü" if encoding == "latin-1" else KEY     # latin-1 has no form of 秘密
    s2 = serve_in_thread(_mock_engine(), api_key=key)
    try:
        ok = httpx.get(s2.url + "/v1/models", headers=_auth(key.encode(encoding)))
        assert ok.status_code == 200, ok.text
        bad = httpx.get(s2.url + "/v1/models", headers=_auth(key.encode(encoding) + b"x"))
        assert bad.status_code == 401
    finally:
        s2.stop()


@pytest.mark.parametrize("body,param,words", [
    ({"prompt": "ab\ud800c"}, "prompt", "lone surrogate U+D800"),
    ({"prompt": "x", "top_k": 2**31}, "top_k", "less than or equal to 2147483647"),
    ({"prompt": "x", "temperature": float("inf")}, "temperature", "finite number"),
    ({"prompt": "x", "temperature": float("nan")}, "temperature", "finite number"),
    ({"prompt": "x", "stream": True, "stream_options": {"include_usage": True, "x": 1}},
     "stream_options.x", "unsupported parameter 'stream_options.x'"),
    ({"prompt": [1, 2, 2**31]}, "prompt", "prompt.2"),
    ({"prompt": "x", "seed": 2**32}, "seed", "seed"),
    ({"prompt": "x", "stop_token_ids": [-1]}, "stop_token_ids", "stop_token_ids.0"),
    ({"prompt": "x", "user": "\udfff"}, "user", "lone surrogate"),
])
def test_hostile_values_get_a_400_naming_the_field(srv, body, param, words):
    raw = json.dumps({"model": "mock", **body}).encode()     # Infinity/NaN as JSON allows
    r = httpx.post(srv.url + "/v1/completions", content=raw, headers=_auth())
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and words in err["message"], err


def test_5000_digit_integer_names_the_field_without_the_python_hint(srv):
    raw = b'{"model": "mock", "prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}"
    r = httpx.post(srv.url + "/v1/completions", content=raw, headers=_auth())
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "max_tokens"
    assert "5000 digits" in err["message"] and "set_int_max_str_digits" not in err["message"]
