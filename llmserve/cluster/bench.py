"""The cluster benchmark behind scripts/cluster_bench.py: `run(config) -> results dict`.

mode=compare: every router policy x every placement (centralized, distributed) replays the
identical request stream on a fresh simulated cluster; optionally each placement again at
several decision costs (`decision_sweep`) and predicted_work with several predictors
(`predictors`). mode=scale: one large run, timed, with where the wall time goes (the
simulator's own split, and optionally cProfile's top functions).
"""
from __future__ import annotations

import logging
import os
import platform
import time

import numpy as np

from llmserve.cluster.cluster_sim import ClusterConfig, ClusterSim, summarize_cluster
from llmserve.cluster.placement import PlacementConfig
from llmserve.metrics import report
from llmserve.metrics.summary import latencies
from llmserve.workload import summarize as workload_summary

log = logging.getLogger(__name__)

MODES = ("compare", "scale")
WORKLOADS = ("azure_csv", "azure_resampled", "shared_prefix", "synthetic", "jsonl")

COLUMNS = (
    ("goodput_rps", "goodput req/s", 1, "{:.1f}"),
    ("request_throughput", "req/s", 1, "{:.1f}"),
    ("ttft_p50_s", "TTFT p50 ms", 1e3, "{:.0f}"),
    ("ttft_p99_s", "TTFT p99 ms", 1e3, "{:.0f}"),
    ("tpot_p99_s", "TPOT p99 ms", 1e3, "{:.1f}"),
    ("e2e_mean_s", "E2E mean s", 1, "{:.2f}"),
    ("slo_attainment", "SLO met", 1, "{:.1%}"),
    ("load_cv_mean", "load CV", 1, "{:.3f}"),
    ("prefix_hit_rate", "prefix hit", 1, "{:.1%}"),
    ("router_wait_mean_s", "router wait ms", 1e3, "{:.2f}"),
    ("preemptions", "preempt", 1, "{:d}"),
)


def _d(config) -> dict:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def _names(s, field) -> list[str]:
    out = [x.strip() for x in (s.split(",") if isinstance(s, str) else s) if str(x).strip()]
    if not out and field:
        raise ValueError(f"{field} must name at least one entry")
    return out


def cluster_config(cfg: dict, policy: str, placement: str, **over) -> ClusterConfig:
    c = dict(cfg["cluster"])
    pl = dict(cfg["placement"])
    pl["placement"] = placement
    if placement == "centralized":
        pl["num_routers"] = 1
        pl["staleness_s"] = 0.0
    pl.update(over.pop("placement_over", {}))
    router = dict(cfg.get("router", {}))
    c.update(policy=policy, placement=PlacementConfig.from_dict(pl),
             predictor=over.pop("predictor", router.pop("predictor", "oracle")),
             router_options={k: v for k, v in router.items() if v is not None})
    c.update(over)
    return ClusterConfig.from_dict(c)


def load_workload(cfg: dict, num_replicas: int) -> tuple[list, dict]:
    """(requests, description) from the `workload` section; the target rate is
    workload.rate, or rate_per_replica x replicas."""
    from llmserve.bench import load_workload as bench_load
    from llmserve.workload import synthetic
    w = cfg["workload"]
    kind = w["kind"]
    if kind not in WORKLOADS:
        raise ValueError(f"workload.kind must be one of {WORKLOADS}, got {kind!r}")
    rate = w.get("rate") or w.get("rate_per_replica", 0.0) * num_replicas
    max_len = cfg["cluster"]["engine"]["max_model_len"]
    n = w.get("num_requests") or 0
    seed = w.get("seed", 0)
    desc = {"kind": kind}
    if kind in ("azure_csv", "azure_resampled"):  # a missing file is an error, never a
        from llmserve.workload import loaders     # stand-in (kind=synthetic asks for one)
        src = loaders.load_azure_csv(loaders.workload_path(w))
    if kind == "azure_csv":
        reqs = src[:n] if n else src
        span = reqs[-1].arrival_s - reqs[0].arrival_s
        base = (len(reqs) - 1) / span
        desc["trace_rate_rps"] = base
        desc["rate_scale"] = (rate / base) if rate else 1.0
    elif kind == "azure_resampled":
        if not rate:
            raise ValueError("workload.rate or workload.rate_per_replica must be > 0 for "
                             "azure_resampled")
        n = n or int(round(rate * w.get("duration_s", 60.0)))
        reqs = synthetic.resampled_workload(src, n, rate, seed=seed)
    elif kind == "shared_prefix":
        n = n or int(round(rate * w.get("duration_s", 60.0)))
        reqs = synthetic.shared_prefix_workload(
            n, rate, num_prefixes=w["num_prefixes"], prefix_len=w["prefix_len"],
            question_len=tuple(w["question_len"]), popularity_zipf=w["popularity_zipf"],
            seed=seed, vocab_size=32000, max_model_len=max_len)
    else:
        sub = {"workload": {**w, "kind": kind, "rate": rate or w.get("rate") or 1.0,
                            "num_requests": n},
               "engine": {"max_model_len": max_len}}
        if kind == "synthetic":
            sub["workload"]["synthetic"] = {"lengths": "azure_lognormal"}
        reqs, base = bench_load(sub)
        desc["file_rate_rps"] = base
        desc["rate_scale"] = (rate / base) if rate and kind == "jsonl" else 1.0
    desc.setdefault("rate_scale", 1.0)
    desc["target_rate_rps"] = rate or None
    desc.update(workload_summary(reqs))
    return reqs, desc


