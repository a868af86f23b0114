"""Figures beyond the benchmark's own (report.py): the length predictor's, and every PNG of
docs/figures rebuilt from the JSON results the benchmarks wrote (scripts/make_figures.py).

Latency CDFs are stored in results.json as quantiles (`latency_quantiles`: the levels `q`
0, 0.005, ..., 1, with the minimum and maximum, and each policy's values there), drawn at their
levels: the curve of the raw samples at those points, at a fraction of the size.
"""
from __future__ import annotations

import json
import os
from statistics import NormalDist

import numpy as np

from llmserve.metrics import report

QUANTILES = np.linspace(0.0, 1.0, 201)
LATENCY_KEYS = ("ttft", "tpot", "e2e")


def latency_quantiles(latencies: dict[str, dict[str, np.ndarray]],
                      q: np.ndarray = QUANTILES) -> dict:
    """{policy: {metric: [quantiles]}} of the finite samples (None where there are none)."""
    out = {}
    for name, lat in latencies.items():
        out[name] = {}
        for k in LATENCY_KEYS:
            x = np.asarray(lat.get(k, []), float)
            x = x[np.isfinite(x)]
            out[name][k] = np.quantile(x, q).tolist() if x.size else None
    return {"q": [float(v) for v in q], "policies": out}


def quantile_arrays(lq: dict) -> tuple[dict[str, dict[str, np.ndarray]], np.ndarray]:
    """The stored quantiles as arrays for report.plot_latency_cdfs(..., levels=q)."""
    lat = {name: {k: np.asarray(v if v is not None else [], float) for k, v in m.items()}
           for name, m in lq["policies"].items()}
    return lat, np.asarray(lq["q"], float)


# ---- length predictor ----------------------------------------------------------------------
def interval_coverage(log_mean, log_std, y, levels) -> np.ndarray:
    """Share of true lengths y inside each central interval level of the (calibrated)
    Gaussian over log(1 + length): the calibration curve (ideal: coverage == level)."""
    ly = np.log1p(np.asarray(y, float))
    err = np.abs(ly - np.asarray(log_mean, float)) / np.asarray(log_std, float)
    return np.array([np.mean(err <= NormalDist().inv_cdf(0.5 + lv / 2)) for lv in levels])


def plot_predicted_vs_true(pred, pidx, y, path: str, title: str = "") -> str:
    """Per-sample true length against the predicted median with its interval (log axes)."""
    plt = report._plt()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    pidx, y = np.asarray(pidx), np.asarray(y, float)
    med, lo, hi = pred.median[pidx], pred.lower[pidx], pred.upper[pidx]
    ax.errorbar(y + 1, med + 1, yerr=[med - lo, hi - med], fmt="o", ms=2, lw=0.3,
                alpha=0.4, elinewidth=0.3)
    top = max(float(np.max(y)), float(np.max(hi))) + 1
    ax.plot([1, top], [1, top], "k--", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("true output length + 1")
    ax.set_ylabel("predicted median + 1 (bars: interval)")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return report._save(fig, path)


def plot_interval_calibration(levels, coverage, path: str, title: str = "") -> str:
    plt = report._plt()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(levels, coverage, marker="o", label="predictor")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="ideal")
    ax.set_xlabel("nominal interval")
    ax.set_ylabel("share of true lengths inside")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return report._save(fig, path)


