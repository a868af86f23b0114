"""The ensemble against its baselines on a held-out split, and its prediction latency.

Rows: the ensemble; each member and their average; the training median (constant); a
prompt-length regression (least squares of log(1+len) on log(1+prompt_len)); and the noise
floor: each sample predicted by the mean of the *other* samples of its prompt, which no
predictor that sees only the prompt can beat on average.
"""
from __future__ import annotations

import time

import numpy as np

from llmserve.predictor.metrics import BUCKET_EDGES, bucket_of, kendall_tau, score

_Z80 = 1.2815515655446004


def _gauss_nll(y, mu, sigma):
    return 0.5 * ((y - mu) / sigma) ** 2 + np.log(sigma) + 0.5 * np.log(2 * np.pi)


def score_predictor(predictor, ds) -> dict:
    """Ensemble metrics on ds (point = median; `mae_of_mean` scores the expected length)."""
    return ensemble_rows(predictor, ds)["ensemble"]


def ensemble_rows(predictor, ds) -> dict:
    edges = predictor.bucket_edges
    p = predictor.predict(ds.prompts, ds.texts)
    pidx, y = ds.per_sample()
    ly = np.log1p(y)
    rows = {}
    ens = score(p.median[pidx], y, pidx, p.lower[pidx], p.upper[pidx],
                np.argmax(p.bucket_probs, -1)[pidx], p.median, edges)
    ens["mae_of_mean"] = float(np.mean(np.abs(p.mean[pidx] - y)))
    ens["bucket_acc_of_point"] = float(np.mean(bucket_of(p.median[pidx], edges) ==
                                               bucket_of(y, edges)))
    # log score of the mixture itself (not the calibrated Gaussian summary)
    dens = np.mean(np.exp(-_gauss_nll(ly[None], p.member_mu[:, pidx], p.member_sigma[:, pidx])), 0)
    ens["nll"] = float(np.mean(-np.log(np.maximum(dens, 1e-300))))
    rows["ensemble"] = ens
    for k in range(len(p.member_mu)):
        mu, sg = p.member_mu[k], p.member_sigma[k]
        r = score(np.expm1(mu)[pidx], y, pidx, np.expm1(mu - _Z80 * sg)[pidx],
                  np.expm1(mu + _Z80 * sg)[pidx], np.argmax(p.member_probs[k], -1)[pidx],
                  np.expm1(mu), edges)
        r["nll"] = float(np.mean(_gauss_nll(ly, mu[pidx], sg[pidx])))
        rows[f"member_{k}"] = r
    members = [rows[f"member_{k}"] for k in range(len(p.member_mu))]
    rows["member_avg"] = {m: float(np.mean([r[m] for r in members])) for m in members[0]}
    return rows


def baseline_rows(train_ds, ds, edges=BUCKET_EDGES) -> dict:
    pidx, y = ds.per_sample()
    _, ty = train_ds.per_sample()
    rows = {}
    med = float(np.median(ty))
    lo, hi = np.quantile(ty, [0.1, 0.9])
    n = len(y)
    rows["constant"] = score(np.full(n, med), y, pidx, np.full(n, lo), np.full(n, hi),
                             prompt_point=np.full(len(ds), med), edges=edges)
    # prompt-length regression in log space; its residual std gives the interval
    tp, _ = train_ds.per_sample()
    tx = np.log1p([len(train_ds.prompts[i]) for i in tp])
    a = np.stack([np.ones_like(tx), tx], 1)
    coef, *_ = np.linalg.lstsq(a, np.log1p(ty), rcond=None)
    resid = np.std(np.log1p(ty) - a @ coef)
    x = np.log1p([len(p) for p in ds.prompts])
    mu = coef[0] + coef[1] * x
    rows["prompt_len_regression"] = score(
        np.expm1(mu)[pidx], y, pidx, np.expm1(mu - _Z80 * resid)[pidx],
        np.expm1(mu + _Z80 * resid)[pidx], prompt_point=np.expm1(mu), edges=edges)
    rows["noise_floor"] = noise_floor(ds, edges)
    return rows


