"""HTTP load generator for an OpenAI-compatible server, in the manner of `vllm bench serve`.

Requests come from any llmserve.workload source; arrivals are Poisson (a rate), the trace's
own times (scaled), or a fixed number of clients each sending its next request as soon as the
last one ends ("concurrency"). Every request streams, and the client measures what a user
sees: TTFT (send -> first text), ITL (gaps between text chunks), TPOT ((E2E - TTFT) /
(output tokens - 1), tokens from the server's usage), E2E, throughput and goodput (requests
meeting both SLOs, per second).
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import numpy as np

MODES = ("concurrency", "poisson", "trace")


@dataclasses.dataclass
class BenchRequest:
    prompt: str | list[int]
    max_tokens: int
    arrival_s: float = 0.0


@dataclasses.dataclass
class RequestResult:
    status: str = "error"          # ok | rejected (429) | error | timeout
    http_status: int = 0
    start_s: float = 0.0           # since the run's start
    ttft_s: float | None = None
    e2e_s: float | None = None
    itl_s: list[float] = dataclasses.field(default_factory=list)
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str = ""

    @property
    def tpot_s(self) -> float | None:
        if self.ttft_s is None or self.e2e_s is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


def requests_from_workload(workload, *, vocab_size: int = 256, max_tokens: int = 0,
                           seed: int = 0) -> list[BenchRequest]:
    """WorkloadRequests -> BenchRequests. Text prompts are sent as text, token ids as ids;
    a workload with lengths only (Azure trace, synthetic) gets seeded random ids below
    vocab_size (256: the byte tokenizer's plain bytes, no special ids)."""
    rng = np.random.default_rng(seed)
    out = []
    for w in workload:
        if w.prompt_text:
            prompt = w.prompt_text
        elif w.prompt_token_ids is not None:
            prompt = list(map(int, w.prompt_token_ids))
        else:
            prompt = rng.integers(0, vocab_size, max(1, w.prompt_len)).tolist()
        out.append(BenchRequest(prompt, max_tokens or max(1, w.output_len), w.arrival_s))
    return out


async def _one(client, url: str, payload: dict, headers: dict, t0: float, timeout_s: float,
               chat: bool) -> RequestResult:
    r = RequestResult()
    start = time.perf_counter()
    r.start_s = start - t0
    last = None
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream("POST", url, json=payload, headers=headers) as resp:
                r.http_status = resp.status_code
                if resp.status_code != 200:
                    body = (await resp.aread()).decode(errors="replace")
                    r.status = "rejected" if resp.status_code == 429 else "error"
                    r.error = body[:300]
                    return r
                async for line in resp.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[6:]
                    if data == "[DONE]":
                        break
                    obj = json.loads(data)
                    if "error" in obj:
                        r.error = obj["error"].get("message", "")[:300]
                        return r
                    if obj.get("usage"):
                        r.prompt_tokens = obj["usage"]["prompt_tokens"]
                        r.output_tokens = obj["usage"]["completion_tokens"]
                    for c in obj.get("choices", ()):
                        text = c["delta"].get("content") if chat else c.get("text")
                        if text:
                            now = time.perf_counter()
                            if last is None:
                                r.ttft_s = now - start
                            else:
                                r.itl_s.append(now - last)
                            last = now
                r.e2e_s = time.perf_counter() - start
                r.status = "ok"
    except TimeoutError:
        r.status, r.error = "timeout", f"no answer within {timeout_s} s"
    except Exception as e:  # a connection error is this request's failure, not the run's
        r.status, r.error = "error", f"{type(e).__name__}: {e}"[:300]
    return r


def arrival_times(requests: list[BenchRequest], mode: str, *, rate: float = 0.0,
                  time_scale: float = 1.0, seed: int = 0) -> np.ndarray:
    """When each request is sent, in s after the run's start: Poisson at `rate`, the trace's
    own times scaled by `time_scale` (from its first arrival), or all at once."""
    if mode == "poisson":
        gaps = np.random.default_rng(seed).exponential(1.0 / rate, len(requests))
        return np.cumsum(gaps) - gaps[0]
    if mode == "trace":
        base = min((r.arrival_s for r in requests), default=0.0)
        return np.array([(r.arrival_s - base) * time_scale for r in requests])
    return np.zeros(len(requests))


async def run(base_url: str, requests: list[BenchRequest], *, model: str, mode: str =
              "concurrency", concurrency: int = 0, rate: float = 0.0, time_scale: float = 1.0,
              endpoint: str = "completions", api_key: str = "", temperature: float = 0.0,
              ignore_eos: bool = True, timeout_s: float = 600.0,
              seed: int = 0) -> tuple[list[RequestResult], float]:
    """-> (results in request order, run duration in s).

    concurrency: mode "concurrency": the number of clients; other modes: a cap on requests in
    flight (0 = none). rate: mode "poisson", requests/s. time_scale: mode "trace", multiplies
    the trace's inter-arrival times."""
    import httpx
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if endpoint not in ("completions", "chat"):
        raise ValueError(f"endpoint must be 'completions' or 'chat', got {endpoint!r}")
    if mode == "concurrency" and concurrency < 1:
        raise ValueError(f"concurrency must be >= 1 in mode 'concurrency', got {concurrency}")
    if mode == "poisson" and not rate > 0:
        raise ValueError(f"rate must be > 0 in mode 'poisson', got {rate}")
    chat = endpoint == "chat"
    url = base_url.rstrip("/") + ("/v1/chat/completions" if chat else "/v1/completions")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    arrivals = arrival_times(requests, mode, rate=rate, time_scale=time_scale, seed=seed)

    def payload(req: BenchRequest) -> dict:
        p = {"model": model, "max_tokens": req.max_tokens, "temperature": temperature,
             "ignore_eos": ignore_eos, "stream": True,
             "stream_options": {"include_usage": True}}
        if chat:
            text = req.prompt if isinstance(req.prompt, str) else "".join(
                chr(t) for t in req.prompt if 32 <= t < 127)
            p["messages"] = [{"role": "user", "content": text}]
        else:
            p["prompt"] = req.prompt
        return p

    results: list[RequestResult | None] = [None] * len(requests)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(timeout_s)) as client:
        t0 = time.perf_counter()
        if mode == "concurrency":
            it = iter(range(len(requests)))

            async def worker():
                for i in it:
                    results[i] = await _one(client, url, payload(requests[i]), headers, t0,
                                            timeout_s, chat)
            await asyncio.gather(*(worker() for _ in range(min(concurrency, len(requests)))))
        else:
            sem = asyncio.Semaphore(concurrency) if concurrency > 0 else None

            async def timed(i):
                await asyncio.sleep(max(0.0, t0 + arrivals[i] - time.perf_counter()))
                if sem is None:
                    results[i] = await _one(client, url, payload(requests[i]), headers, t0,
                                            timeout_s, chat)
                    return
                async with sem:
                    results[i] = await _one(client, url, payload(requests[i]), headers, t0,
                                            timeout_s, chat)
            await asyncio.gather(*(timed(i) for i in range(len(requests))))
        duration = time.perf_counter() - t0
    return results, duration