def _run_one(cfg: dict, reqs, desc, name: str, policy: str, placement: str, slo, **over):
    cc = cluster_config(cfg, policy, placement, **over)
    t0 = time.perf_counter()
    sim = ClusterSim(cc)
    res = sim.run(reqs, rate_scale=desc["rate_scale"], label=name)
    m = summarize_cluster(res, slo_ttft_s=slo[0], slo_tpot_s=slo[1])
    m["setup_s"] = time.perf_counter() - t0 - res.wall_s
    m["routers"] = res.routers
    m["profile"] = res.profile
    log.info("%-36s goodput %.1f req/s, TTFT p99 %.0f ms, load CV %.3f, prefix hit %.1f%%, "
             "%.0f sim req/wall-s", name, m["goodput_rps"], 1e3 * (m["ttft_p99_s"] or np.nan),
             m["load_cv_mean"], 100 * m["prefix_hit_rate"], m["simulated_requests_per_wall_s"])
    return m, res


def _machine() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"host": platform.node(), "cpu_count": os.cpu_count(), "python":
            platform.python_version(), "loadavg_at_end": load,
            "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def run(config) -> dict:
    cfg = _d(config)
    mode = cfg.get("mode", "compare")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    from llmserve.cluster.cluster_sim import parse_replicas
    nrep = len(parse_replicas(cfg["cluster"]["replicas"]))
    slo = (cfg["slo"]["ttft_s"], cfg["slo"]["tpot_s"])
    reqs, desc = load_workload(cfg, nrep)
    log.info("workload %s: %d requests, prompt mean %.0f, output mean %.0f, offered %.1f req/s "
             "on %d replicas", desc["kind"], desc["num_requests"], desc["prompt_len_mean"],
             desc["output_len_mean"], desc["rate_rps"] * desc["rate_scale"], nrep)
    out = {"config": cfg, "mode": mode, "workload": desc, "num_replicas": nrep,
           "rows": {}, "machine": _machine()}
    if mode == "scale":
        return _scale(cfg, reqs, desc, slo, out)
    policies = _names(cfg["policies"], "policies")
    placements = _names(cfg["placements"], "placements")
    sweep_s = str(cfg.get("decision_sweep") or "")
    try:
        sweep = [float(x) for x in _names(sweep_s, None)]
    except ValueError:
        sweep = [-1.0]
    if any(not x >= 0 for x in sweep):
        raise ValueError("decision_sweep must be comma-separated seconds >= 0 (router "
                         f"decision costs), got {sweep_s!r}")
    predictors = _names(str(cfg.get("predictors") or ""), None)
    series = {}
    cluster_config(cfg, policies[0], placements[0])     # config errors before any run
    for pl in placements:
        for p in policies:
            specs = [None]
            if p == "predicted_work" and predictors:
                specs = predictors
            for spec in specs:
                name = f"{p}/{pl}" if spec is None else f"{p}[{spec}]/{pl}"
                over = {} if spec is None else {"predictor": spec}
                m, res = _run_one(cfg, reqs, desc, name, p, pl, slo, **over)
                out["rows"][name] = m
                series[name] = _series(res)
    for d in sweep:
        for pl in placements:
            for p in policies:
                name = f"{p}/{pl}@{d * 1e3:g}ms"
                m, _ = _run_one(cfg, reqs, desc, name, p, pl, slo,
                                placement_over={"decision_base_s": d})
                m["decision_base_s"] = d
                out.setdefault("decision_sweep", {})[name] = m
    out["series"] = series
    out["machine"] = _machine()
    return out


def _series(res) -> dict:
    """What the figures need from a run, small enough for the JSON."""
    lat = latencies(dict(res.requests, itl=np.zeros(0)))
    s = res.samples
    out = s["outstanding"]
    keep = min(out.shape[1], 8)
    return {"ttft": lat["ttft"], "tpot": lat["tpot"], "e2e": lat["e2e"], "t": s["t"],
            "outstanding_first": out[:, :keep].T,
            "outstanding_min": out.min(axis=1) if out.size else np.zeros(0),
            "outstanding_median": np.median(out, axis=1) if out.size else np.zeros(0),
            "outstanding_max": out.max(axis=1) if out.size else np.zeros(0)}


