"""Start a server from a configs/serve.py ConfigDict: the engine, the app, uvicorn, and the
graceful SIGTERM drain (new requests get 503, in-flight requests may finish within the grace
period, then the rest are aborted: each gets an error event, not a cut connection)."""
from __future__ import annotations

import asyncio
import logging
import os
import signal

from llmserve.server.api import ServerSettings, build_app

log = logging.getLogger("llmserve.server")


def build_engine_client(cfg):
    """AsyncLLMEngine for cfg.engine (fixed at start: no request can choose the model)."""
    from llmserve.config import EngineConfig
    from llmserve.engine import LLMEngine
    from llmserve.server.async_engine import AsyncLLMEngine
    ec = EngineConfig.from_dict(cfg.engine)
    name = cfg.served_model_name or os.path.basename(os.path.normpath(ec.model))
    if cfg.get("num_replicas", 0):
        # N replicas on Ray behind the router in this process (the same EngineClient contract).
        from llmserve.cluster.ray_backend import RayRouter, RayRouterClient
        router = RayRouter(ec, cfg.num_replicas, cfg.router_policy,
                           num_gpus_per_replica=cfg.num_gpus_per_replica,
                           max_restarts=cfg.get("max_replica_restarts", 3),
                           restart_backoff_s=cfg.get("replica_restart_backoff_s", 1.0))
        return RayRouterClient(router, name, max_waiting_requests=cfg.max_waiting_requests), ec
    return AsyncLLMEngine(LLMEngine(ec), name, max_waiting_requests=cfg.max_waiting_requests), ec


def settings_from_config(cfg) -> ServerSettings:
    key = cfg.api_key or (os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else "")
    return ServerSettings(api_key=key, max_body_bytes=cfg.max_body_bytes,
                          max_prompt_tokens=cfg.max_prompt_tokens, max_stop=cfg.max_stop,
                          body_timeout_s=cfg.get("body_timeout_s", 30.0))


def parse_flags_or_exit(argv: list[str]) -> list[str]:
    """app.run's flags_parser: an override of a field the config lacks
    (--config.engine.nonexistent=1) raises an ml_collections AttributeError inside absl's
    parser, which app.run shows as a traceback. Exit with one line naming it instead."""
    from absl import flags
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:          # what app.run would print, without its usage dump
        raise SystemExit(f"flags parsing error: {e}") from None
    except (AttributeError, KeyError) as e:
        key = str(e).strip("\"'")
        args = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
        hit = next((a for a in args if key in a[2:].split(".")), None)
        where = f"{hit}: " if hit else ""
        raise SystemExit(f"{where}unknown config field {key!r} (the fields and their meaning "
                         "are in the --config file, configs/serve.py by default)") from None


def _drain_server_class():
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn.Server whose first SIGTERM/SIGINT drains the engine before exiting."""

        def __init__(self, config, engine, grace_s: float):
            super().__init__(config)
            self.engine = engine
            self.grace_s = grace_s
            self._draining = False
            self._loop = None

        async def serve(self, sockets=None):
            self._loop = asyncio.get_running_loop()
            await super().serve(sockets)

        def handle_exit(self, sig, frame):
            if self._draining or self._loop is None:
                self.force_exit = self._draining
                self.should_exit = True
                return
            self._draining = True
            log.info("signal %s: draining (grace %.1f s)", signal.Signals(sig).name,
                     self.grace_s)
            self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain()))

        async def _drain(self):
            # The listening sockets stay open: a new request gets the 503 the README
            # promises (the app refuses it while the engine drains), not a refused
            # connection, until the process exits.
            await self.engine.shutdown(self.grace_s)
            # Let the response tasks write their last events before uvicorn closes them.
            for _ in range(200):
                if not self.server_state.tasks:
                    break
                await asyncio.sleep(0.01)
            self.should_exit = True

    return DrainingServer


def serve(cfg) -> None:
    """Run until SIGTERM/SIGINT (blocking)."""
    import uvicorn

    from llmserve.server.chat import load_chat_template
    engine, ec = build_engine_client(cfg)
    ckpt = ec.model if os.path.isdir(ec.model) else None
    settings = settings_from_config(cfg)
    app = build_app(engine, settings, load_chat_template(ckpt, engine.tokenizer))
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: reachable beyond this machine%s", cfg.host,
                    "" if settings.api_key else ", and without an API key")
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level,
                            backlog=cfg.backlog, timeout_keep_alive=5,
                            access_log=cfg.access_log)
    server = _drain_server_class()(config, engine, cfg.shutdown_grace_s)
    log.info("serving %r on http://%s:%d", engine.model_name, cfg.host, cfg.port)
    server.run()