def _dist(name: str, x, out: dict, scale: float = 1e3) -> None:
    x = np.asarray([v for v in x if v is not None], dtype=float) * scale
    for stat, f in (("mean", np.mean), ("p50", np.median), ("p99", lambda a: np.percentile(a, 99))):
        out[f"{name}_{stat}_ms"] = float(f(x)) if x.size else None


def summarize(results: list[RequestResult], duration_s: float, *, slo_ttft_s: float,
              slo_tpot_s: float) -> dict:
    ok = [r for r in results if r.status == "ok"]
    s = {"num_requests": len(results), "completed": len(ok),
         "rejected_429": sum(r.status == "rejected" for r in results),
         "failed": sum(r.status == "error" for r in results),
         "timed_out": sum(r.status == "timeout" for r in results),
         "duration_s": duration_s}
    out_toks = sum(r.output_tokens for r in ok)
    in_toks = sum(r.prompt_tokens for r in ok)
    good = sum(1 for r in ok if r.ttft_s is not None and r.ttft_s <= slo_ttft_s
               and (r.tpot_s is None or r.tpot_s <= slo_tpot_s))
    s.update(total_input_tokens=in_toks, total_output_tokens=out_toks,
             request_throughput=len(ok) / duration_s if duration_s else 0.0,
             output_throughput=out_toks / duration_s if duration_s else 0.0,
             total_token_throughput=(in_toks + out_toks) / duration_s if duration_s else 0.0,
             goodput=good / duration_s if duration_s else 0.0,
             slo_ttft_s=slo_ttft_s, slo_tpot_s=slo_tpot_s)
    _dist("ttft", [r.ttft_s for r in ok], s)
    _dist("tpot", [r.tpot_s for r in ok], s)
    _dist("itl", [g for r in ok for g in r.itl_s], s)
    _dist("e2e", [r.e2e_s for r in ok], s)
    errors = sorted({r.error for r in results if r.status in ("error", "timeout")})
    s["errors"] = errors[:10]
    return s


