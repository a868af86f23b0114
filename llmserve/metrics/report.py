"""Reports: markdown tables, JSON files, matplotlib PNG figures."""
from __future__ import annotations

import json
import math
import os

import numpy as np

# (metric key, column title, scale, format)
TABLE_COLUMNS = (
    ("output_throughput_tok_s", "out tok/s", 1, "{:.1f}"),
    ("request_throughput", "req/s", 1, "{:.2f}"),
    ("goodput_rps", "goodput", 1, "{:.2f}"),
    ("ttft_p50_s", "TTFT p50 ms", 1e3, "{:.0f}"),
    ("ttft_p99_s", "TTFT p99 ms", 1e3, "{:.0f}"),
    ("tpot_p50_s", "TPOT p50 ms", 1e3, "{:.1f}"),
    ("tpot_p99_s", "TPOT p99 ms", 1e3, "{:.1f}"),
    ("e2e_p50_s", "E2E p50 s", 1, "{:.2f}"),
    ("e2e_p99_s", "E2E p99 s", 1, "{:.2f}"),
    ("padding_waste", "pad waste", 1, "{:.1%}"),
    ("kv_fragmentation", "KV frag", 1, "{:.1%}"),
    ("busy_fraction", "busy", 1, "{:.0%}"),
    ("preemptions", "preempt", 1, "{:d}"),
    ("scheduler_us_per_step", "sched us/step", 1, "{:.0f}"),
)


def _fmt(v, scale, fmt) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if fmt == "{:d}":
        return str(int(v))
    return fmt.format(v * scale)


def table(rows: dict[str, dict], baseline: str | None = "static", columns=TABLE_COLUMNS,
          label: str = "policy") -> str:
    """Markdown table of rows (name -> metrics), plus each row's throughput ratio to baseline."""
    base = rows.get(baseline) if baseline else None
    heads = [label] + [c[1] for c in columns]
    if base is not None:
        heads.insert(2, f"x {baseline}")
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for name, m in rows.items():
        cells = [name] + [_fmt(m.get(k), s, f) for k, _, s, f in columns]
        if base is not None:
            b = base.get("output_throughput_tok_s") or 0.0
            cells.insert(2, f"{m['output_throughput_tok_s'] / b:.2f}" if b else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _clean(o):
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, (np.floating, float)):
        return None if not math.isfinite(float(o)) else float(o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.ndarray):
        return _clean(o.tolist())
    return o


def write_json(path: str, obj) -> str:
    """JSON with NaN/inf as null (strict JSON a notebook can read)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(_clean(obj), f, indent=1, sort_keys=False)
    return path


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def cdf_points(values, levels=None) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of an empirical CDF: raw samples (y = i/n for the i-th smallest), or, with
    `levels`, values that are already the quantiles at those levels (y = levels)."""
    x = np.asarray(values, float)
    if levels is None:
        x = np.sort(x[np.isfinite(x)])
        return x, np.arange(1, x.size + 1) / max(x.size, 1)
    keep = np.isfinite(x)
    return x[keep], np.asarray(levels, float)[keep]


def plot_latency_cdfs(latencies: dict[str, dict[str, np.ndarray]], path: str,
                      title: str = "", levels=None) -> str:
    """One panel per metric (TTFT, TPOT, E2E), one CDF line per policy. With `levels`, each
    array holds quantiles at those levels (stored CDFs) instead of raw samples."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(10, 3))
    for ax, (key, unit, scale) in zip(axes, (("ttft", "ms", 1e3), ("tpot", "ms", 1e3),
                                             ("e2e", "s", 1))):
        for name, lat in latencies.items():
            x, y = cdf_points(lat[key], levels if len(lat[key]) else None)
            if x.size:
                ax.plot(x * scale, y, label=name, lw=1.2)
        ax.set_xlabel(f"{key.upper()} ({unit})")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("CDF")
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_sweep(points: dict[str, list[tuple[float, dict]]], path: str, xlabel: str,
               slo_ttft_s: float | None = None, slo_tpot_s: float | None = None,
               title: str = "", logx: bool = False) -> str:
    """Throughput, goodput, p99 TTFT and p99 TPOT against a swept value, one line per policy."""
    plt = _plt()
    panels = (("output_throughput_tok_s", "output tok/s", 1, None),
              ("goodput_rps", "goodput (req/s)", 1, None),
              ("ttft_p99_s", "p99 TTFT (s)", 1, slo_ttft_s),
              ("tpot_p99_s", "p99 TPOT (ms)", 1e3, slo_tpot_s and slo_tpot_s * 1e3))
    fig, axes = plt.subplots(1, 4, figsize=(12, 3))
    for ax, (key, lab, scale, slo) in zip(axes, panels):
        for name, pts in points.items():
            xs = [x for x, _ in pts]
            ys = [np.nan if m.get(key) is None else m[key] * scale for _, m in pts]
            ax.plot(xs, ys, marker="o", ms=3, lw=1.2, label=name)
        if slo:
            ax.axhline(slo, color="k", ls="--", lw=0.8)
        if key in ("ttft_p99_s", "tpot_p99_s"):
            ax.set_yscale("log")
        if logx:
            ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_title(lab, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_bars(rows: dict[str, dict], keys: list[tuple[str, str]], path: str,
              title: str = "") -> str:
    """One bar panel per metric key, one bar per row name."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(3 * len(keys), 3))
    axes = np.atleast_1d(axes)
    names = list(rows)
    for ax, (key, lab) in zip(axes, keys):
        ax.bar(range(len(names)), [rows[n].get(key) or 0.0 for n in names])
        ax.set_xticks(range(len(names)), names, rotation=30, fontsize=7)
        ax.set_title(lab, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=80)
    _plt().close(fig)
    return path
