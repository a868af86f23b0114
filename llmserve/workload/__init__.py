"""Workloads: loaders, synthetic generators, replay, and the JSONL request log.

A workload is a list of `WorkloadRequest`s sorted by arrival time. Lengths are always known;
token ids and text only when the source has them (the Azure trace has neither), in which case
replay draws seeded random token ids of the right length.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(slots=True)
class WorkloadRequest:
    arrival_s: float                          # seconds after the workload's start
    prompt_len: int
    output_len: int                           # the true (trace) output length, >= 1
    prompt_token_ids: list[int] | None = None
    prompt_text: str | None = None


def with_arrivals(requests: list[WorkloadRequest], arrivals) -> list[WorkloadRequest]:
    """Copies of `requests` with the given arrival times (for datasets that have none)."""
    if len(arrivals) != len(requests):
        raise ValueError(f"got {len(arrivals)} arrival times for {len(requests)} requests")
    return [dataclasses.replace(r, arrival_s=float(a)) for r, a in zip(requests, arrivals)]


def summarize(requests: list[WorkloadRequest]) -> dict:
    """Lengths and rate of a workload, for logs and results.json."""
    import numpy as np
    if not requests:
        return {"num_requests": 0}
    p = np.array([r.prompt_len for r in requests], float)
    o = np.array([r.output_len for r in requests], float)
    span = requests[-1].arrival_s - requests[0].arrival_s
    return {"num_requests": len(requests), "prompt_len_mean": float(p.mean()),
                "prompt_len_p99": float(np.percentile(p, 99)), "output_len_mean": float(o.mean()),
                "output_len_p99": float(np.percentile(o, 99)),
                "output_len_cv": float(o.std() / o.mean()), "duration_s": float(span),
                "rate_rps": float((len(requests) - 1) / span) if span > 0 else float("inf")}