def format_table(s: dict, extra: dict | None = None) -> str:
    """The client-side table, `vllm bench serve` style."""
    def fmt(v, spec=".2f"):
        return "n/a" if v is None else format(v, spec)
    rows = [("Requests (sent)", s["num_requests"]), ("Completed", s["completed"]),
            ("Rejected (429)", s["rejected_429"]), ("Failed", s["failed"]),
            ("Timed out (hung)", s["timed_out"]),
            ("Duration (s)", fmt(s["duration_s"])),
            ("Input tokens", s["total_input_tokens"]),
            ("Output tokens", s["total_output_tokens"]),
            ("Request throughput (req/s)", fmt(s["request_throughput"])),
            ("Output token throughput (tok/s)", fmt(s["output_throughput"])),
            ("Total token throughput (tok/s)", fmt(s["total_token_throughput"])),
            (f"Goodput (req/s, TTFT<={s['slo_ttft_s']}s, TPOT<={s['slo_tpot_s']}s)",
             fmt(s["goodput"]))]
    for name, label in (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2e", "E2E")):
        for stat in ("mean", "p50", "p99"):
            rows.append((f"{label} {stat} (ms)", fmt(s[f"{name}_{stat}_ms"])))
    for k, v in (extra or {}).items():
        rows.append((k, v))
    w = max(len(k) for k, _ in rows)
    line = "=" * (w + 14)
    body = "\n".join(f"{k:<{w}}  {v:>12}" for k, v in rows)
    return f"{line}\n{'Serving benchmark (client side)':^{w + 14}}\n{line}\n{body}\n{line}"


def scrape_metrics(base_url: str, timeout_s: float = 10.0, settle_s: float = 10.0) -> dict:
    """The server's engine gauges from /metrics, once no request is running or waiting (or
    after settle_s): what a leak check reads."""
    import httpx
    deadline = time.monotonic() + settle_s
    vals: dict = {}
    while True:
        text = httpx.get(base_url.rstrip("/") + "/metrics", timeout=timeout_s).text
        vals = {}
        for line in text.splitlines():
            if line.startswith("llmserve_") and " " in line and "{" not in line:
                k, v = line.rsplit(" ", 1)
                vals[k] = float(v)
        busy = vals.get("llmserve_num_requests_running", 0) + vals.get(
            "llmserve_num_requests_waiting", 0)
        if not busy or time.monotonic() > deadline:
            return vals
        time.sleep(0.2)


def run_from_config(cfg, workdir: str) -> tuple[dict, str]:
    """scripts/bench_serving.py: workload -> requests -> run -> (summary, table); the summary
    and every request's timings go to WORKDIR/bench_serving.json."""
    import logging
    import os

    from llmserve.bench import load_workload
    from llmserve.metrics import report
    log = logging.getLogger("llmserve.bench_serving")
    logging.getLogger("httpx").setLevel(logging.WARNING)     # one line per request otherwise
    c = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    wl, _ = load_workload({"workload": c["workload"],
                           "engine": {"max_model_len": c["max_model_len"]},
                           "model": {"path": c.get("tokenizer_path", "")}})
    reqs = requests_from_workload(wl, vocab_size=c["vocab_size"], max_tokens=c["max_tokens"],
                                  seed=c["workload"]["seed"])
    api_key = os.environ.get(c["api_key_env"], "") if c["api_key_env"] else ""
    log.info("%d requests, mode=%s, concurrency=%d, rate=%.2f -> %s", len(reqs), c["mode"],
             c["concurrency"], c["rate"], c["base_url"])
    results, duration = asyncio.run(run(
        c["base_url"], reqs, model=c["model"], mode=c["mode"], concurrency=c["concurrency"],
        rate=c["rate"], time_scale=c["time_scale"], endpoint=c["endpoint"], api_key=api_key,
        temperature=c["temperature"], ignore_eos=c["ignore_eos"], timeout_s=c["timeout_s"],
        seed=c["workload"]["seed"]))
    s = summarize(results, duration, slo_ttft_s=c["slo"]["ttft_s"], slo_tpot_s=c["slo"]["tpot_s"])
    extra = {}
    if c["check_metrics"]:
        m = scrape_metrics(c["base_url"])
        s["server_after"] = m
        extra = {"Server after: running": int(m.get("llmserve_num_requests_running", -1)),
                 "Server after: waiting": int(m.get("llmserve_num_requests_waiting", -1)),
                 "Server after: KV blocks used": int(m.get("llmserve_kv_blocks_used", -1)),
                 "Server after: KV blocks free/total":
                     f"{int(m.get('llmserve_kv_blocks_free', -1))}/"
                     f"{int(m.get('llmserve_kv_blocks_total', -1))}"}
    table = format_table(s, extra)
    report.write_json(os.path.join(workdir, "bench_serving.json"), {
        "config": c, "summary": s,
        "requests": [dataclasses.asdict(r) | {"tpot_s": r.tpot_s} for r in results]})
    return s, table
