"""Servers for the tests: uvicorn in a thread on a free loopback port (in-process, so the
tiny model's compiled shapes are shared with the other tests), or scripts/serve.py as a
subprocess (signals)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import httpx

from llmserve.config import EngineConfig
from llmserve.engine import LLMEngine
from llmserve.server.api import ServerSettings, build_app
from llmserve.server.async_engine import AsyncLLMEngine

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    return s


class ThreadServer:
    """An app served by uvicorn in a background thread; .url, .stop()."""

    def __init__(self, app, server_cls=None, **server_kw):
        import uvicorn
        self.sock = free_socket()
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", timeout_keep_alive=5)
        self.server = (server_cls or uvicorn.Server)(config, **server_kw)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.02)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)


def tiny_async_engine(fault_hook=None, max_waiting_requests=0, **engine_kw):
    from engine_utils import tiny_model
    kw = dict(max_num_seqs=32, max_model_len=256, max_num_batched_tokens=256)
    kw.update(engine_kw)
    eng = LLMEngine(EngineConfig(**kw), model=tiny_model())
    return AsyncLLMEngine(eng, "tiny", max_waiting_requests=max_waiting_requests,
                          fault_hook=fault_hook)


def serve_in_thread(engine, **settings) -> ThreadServer:
    return ThreadServer(build_app(engine, ServerSettings(**settings)))


def wait_idle(engine, timeout_s: float = 30.0) -> dict:
    """Engine stats once nothing runs or waits (or at the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        st = engine.stats()
        if (st["num_running"] == 0 and st["num_waiting"] == 0) or time.monotonic() > deadline:
            return st
        time.sleep(0.05)


def start_subprocess_server(*overrides: str, log_path: str):
    """scripts/serve.py on a free port; -> (Popen, base url). Waits for /health."""
    s = free_socket()
    port = s.getsockname()[1]
    s.close()
    cmd = [sys.executable, os.path.join(REPO, "scripts", "serve.py"),
           f"--config={os.path.join(REPO, 'configs', 'serve.py')}", f"--config.port={port}",
           "--config.engine.warmup=False", *overrides]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: "
                               f"{open(log_path).read()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    proc.kill()
    raise RuntimeError("server did not become healthy")
