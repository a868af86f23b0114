"""Prometheus metrics of one server: a registry per app (not the process-global one), so tests
can build many apps in one process. Engine gauges are read from EngineClient.stats() when
/metrics is scraped; latencies are observed as requests finish (engine-side clock: from the
engine thread accepting the request, so HTTP and queueing before it are not included)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0)

_GAUGES = (("num_running", "llmserve_num_requests_running", "Requests running in the engine"),
           ("num_waiting", "llmserve_num_requests_waiting", "Requests waiting to be scheduled"),
           ("kv_blocks_total", "llmserve_kv_blocks_total", "KV cache blocks in the pool"),
           ("kv_blocks_used", "llmserve_kv_blocks_used", "KV cache blocks owned by requests"),
           ("kv_blocks_free", "llmserve_kv_blocks_free",
            "KV cache blocks free (including cached free blocks)"),
           ("kv_blocks_cached", "llmserve_kv_blocks_cached",
            "Free KV cache blocks that still hold a cached prefix"))
_COUNTERS = (("num_preemptions", "llmserve_preemptions", "Preemptions (recompute)"),
             ("prefix_hit_tokens", "llmserve_prefix_cache_hit_tokens",
              "Prompt tokens served from the prefix cache"),
             ("num_steps", "llmserve_engine_steps", "Engine steps run"),
             ("num_aborted", "llmserve_requests_aborted", "Requests aborted in the engine"),
             ("num_failed", "llmserve_requests_failed", "Requests whose processing failed"))


class _EngineCollector:
    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        st = self.engine.stats()
        for key, name, doc in _GAUGES:
            if key in st:
                yield GaugeMetricFamily(name, doc, value=st[key])
        for key, name, doc in _COUNTERS:
            if key in st:
                yield CounterMetricFamily(name, doc, value=st[key])


class ServerMetrics:
    def __init__(self, engine):
        r = self.registry = CollectorRegistry()
        r.register(_EngineCollector(engine))
        self.ttft = Histogram("llmserve_time_to_first_token_seconds", "TTFT", registry=r,
                              buckets=_LATENCY_BUCKETS)
        self.tpot = Histogram("llmserve_time_per_output_token_seconds", "TPOT", registry=r,
                              buckets=_LATENCY_BUCKETS)
        self.e2e = Histogram("llmserve_e2e_request_latency_seconds", "E2E latency", registry=r,
                             buckets=_LATENCY_BUCKETS)
        self.prompt_tokens = Counter("llmserve_prompt_tokens", "Prompt tokens of finished "
                                     "requests", registry=r)
        self.output_tokens = Counter("llmserve_generation_tokens", "Output tokens of finished "
                                     "requests", registry=r)
        self.finished = Counter("llmserve_requests_finished", "Requests finished, by reason",
                                ["finish_reason"], registry=r)
        self.http = Counter("llmserve_http_responses", "HTTP responses by endpoint and status",
                            ["endpoint", "status"], registry=r)
        # A client event, not an error of ours: kept out of the 5xx count.
        self.disconnects = Counter(
            "llmserve_http_client_disconnects", "Clients gone before their response, by stage "
            "(body: while sending the body; waiting: before the first token)",
            ["endpoint", "stage"], registry=r)

    def observe(self, out) -> None:
        """One finished RequestOutput."""
        m = out.metrics
        if m.ttft is not None:
            self.ttft.observe(m.ttft)
        if m.tpot is not None:
            self.tpot.observe(m.tpot)
        if m.e2e is not None:
            self.e2e.observe(m.e2e)
        self.prompt_tokens.inc(len(out.prompt_token_ids))
        self.output_tokens.inc(len(out.token_ids))
        self.finished.labels(out.finish_reason or "unknown").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