def noise_floor(ds, edges=BUCKET_EDGES) -> dict:
    """Each sample predicted by the mean of its prompt's other samples (prompts with >= 2);
    the interval is those samples' 10th-90th percentiles. Kendall tau: the mean of one half
    of each prompt's samples against the prompt's mean (a repeatability ceiling)."""
    keep = [i for i, x in enumerate(ds.lengths) if len(x) >= 2]
    sub = ds.subset(keep)
    point, lo, hi, target, pidx = [], [], [], [], []
    half = []
    for i, x in enumerate(sub.lengths):
        for j in range(len(x)):
            others = np.delete(x, j)
            point.append(others.mean())
            q = np.quantile(others, [0.1, 0.9])
            lo.append(q[0])
            hi.append(q[1])
            target.append(x[j])
            pidx.append(i)
        half.append(x[: len(x) // 2].mean())
    r = score(np.array(point), np.array(target), np.array(pidx), np.array(lo), np.array(hi),
              edges=edges)
    r["kendall_tau"] = kendall_tau(half, [x.mean() for x in sub.lengths])
    return r


def measure_latency(predictor, prompts, batch_size: int = 64, repeats: int = 20) -> dict:
    """Milliseconds per request of predict() on batches of `batch_size` prompts (text or ids);
    the first call (compilation) is excluded and reported apart. `predictor` may also be a
    plain function of a batch (e.g. a sentence encoder's embed)."""
    call = predictor if callable(predictor) else predictor.predict
    prompts = list(prompts)
    if not prompts:
        raise ValueError("measure_latency needs at least one prompt")
    batches = [[prompts[(i * batch_size + j) % len(prompts)] for j in range(batch_size)]
               for i in range(repeats)]
    t0 = time.perf_counter()
    call(batches[0])
    first = time.perf_counter() - t0
    times = []
    for b in batches:
        t0 = time.perf_counter()
        call(b)
        times.append(time.perf_counter() - t0)
    times = np.array(times)
    return {"batch_size": batch_size, "ms_per_request": float(np.median(times) / batch_size * 1e3),
                "ms_per_request_p90": float(np.quantile(times, 0.9) / batch_size * 1e3),
                "ms_per_batch": float(np.median(times) * 1e3), "first_call_ms": first * 1e3}


def evaluate_all(predictor, train_ds, test_ds) -> dict:
    rows = ensemble_rows(predictor, test_ds)
    rows.update(baseline_rows(train_ds, test_ds, predictor.bucket_edges))
    return rows


# CASTILLO's datasets by kind: a row for each kind whose sources a split mixes with others
SOURCE_GROUPS = {
    "[castillo chat]": ("castillo/Alpaca", "castillo/DollyDataset", "castillo/ShareGPT"),
    "[castillo code]": ("castillo/Apps", "castillo/BigCodeBench", "castillo/DS1000",
                        "castillo/Mbpp")}


def rows_by_source(predictor, train_ds, test_ds) -> dict:
    """The ensemble and the constant on each source's test prompts (castillo/ShareGPT, ...),
    and on each SOURCE_GROUPS kind present next to another: a training set that mixes
    datasets can help one and hurt another."""
    present = set(test_ds.sources)
    parts = {s: (s,) for s in sorted(present)}
    parts.update({g: m for g, m in SOURCE_GROUPS.items()
                  if len(present & set(m)) > 1 and present - set(m)})
    out = {}
    for name, members in parts.items():
        sub = test_ds.subset([i for i, x in enumerate(test_ds.sources) if x in members])
        r = score_predictor(predictor, sub)
        out[name] = {"num_prompts": len(sub), "num_samples": sub.num_samples,
                     **{k: r[k] for k in ("mae", "bucket_acc", "kendall_tau", "coverage80")},
                     "constant_mae": baseline_rows(train_ds, sub,
                                                   predictor.bucket_edges)["constant"]["mae"]}
    return out


def format_by_source(by: dict) -> str:
    lines = [f"{'test prompts of':<24}{'n':>5}{'MAE':>8}{'const':>8}{'3-bkt':>7}{'tau':>7}"
             f"{'cov80':>7}"]
    for s, r in by.items():
        lines.append(f"{s:<24}{r['num_prompts']:>5}{r['mae']:>8.1f}{r['constant_mae']:>8.1f}"
                     f"{r['bucket_acc']:>7.3f}{r['kendall_tau']:>7.3f}{r['coverage80']:>7.3f}")
    return "\n".join(lines)


def format_table(rows: dict, order=None) -> str:
    cols = [("mae", "MAE", "{:.1f}"), ("median_rel_err", "med.rel.err", "{:.3f}"),
            ("within_50", "<=50", "{:.3f}"), ("within_100", "<=100", "{:.3f}"),
            ("bucket_acc", "3-bucket", "{:.3f}"), ("kendall_tau", "Kendall", "{:.3f}"),
            ("coverage80", "cov80", "{:.3f}"), ("nll", "NLL", "{:.3f}")]
    names = order or list(rows)
    w = max(len(n) for n in names) + 2
    lines = [f"{'predictor':<{w}}" + "".join(f"{h:>12}" for _, h, _ in cols)]
    for n in names:
        r = rows[n]
        lines.append(f"{n:<{w}}" + "".join(
            f"{(fmt.format(r[k]) if k in r and r[k] == r[k] else '-'):>12}" for k, _, fmt in cols))
    return "\n".join(lines)


def format_cv_table(cv: dict) -> str:
    """Per-fold rows and mean +- std of a cross_validate result."""
    cols = [("mae", "MAE", "{:.1f}"), ("bucket_acc", "3-bucket", "{:.3f}"),
            ("kendall_tau", "Kendall", "{:.3f}"), ("coverage80", "cov80", "{:.3f}"),
            ("constant_mae", "const MAE", "{:.1f}")]
    lines = [f"{cv['folds']}-fold cross-validation by prompt ({cv['data']})",
             f"{'fold':<14}{'prompts':>8}" + "".join(f"{h:>16}" for _, h, _ in cols)]
    for i, r in enumerate(cv["per_fold"]):
        lines.append(f"{i + 1:<14}{r['num_test']:>8}" +
                     "".join(f"{fmt.format(r[k]):>16}" for k, _, fmt in cols))
    s = cv["summary"]
    lines.append(f"{'mean +- std':<14}{'':>8}" + "".join(
        f"{fmt.format(s[k]['mean']) + ' +- ' + fmt.format(s[k]['std']):>16}"
        for k, _, fmt in cols))
    return "\n".join(lines)


ROW_ORDER = ("ensemble", "member_avg", "constant", "prompt_len_regression", "noise_floor")


CV_METRICS = ("mae", "bucket_acc", "kendall_tau", "coverage80")


def cv_splits(ds, folds: int, split=(0.7, 0.1, 0.2), seed: int = 0) -> list:
    """k-fold cross-validation by prompt -> [(train, val, test)] per fold. The test sets are
    `folds` equal parts by a hash of each prompt (every prompt is tested exactly once); the
    rest of each fold is split into train and validation in the ratio split[0]:split[1] by
    another hash, as the single split does."""
    from llmserve.predictor import data as data_lib
    if int(folds) != folds or folds < 2:
        raise ValueError(f"eval.cv_folds must be an integer >= 2, got {folds!r}")
    if len(ds) < 2 * folds:
        raise ValueError(f"eval.cv_folds={folds} needs at least {2 * folds} prompts, "
                         f"got {len(ds)}")
    folds = int(folds)
    parts = data_lib.split_by_prompt(ds, [1.0 / folds] * folds, seed)
    tr = split[0] / (split[0] + split[1])
    out = []
    for f in range(folds):
        rest = data_lib.concat([p for g, p in enumerate(parts) if g != f])
        train, val = data_lib.split_by_prompt(rest, (tr, 1.0 - tr), seed + 1)
        out.append((train, val, parts[f]))
    return out


def cross_validate(config, folds: int) -> dict:
    """Train `config`'s recipe once per fold of cv_splits over all its served prompts and
    score each fold's test prompts: how much a figure depends on which prompts are held out.
    -> {"per_fold": [...], "summary": {metric: {"mean", "std"}}} (std over folds, ddof 1)."""
    from absl import logging

    from llmserve.predictor import data as data_lib
    from llmserve.predictor.train import fit_predictor, load_served_data
    tok = data_lib.tokenizer_for(config.tokenizer)
    ds, desc = load_served_data(config, tok)
    per_fold = []
    for f, (train, val, test) in enumerate(cv_splits(ds, folds, tuple(config.data.split),
                                                     config.data.split_seed)):
        predictor, *_ = fit_predictor(config, train, val, test, tok, desc)
        r = score_predictor(predictor, test)
        row = {k: r[k] for k in CV_METRICS}
        row["constant_mae"] = baseline_rows(train, test, predictor.bucket_edges)["constant"]["mae"]
        p = predictor.predict(test.prompts, test.texts)
        pidx, y = test.per_sample()
        src = np.asarray(test.sources)[pidx]
        row["mae_by_source"] = {s: float(np.mean(np.abs(p.median[pidx] - y)[src == s]))
                                for s in sorted(set(test.sources))}
        row.update(num_train=len(train), num_val=len(val), num_test=len(test))
        per_fold.append(row)
        logging.info("fold %d/%d: %d/%d/%d prompts, MAE %.1f, 3-bucket %.3f, tau %.3f, "
                     "cov80 %.3f", f + 1, folds, len(train), len(val), len(test), row["mae"],
                     row["bucket_acc"], row["kendall_tau"], row["coverage80"])
    keys = CV_METRICS + ("constant_mae",)
    summary = {k: {"mean": float(np.mean([r[k] for r in per_fold])),
                   "std": float(np.std([r[k] for r in per_fold], ddof=1))} for k in keys}
    return {"folds": int(folds), "data": desc, "per_fold": per_fold, "summary": summary}


def run_evaluation(workdir: str, latency_batch_size: int = 64, latency_repeats: int = 50,
                   workload_log: str = "", workload_rate: float = 1.0,
                   workload_max_len: int = 0, workload_num_requests: int = 0,
                   workload_output_scale: float = 1.0, cv_folds: int = 0,
                   split_from: str = "") -> dict:
    """Score the checkpoint in workdir on the held-out test split of the data it was trained
    on (the split is rebuilt from the config stored in the checkpoint), time predict(), and
    write workdir/eval.json; with `workload_log`, also write the held-out end-to-end workload
    there (write_heldout_workload); with `cv_folds` > 1, also cross-validate the checkpoint's
    recipe (cross_validate: one training per fold). -> the results (rows, latency, targets)."""
    import json
    import os

    from ml_collections import ConfigDict

    from llmserve.predictor import data as data_lib
    from llmserve.predictor.serve import LengthPredictor
    from llmserve.predictor.train import build_datasets
    predictor = LengthPredictor.load(workdir)
    # split_from: another checkpoint's data and split (a chat-trained predictor scored on the
    # all-nine test prompts); eval.json then goes to eval_on_<that dir's name>.json
    config = ConfigDict((LengthPredictor.load(split_from) if split_from else predictor)
                        .meta["config"])
    config.data.split = tuple(config.data.split)
    tok = data_lib.tokenizer_for(config.tokenizer)
    train_ds, _, test_ds, desc = build_datasets(config, tok)
    if not len(test_ds):
        raise ValueError(f"the checkpoint's data ({desc}) has an empty test split")
    if predictor.encoder is not None:  # scoring reuses training's embeddings; timing does not
        from llmserve.predictor.encoder import EmbeddingCache
        predictor.embedding_cache = EmbeddingCache(
            predictor.encoder, config.features.get("encoder_cache_dir", ""))
    rows = evaluate_all(predictor, train_ds, test_ds)
    by_source = rows_by_source(predictor, train_ds, test_ds)
    predictor.embedding_cache = None
    latency = {"text": measure_latency(predictor, test_ds.texts if all(test_ds.texts)
                                        else test_ds.prompts, latency_batch_size,
                                        latency_repeats),
                   "token_ids": measure_latency(predictor, test_ds.prompts, latency_batch_size,
                                             latency_repeats)}
    if predictor.encoder is not None:
        latency["encoder_only"] = measure_latency(predictor.encoder.embed, test_ds.texts,
                                                  latency_batch_size, latency_repeats)
    ens, avg = rows["ensemble"], rows["member_avg"]
    targets = {"mae_le_180": ens["mae"] <= 180, "bucket_acc_ge_0_65": ens["bucket_acc"] >= 0.65,
                   "kendall_ge_0_55": ens["kendall_tau"] >= 0.55,
                   "coverage_in_0_75_0_85": 0.75 <= ens["coverage80"] <= 0.85,
                   "ensemble_beats_avg_member_mae": ens["mae"] < avg["mae"],
                   "ensemble_beats_avg_member_nll": ens["nll"] < avg["nll"],
                   "latency_lt_0_1_ms": latency["token_ids"]["ms_per_request"] < 0.1}
    out = {"data": desc, "num_test_prompts": len(test_ds), "num_test_samples": test_ds.num_samples,
               "rows": rows, "by_source": by_source, "latency": latency, "targets": targets,
               "train_metrics": {k: v for k, v in predictor.meta.get("metrics", {}).items()
                              if k not in ("val", "test")}}
    if workload_log:
        out["workload_log"] = workload_log
        out["workload_requests"] = write_heldout_workload(test_ds, workload_log, workload_rate,
                                                          config.data.split_seed,
                                                          workload_max_len,
                                                          workload_num_requests,
                                                          workload_output_scale)
        if workload_output_scale != 1.0:
            from llmserve.predictor.serve import rescale_checkpoint
            out["workload_checkpoint"] = rescale_checkpoint(
                workdir, os.path.join(workdir, f"scaled_{workload_output_scale:g}"),
                workload_output_scale)
    if cv_folds:
        out["cross_validation"] = cross_validate(config, cv_folds)
    name = (f"eval_on_{os.path.basename(os.path.normpath(split_from))}.json" if split_from
            else "eval.json")
    out["results_file"] = os.path.join(workdir, name)
    with open(out["results_file"], "w") as f:
        json.dump(out, f, indent=1)
    return out


def write_heldout_workload(test_ds, path: str, rate: float, seed: int = 0,
                           max_total_len: int = 0, num_requests: int = 0,
                           output_scale: float = 1.0) -> int:
    """Held-out (prompt, sampled length) pairs as requests of a trace log (`workload.kind =
    jsonl` in the benchmark), in a seeded random order with Poisson arrivals at `rate` req/s:
    the end-to-end workload on prompts the predictor never saw. The file is rewritten, not
    appended to. Pairs whose prompt + output exceed `max_total_len` (> 0) are left out (the
    serving model could not hold them); `num_requests` > 0 keeps that many of the shuffled
    rest; `output_scale` < 1 shrinks every output length to ceil(length x scale), for an
    engine too slow to serve the real lengths (serve it with a checkpoint rescaled by the
    same factor: `rescale_checkpoint`). -> the number of requests."""
    import os

    from llmserve.workload.trace_log import make_record, write_trace_log
    if not rate > 0:
        raise ValueError(f"eval.workload_rate must be > 0 req/s, got {rate}")
    if not 0 < output_scale <= 1:
        raise ValueError(f"eval.workload_output_scale must be in (0, 1], got {output_scale}")
    if num_requests < 0:
        raise ValueError(f"eval.workload_num_requests must be >= 0, got {num_requests}")
    pidx, y = test_ds.per_sample()
    y = np.maximum(np.ceil(y * output_scale - 1e-9), 1)
    if max_total_len > 0:
        fits = np.array([len(test_ds.prompts[i]) for i in pidx]) + y <= max_total_len
        pidx, y = pidx[fits], y[fits]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    if num_requests:
        order = order[:num_requests]
    arrivals = np.cumsum(rng.exponential(1.0 / rate, len(order)))
    arrivals -= arrivals[0]
    if os.path.exists(path):  # the log writer appends: a rerun must not double the workload
        os.remove(path)
    write_trace_log(path, (make_record(f"heldout-{j}", test_ds.prompts[pidx[i]], int(y[i]),
                                       prompt_text=test_ds.texts[pidx[i]], finish_reason="stop",
                                       arrival_s=float(t))
                           for j, (i, t) in enumerate(zip(order, arrivals))))
    return len(order)
