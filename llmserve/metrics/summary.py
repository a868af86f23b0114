"""Serving metrics of one replay (definitions: docs/ARCHITECTURE "Metrics").

TTFT = first token - arrival; TPOT = (finish - first token) / (output tokens - 1);
ITL = gaps between consecutive tokens; E2E = finish - arrival. Throughput and goodput are per
second of makespan (workload start to the last finish). A request meets the SLOs when its
TTFT <= slo_ttft_s and its TPOT <= slo_tpot_s (a one-token request has no TPOT and meets that
half). Padding waste = padding slots / all token slots computed. KV fragmentation =
reserved-but-unused slots / reserved slots, averaged over sampled steps. MFU/MBU = model
FLOPs / bytes moved over the makespan, against the hardware's peak.
"""
from __future__ import annotations

import math

import numpy as np

PCTS = (50, 90, 99)


def _dist(name: str, x: np.ndarray, out: dict) -> None:
    x = x[np.isfinite(x)]
    if x.size == 0:
        for k in ("mean", *(f"p{p}" for p in PCTS)):
            out[f"{name}_{k}_s"] = math.nan
        return
    out[f"{name}_mean_s"] = float(x.mean())
    for p, v in zip(PCTS, np.percentile(x, PCTS)):
        out[f"{name}_p{p}_s"] = float(v)


def latencies(req: dict) -> dict[str, np.ndarray]:
    """Per-request TTFT, TPOT, E2E (seconds) of finished requests, and all ITL gaps."""
    n_out = req["output_len"]
    ttft = req["first_token"] - req["arrival"]
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(n_out > 1, (req["finish"] - req["first_token"]) / (n_out - 1), np.nan)
    return {"ttft": ttft, "tpot": tpot, "e2e": req["finish"] - req["arrival"], "itl": req["itl"]}


def summarize(result, *, slo_ttft_s: float, slo_tpot_s: float, num_kv_blocks: int,
              hardware=None) -> dict:
    """Every figure of one run (a workload replayed under one policy) as a flat dict."""
    req, st = result.requests, result.steps
    lat = latencies(req)
    makespan = max(result.end - result.start, 1e-12)
    n_fin = int(req["finish"].size)
    out = {"num_requests": result.num_requests, "num_finished": n_fin,
               "num_rejected": result.num_rejected, "num_aborted": result.num_aborted,
               "num_truncated": result.num_truncated, "makespan_s": float(makespan)}
    n_out = float(req["output_len"].sum())
    n_in = float(req["prompt_len"].sum())
    out["output_throughput_tok_s"] = n_out / makespan
    out["total_throughput_tok_s"] = (n_out + n_in) / makespan
    out["request_throughput"] = n_fin / makespan
    for name in ("ttft", "tpot", "itl", "e2e"):
        _dist(name, lat[name], out)
    ok = (lat["ttft"] <= slo_ttft_s) & ~(lat["tpot"] > slo_tpot_s)
    out["goodput_rps"] = float(ok.sum()) / makespan
    out["slo_attainment"] = float(ok.sum()) / result.num_requests if result.num_requests else 0.0
    tokens, pad = st["tokens"].sum(), st["padding"].sum()
    out["padding_waste"] = float(pad / (tokens + pad)) if tokens + pad else 0.0
    out["kv_utilization_mean"] = float(st["kv_used_blocks"].mean() / num_kv_blocks) \
        if st["kv_used_blocks"].size else 0.0
    out["kv_utilization_peak"] = float(st["kv_used_blocks"].max() / num_kv_blocks) \
        if st["kv_used_blocks"].size else 0.0
    res, used = st["kv_reserved_slots"], st["kv_used_slots"]
    m = res > 0
    out["kv_fragmentation"] = float(np.mean((res[m] - used[m]) / res[m])) if m.any() else 0.0
    out["preemptions"] = int(result.preemptions)
    out["prefix_hit_rate"] = float(req["cached_tokens"].sum() / n_in) if n_in else 0.0
    steps = max(result.scheduler_steps, 1)
    out["num_steps"] = int(st["step_time"].size)
    out["mean_batch_seqs"] = float(st["seqs"].mean()) if st["seqs"].size else 0.0
    out["scheduler_us_per_step"] = result.scheduler_ns / steps / 1e3
    out["scheduler_ms_per_request"] = result.scheduler_ns / max(n_fin, 1) / 1e6
    busy = float(st["step_time"].sum())
    out["busy_fraction"] = min(busy / makespan, 1.0)
    if hardware is not None:
        out["mfu"] = float(st["flops"].sum()) / (makespan * hardware.peak_flops)
        out["mbu"] = float(st["bytes"].sum()) / (makespan * hardware.mem_bandwidth)
    out["wall_s"] = result.wall_s
    out["simulated_requests_per_wall_s"] = result.num_requests / result.wall_s \
        if result.virtual and result.wall_s > 0 else None
    return out