def _scale(cfg, reqs, desc, slo, out) -> dict:
    policy = _names(cfg["policies"], "policies")[0]
    placement = _names(cfg["placements"], "placements")[0]
    name = f"{policy}/{placement}"
    prof = None
    if cfg.get("profile"):
        import cProfile
        prof = cProfile.Profile()
        prof.enable()
    m, res = _run_one(cfg, reqs, desc, name, policy, placement, slo)
    if prof is not None:
        prof.disable()
        import io
        import pstats
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(20)
        out["cprofile_top"] = buf.getvalue()
    out["rows"][name] = m
    out["steps_total"] = sum(r["steps"] for r in res.replicas)
    out["machine"] = _machine()
    return out


# ---- output ------------------------------------------------------------------------------------
def format_results(results: dict) -> str:
    lines = []
    w = results["workload"]
    lines.append(f"workload {w['kind']}: {w['num_requests']} requests, offered "
                 f"{w['rate_rps'] * w['rate_scale']:.1f} req/s on {results['num_replicas']} "
                 f"replicas")
    lines.append(report.table(results["rows"], baseline=None, columns=COLUMNS,
                              label="policy/placement"))
    if results.get("decision_sweep"):
        lines.append("")
        lines.append("decision cost sweep (decision_base_s per decision):")
        lines.append(report.table(results["decision_sweep"], baseline=None, columns=COLUMNS,
                                  label="policy/placement@cost"))
    if results["mode"] == "scale":
        for name, m in results["rows"].items():
            p = m["profile"]
            lines.append(f"\n{name}: {m['num_requests']} requests on {results['num_replicas']} "
                         f"replicas, {results['steps_total']} replica steps, wall "
                         f"{m['wall_s']:.1f} s (+ {m['setup_s']:.1f} s setup) = "
                         f"{m['simulated_requests_per_wall_s']:.0f} simulated req/wall-s")
            lines.append("wall time: " + ", ".join(
                f"{k[:-2]} {v:.1f} s ({v / p['wall_s']:.0%})" for k, v in p.items()
                if k not in ("wall_s", "process_cpu_s") and isinstance(v, float)))
            if p.get("num_workers"):
                lines.append(f"({p['num_workers']} worker processes: scheduler and cost model "
                             f"are seconds summed over them; driver_wait is the driver's "
                             f"wall time waiting for them); CPU s per worker "
                             f"{', '.join(f'{x:.1f}' for x in p['worker_cpu_s'])}; critical "
                             f"path (driver CPU + the slowest worker's CPU per window, i.e. the "
                             f"wall time with a free core per process) "
                             f"{p['critical_path_cpu_s']:.1f} s")
            lines.append(f"process CPU time {p['process_cpu_s']:.1f} s = "
                         f"{m['num_requests'] / p['process_cpu_s']:.0f} simulated req per "
                         f"CPU-second (the wall rate on an idle core); load average at the "
                         f"end {results['machine']['loadavg_at_end']}")
        if results.get("cprofile_top"):
            lines.append(results["cprofile_top"])
    return "\n".join(lines)


def write_outputs(results: dict, workdir: str, figures: bool = True) -> dict:
    paths = {"json": report.write_json(os.path.join(workdir, "cluster_results.json"), results)}
    if not figures or results["mode"] != "compare":
        return paths
    series = results["series"]
    placements = sorted({n.rsplit("/", 1)[1] for n in series})
    for pl in placements:
        lat = {n.rsplit("/", 1)[0]: s for n, s in series.items() if n.endswith("/" + pl)}
        paths[f"latency_cdfs_{pl}"] = report.plot_latency_cdfs(
            lat, os.path.join(workdir, f"latency_cdfs_{pl}.png"),
            title=f"{results['num_replicas']} replicas, {pl} routing")
    paths["replica_load"] = plot_replica_load(series, os.path.join(workdir,
                                                                    "replica_load.png"))
    return paths


def plot_replica_load(series: dict, path: str) -> str:
    """One panel per run: outstanding tokens over time of the first 8 replicas (lines) and the
    min..max band over all replicas."""
    plt = report._plt()
    names = list(series)
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), sharey=True,
                             squeeze=False)
    for ax, n in zip(axes.flat, names):
        s = series[n]
        t = s["t"]
        if len(t):
            ax.fill_between(t, s["outstanding_min"] / 1e3, s["outstanding_max"] / 1e3,
                            color="0.85", label="min..max")
            for y in s["outstanding_first"]:
                ax.plot(t, y / 1e3, lw=0.6)
        ax.set_title(n, fontsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("outstanding ktok")
    for ax in axes[-1]:
        ax.set_xlabel("time (s)")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    return report._save(fig, path)
