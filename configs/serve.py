"""OpenAI-compatible server: scripts/serve.py --config=configs/serve.py [--config.port=8001]."""
import importlib.util
import os

import ml_collections


def _engine_config():
    spec = importlib.util.spec_from_file_location(
        "_engine_config", os.path.join(os.path.dirname(__file__), "engine.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def get_config():
    c = ml_collections.ConfigDict()
    c.host = "127.0.0.1"                # loopback only unless told otherwise
    c.port = 8000                       # TCP port
    c.served_model_name = ""            # the `model` clients must send; "" = engine.model's name
    c.api_key = ""                      # required Bearer key ("" = none; prefer api_key_env: a
    #                                     key on the command line shows in `ps`)
    c.api_key_env = "LLMSERVE_API_KEY"  # environment variable read when api_key is ""
    c.max_body_bytes = 1 << 20          # larger request bodies get 413
    c.max_prompt_tokens = 0             # longer prompts get 400 (0 = only max_model_len)
    c.max_stop = 8                      # most stop strings per request
    c.body_timeout_s = 30.0             # a request body not received in full by then: 408
    c.max_waiting_requests = 1024       # scheduler waiting-queue bound: 429 beyond (0 = none)
    c.num_replicas = 0                  # 0: one engine in this process; N >= 1: N Ray actor
    #                                     replicas behind a router (llmserve.cluster.ray_backend)
    c.router_policy = "least_tokens"    # with num_replicas >= 1: a llmserve.cluster.router policy
    c.num_gpus_per_replica = 0.0        # Ray GPUs per replica (engine.tensor_parallel_size on
    #                                     GPUs, 0 on a CPU machine)
    c.max_replica_restarts = 3          # a dead replica is replaced this many times, then
    #                                     left dead (its requests always move to the others)
    c.replica_restart_backoff_s = 1.0   # wait before replacing a dead replica, doubled for
    #                                     each later restart of the same replica
    c.shutdown_grace_s = 30.0           # SIGTERM: in-flight requests may finish for this long
    c.backlog = 2048                    # listen backlog (500+ clients connect at once)
    c.log_level = "info"                # uvicorn log level
    c.access_log = False                # one log line per request (off: 500 streams flood it)
    c.engine = _engine_config()         # the engine (configs/engine.py), fixed at start
    c.engine.max_num_seqs = 128         # the tiny model on a CPU batches this many well
    c.engine.warmup = True              # compile the short-context step shapes before serving,
    #                                     so the first request does not pay for compilation
    return c