def predictor_figures(predictor, ds, out_dir: str, levels=(0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
                      ) -> dict:
    """Predicted-vs-true and interval-calibration PNGs for a LengthPredictor on a dataset."""
    pred = predictor.predict(ds.prompts)
    pidx, y = ds.per_sample()
    cov = interval_coverage(pred.log_mean[pidx], pred.log_std[pidx], y, levels)
    return {"coverage": dict(zip([float(v) for v in levels], cov.tolist())),
            "predicted_vs_true": plot_predicted_vs_true(
                pred, pidx, y, os.path.join(out_dir, "predicted_vs_true.png")),
            "calibration": plot_interval_calibration(
                levels, cov, os.path.join(out_dir, "interval_calibration.png"))}


# ---- the benchmark's figures (llmserve.bench.write_outputs and docs/figures) ---------------
# kind -> file name under the output directory
BENCHMARK_FIGURES = {"latency_cdf": "latency_cdf.png", "policy_bars": "policies.png",
                     "rate_sweep": "rate_sweep.png", "budget_sweep": "budget_sweep.png",
                     "noise_sweep": "noise_sweep.png"}


def dotted_get(d: dict, path: str, default=None):
    """d['a']['b'] for path 'a.b', or default where a key is missing."""
    for k in path.split("."):
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def draw(results: dict, kind: str, path: str, latencies=None) -> str | None:
    """One benchmark figure from a results dict (llmserve.bench.run's, or its results.json);
    None when the results hold no data for it. Latency CDFs come from `latencies` (raw
    samples) or else the stored `latency_quantiles`."""
    cfg = results.get("config", {})
    slo_ttft, slo_tpot = dotted_get(cfg, "slo.ttft_s", 2.0), dotted_get(cfg, "slo.tpot_s", 0.1)
    tag = f"{results.get('runner')} {results.get('hardware')} {dotted_get(cfg, 'model.preset')}"
    if kind == "latency_cdf":
        levels = None
        if latencies is None and results.get("latency_quantiles"):
            latencies, levels = quantile_arrays(results["latency_quantiles"])
        if not latencies:
            return None
        return report.plot_latency_cdfs(latencies, path, title=tag, levels=levels)
    if kind == "policy_bars":
        if not results.get("policies"):
            return None
        return report.plot_bars(
            results["policies"], [("output_throughput_tok_s", "output tok/s"),
                                  ("ttft_p99_s", "p99 TTFT (s)"), ("tpot_p99_s", "p99 TPOT (s)"),
                                  ("busy_fraction", "busy fraction")], path, title=tag)
    if kind == "rate_sweep" and results.get("rate_sweep"):
        pts = {n: [(m["rate_rps"], m) for m in ms] for n, ms in results["rate_sweep"].items()}
        return report.plot_sweep(pts, path, "request rate (req/s)", slo_ttft, slo_tpot, tag)
    if kind == "budget_sweep" and results.get("budget_sweep"):
        pts = {n: [(m["max_num_batched_tokens"], m) for m in ms]
               for n, ms in results["budget_sweep"].items()}
        return report.plot_sweep(pts, path, "max_num_batched_tokens", slo_ttft, slo_tpot, tag,
                                 logx=True)
    if kind == "noise_sweep" and results.get("noise_sweep"):
        pts = {"predictive": [(m["rel_error"], m) for m in results["noise_sweep"]]}
        return report.plot_sweep(pts, path, "noisy_oracle relative error", slo_ttft, slo_tpot,
                                 tag)
    if kind.startswith("cluster:"):
        return _draw_cluster(results, kind.split(":", 1)[1], path)
    if kind.startswith("edge_cloud:"):
        return _draw_edge_cloud(results, kind.split(":", 1)[1], path)
    if kind not in BENCHMARK_FIGURES:
        raise ValueError(f"figure kind must be one of {sorted(BENCHMARK_FIGURES)}, "
                         f"cluster:latency_cdfs_PLACEMENT, cluster:replica_load or "
                         f"edge_cloud:energy_vs_slo|regret; got {kind!r}")
    return None


def _draw_cluster(results: dict, what: str, path: str) -> str | None:
    """scripts/cluster_bench.py's figures from its cluster_results.json."""
    from llmserve.cluster import bench as cluster_bench
    series = {n: {k: np.asarray(v, float) for k, v in s.items()}
              for n, s in (results.get("series") or {}).items()}
    levels = (results.get("slimmed") or {}).get("latency_q")
    if not series:
        return None
    if what == "replica_load":
        return cluster_bench.plot_replica_load(series, path)
    if what.startswith("latency_cdfs_"):
        pl = what[len("latency_cdfs_"):]
        lat = {n.rsplit("/", 1)[0]: s for n, s in series.items() if n.endswith("/" + pl)}
        if not lat:
            return None
        return report.plot_latency_cdfs(
            lat, path, title=f"{results['num_replicas']} replicas, {pl} routing", levels=levels)
    raise ValueError(f"cluster figure must be replica_load or latency_cdfs_PLACEMENT, got {what!r}")


def _draw_edge_cloud(results: dict, what: str, path: str) -> str | None:
    """scripts/edge_cloud_bench.py's figures from its edge_cloud.json."""
    import shutil
    import tempfile

    from llmserve.cluster import edge_cloud_bench
    if not results.get("rates"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        made = edge_cloud_bench.plot(results, tmp)
        if what not in made:
            raise ValueError(f"edge_cloud figure must be one of {sorted(made)}, got {what!r}")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        shutil.copy(made[what], path)
    return path


def benchmark_figures(results: dict, out_dir: str, latencies=None) -> dict:
    """Every figure the results hold data for, as out_dir/<BENCHMARK_FIGURES name>."""
    paths = {}
    for kind, fname in BENCHMARK_FIGURES.items():
        p = draw(results, kind, os.path.join(out_dir, fname), latencies)
        if p:
            paths[kind] = p
    return paths


# ---- docs/figures ---------------------------------------------------------------------------
# docs/figures/<png> <- (docs/results/<json>, kind). The JSON files are the benchmarks'
# results, copied there by scripts/make_figures.py --collect (commands in RESULTS.md): a
# benchmark.py results.json (kinds in BENCHMARK_FIGURES), a cluster_bench.py
# cluster_results.json (cluster:...) or an edge_cloud_bench.py edge_cloud.json (edge_cloud:...).
DOC_FIGURES = {
    "demo_latency_cdf.png": ("demo.json", "latency_cdf"),
    "demo_policies.png": ("demo.json", "policy_bars"),
    "sim_h100_azure_latency_cdf.png": ("sim_azure_full.json", "latency_cdf"),
    "sim_h100_rate_sweep.png": ("sim_azure_sweeps.json", "rate_sweep"),
    "sim_h100_budget_sweep.png": ("sim_azure_sweeps.json", "budget_sweep"),
    "sim_h100_noise_sweep.png": ("sim_azure_sweeps.json", "noise_sweep"),
    "fidelity_latency_cdf.png": ("fidelity.json", "latency_cdf"),
    # Cluster routing (RESULTS, issue 8): slimmed cluster_results.json of each run.
    **{f"cluster_{run}_{fig}.png": (f"cluster_{run}.json", f"cluster:{fig}")
       for run, figs in (("azure8", ("latency_cdfs_centralized", "latency_cdfs_distributed",
                                     "replica_load")),
                         ("azure64", ("latency_cdfs_centralized", "latency_cdfs_distributed",
                                      "replica_load")),
                         ("hetero8", ("latency_cdfs_centralized", "replica_load")),
                         ("prefix200", ("latency_cdfs_centralized", "latency_cdfs_distributed",
                                        "replica_load")),
                         ("prefix200_r30", ("latency_cdfs_centralized", "replica_load")))
       for fig in figs},
    # The edge/cloud section keeps its JSON beside its figures.
    "edge_cloud/dedicated_cloud_energy_vs_slo.png": ("../figures/edge_cloud/dedicated_cloud.json",
                                                     "edge_cloud:energy_vs_slo"),
    "edge_cloud/dedicated_cloud_regret.png": ("../figures/edge_cloud/dedicated_cloud.json",
                                              "edge_cloud:regret"),
    "edge_cloud/shared_cloud_energy_vs_slo.png": ("../figures/edge_cloud/shared_cloud.json",
                                                  "edge_cloud:energy_vs_slo"),
    "edge_cloud/shared_cloud_regret.png": ("../figures/edge_cloud/shared_cloud.json",
                                           "edge_cloud:regret"),
}


def make_doc_figures(results_dir: str, out_dir: str, only=None) -> dict:
    """Redraw docs/figures from the JSON results: {png: path, or the reason it was not}."""
    out = {}
    for png, (src, kind) in DOC_FIGURES.items():
        if only and png not in only:
            continue
        path = os.path.join(results_dir, src)
        if not os.path.exists(path):
            out[png] = f"missing {path}"
            continue
        with open(path) as f:
            results = json.load(f)
        out[png] = draw(results, kind, os.path.join(out_dir, png)) or \
            f"{src} has no data for {kind} (rerun its command with the current code)"
    return out


MAX_LOAD_SAMPLES = 1500


def slim_cluster_results(results: dict) -> dict:
    """A cluster_results.json small enough to keep in the repository: each run's per-request
    TTFT/TPOT/E2E become their quantiles at QUANTILES (drawn at those levels), and the load
    samples keep every k-th time point, at most MAX_LOAD_SAMPLES."""
    out = dict(results)
    series = {}
    for name, s in (results.get("series") or {}).items():
        s = dict(s)
        for k in LATENCY_KEYS:
            x = np.asarray(s.get(k, []), float)
            x = x[np.isfinite(x)]
            s[k] = np.quantile(x, QUANTILES).tolist() if x.size else []
        t = np.asarray(s.get("t", []))
        step = max(1, -(-len(t) // MAX_LOAD_SAMPLES))
        if step > 1:
            s["t"] = t[::step].tolist()
            for k in ("outstanding_min", "outstanding_median", "outstanding_max"):
                s[k] = np.asarray(s[k])[::step].tolist()
            s["outstanding_first"] = [np.asarray(r)[::step].tolist()
                                      for r in s["outstanding_first"]]
        series[name] = s
    out["series"] = series
    out["slimmed"] = {"latency_q": QUANTILES.tolist(),
                      "load_samples": f"every k-th, at most {MAX_LOAD_SAMPLES}"}
    return out


def collect(workdirs: dict[str, str], results_dir: str) -> dict:
    """Copy each benchmark workdir's results.json (or a named .json file) to
    results_dir/<name>.json, the inputs docs/figures are drawn from. -> {name: copied path}."""
    os.makedirs(results_dir, exist_ok=True)
    out = {}
    for name, wd in workdirs.items():
        src = wd
        if not wd.endswith(".json"):    # the file each benchmark script writes to its workdir
            src = next((os.path.join(wd, f) for f in ("results.json", "cluster_results.json",
                                                      "edge_cloud.json")
                        if os.path.exists(os.path.join(wd, f))), os.path.join(wd, "results.json"))
        with open(src) as f:
            results = json.load(f)
        if results.get("series"):      # a cluster benchmark's: megabytes of raw samples
            results = slim_cluster_results(results)
        out[name] = report.write_json(os.path.join(results_dir, f"{name}.json"), results)
    return out


def checkpoint_figures(workdir: str, out_dir: str) -> dict:
    """predictor_figures for the checkpoint in workdir on the held-out test split of the data it
    was trained on (rebuilt from the config stored in the checkpoint, as evaluation does)."""
    from ml_collections import ConfigDict

    from llmserve.predictor import data as data_lib
    from llmserve.predictor.serve import LengthPredictor
    from llmserve.predictor.train import build_datasets
    predictor = LengthPredictor.load(workdir)
    config = ConfigDict(predictor.meta["config"])
    config.data.split = tuple(config.data.split)
    _, _, test_ds, _ = build_datasets(config, data_lib.tokenizer_for(config.tokenizer))
    return predictor_figures(predictor, test_ds, out_dir)
