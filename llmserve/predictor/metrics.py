"""Length-prediction metrics, scored against every individual observed length.

A prompt answered 10 times has 10 targets; each predictor gives one prediction per sample
(prompt-level predictors repeat theirs). Kendall tau is at the prompt level: the predictor's
per-prompt point against the prompt's mean observed length.
"""
from __future__ import annotations

import numpy as np

BUCKET_EDGES = (50, 500)


def bucket_of(lengths, edges=BUCKET_EDGES) -> np.ndarray:
    """[0, e0) -> 0, [e0, e1) -> 1, ... ."""
    return np.searchsorted(np.asarray(edges, np.float64), np.asarray(lengths, np.float64),
                           side="right")


def kendall_tau(x, y) -> float:
    """Kendall tau-b (ties in either variable handled), O(n^2) - fine for a few thousand."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) != len(y):
        raise ValueError(f"kendall_tau needs equal lengths, got {len(x)} and {len(y)}")
    if len(x) < 2:
        return float("nan")
    iu = np.triu_indices(len(x), 1)
    dx = np.sign(x[:, None] - x[None, :])[iu]
    dy = np.sign(y[:, None] - y[None, :])[iu]
    denom = np.sqrt(np.sum(dx != 0) * np.sum(dy != 0))
    return float(np.sum(dx * dy) / denom) if denom else float("nan")


def score(point, target, prompt_index, lower=None, upper=None, bucket=None,
          prompt_point=None, edges=BUCKET_EDGES) -> dict:
    """Metrics of per-sample predictions.

    point, lower, upper, bucket: per sample (bucket defaults to the point's bucket);
    target: observed lengths; prompt_index: which prompt each sample belongs to;
    prompt_point: per-prompt point for Kendall tau (defaults to the per-prompt mean of point).
    """
    point, target = np.asarray(point, np.float64), np.asarray(target, np.float64)
    pidx = np.asarray(prompt_index)
    err = np.abs(point - target)
    bucket = bucket_of(point, edges) if bucket is None else np.asarray(bucket)
    n_prompts = int(pidx.max()) + 1 if len(pidx) else 0
    counts = np.bincount(pidx, minlength=n_prompts)
    mean_len = np.bincount(pidx, target, minlength=n_prompts) / np.maximum(counts, 1)
    if prompt_point is None:
        prompt_point = np.bincount(pidx, point, minlength=n_prompts) / np.maximum(counts, 1)
    keep = counts > 0
    out = {
        "mae": float(err.mean()),
        "median_rel_err": float(np.median(err / np.maximum(target, 1))),
        "within_50": float(np.mean(err <= 50)),
        "within_100": float(np.mean(err <= 100)),
        "bucket_acc": float(np.mean(bucket == bucket_of(target, edges))),
        "kendall_tau": kendall_tau(np.asarray(prompt_point)[keep], mean_len[keep]),
        "num_samples": len(target), "num_prompts": int(keep.sum())}
    if lower is not None and upper is not None:
        lo, hi = np.asarray(lower), np.asarray(upper)
        out["coverage80"] = float(np.mean((target >= lo) & (target <= hi)))
        out["interval_width"] = float(np.median(hi - lo))
    return out
