"""Training: K members in one jitted, vmapped Optax step; early stopping; Orbax checkpoint.

Each member sees its own Poisson bootstrap of the training prompts (a weight per prompt) and
its own initialisation and dropout noise. The loss per prompt is the mean over its observed
lengths of the Gaussian NLL of the normalised log length plus `bucket_loss_weight` x the
bucket cross-entropy. AdamW with linear warm-up + cosine decay and gradient clipping runs per
member (vmapped), so one member's gradient norm never scales another's. Each member keeps its
parameters from its best validation epoch; training stops when no member has improved for
`patience` epochs.
"""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from llmserve.predictor import data as data_lib
from llmserve.predictor import features as feat
from llmserve.predictor import model as model_lib
from llmserve.predictor.metrics import BUCKET_EDGES, bucket_of
from llmserve.predictor.serve import FORMAT, LengthPredictor, prompt_texts


def build_datasets(config, tokenizer):
    """-> (train, val, test, description) from config.data (load_served_data)."""
    ds, desc = load_served_data(config, tokenizer)
    d = config.data
    train, val, test = data_lib.split_by_prompt(ds, tuple(d.split), seed=d.split_seed)
    if len(train) < 2 or len(val) < 1:
        raise ValueError(f"too little data: {len(train)} training and {len(val)} validation "
                         f"prompts from {desc}")
    return train, val, test, desc


def load_served_data(config, tokenizer):
    """Every prompt of config.data (the served model's lengths), unsplit: its sources (dataset
    names or KIND:PATH_GLOB; a missing one is an error, never skipped) and trace log, or with
    data.synthetic the synthetic trace log alone. -> (dataset, description)."""
    d = config.data
    if d.get("synthetic", False):
        import tempfile

        from llmserve.workload.trace_log import write_trace_log
        recs = data_lib.synthetic_records(d.synthetic_num_requests, tokenizer,
                                          seed=d.split_seed)
        path = d.get("synthetic_log", "")
        with tempfile.TemporaryDirectory() as tmp:   # regenerated from the seed: nothing
            path = path or os.path.join(tmp, "synthetic.jsonl")  # has to be kept
            if os.path.exists(path):
                os.remove(path)
            write_trace_log(path, recs)
            ds = data_lib.from_trace_log(path)
        return ds, f"synthetic trace log ({d.synthetic_num_requests} requests, data.synthetic)"
    specs = ([f"trace_log:{d.trace_log}"] if d.trace_log else []) + list(d.sources)
    if not specs:
        raise ValueError("config.data.sources names no dataset and data.trace_log is empty: "
                         "name datasets (e.g. castillo_llama31_8b) or set data.synthetic=True "
                         "for the synthetic trace")
    return data_lib.load_sources(specs, tokenizer), ", ".join(specs)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def build_aux_datasets(config, tokenizer, held_out) -> tuple[list, list[str]]:
    """One dataset per `config.data.aux_sources` spec (missing files are an error), minus
    every prompt that also appears among the `held_out` datasets' prompts (the same token
    ids, or texts that contain one another, case and spacing ignored): the validation and
    test prompts never reach training through another file. -> (datasets, descriptions)."""
    specs = list(config.data.aux_sources)
    held = [_norm(t) for d in held_out for t in d.texts if t]
    held_ids = {tuple(p) for d in held_out for p in d.prompts}
    joined = "\x00".join(held)
    out, desc = [], []
    for spec in specs:
        ds = data_lib.load_sources([spec], tokenizer)
        keep = []
        for i, t in enumerate(ds.texts):
            if tuple(ds.prompts[i]) in held_ids:
                continue
            q = _norm((t or "").split("\nContext:")[0])
            if len(q) >= 12 and q in joined:
                continue
            full = _norm(t or "")
            if any(h in full for h in held if len(h) >= 12):
                continue
            keep.append(i)
        out.append(ds.subset(keep))
        desc.append(f"{spec} ({len(keep)} prompts, {len(ds) - len(keep)} dropped as held-out)")
    return out, desc


class _Encoded:
    """A dataset's bags, dense features and padded targets, built once."""

    def __init__(self, ds, fspec, y_mean, y_std, edges, task=None, enc=None):
        self.task = np.zeros(len(ds), np.int32) if task is None else np.asarray(task, np.int32)
        self.enc = None if enc is None else np.asarray(enc, np.float32)  # [N, D] embeddings
        if self.enc is not None and len(self.enc) != len(ds):
            raise ValueError(f"{len(self.enc)} sentence embeddings for {len(ds)} prompts")
        bags = [feat.hashed_ngrams(p, fspec) for p in ds.prompts]
        self.ids = [b[0] for b in bags]
        self.w = [b[1] for b in bags]
        self.dense = np.stack([feat.dense_features(len(p)) for p in ds.prompts])
        lens, self.mask = ds.padded_lengths()
        self.y = ((np.log1p(lens) - y_mean) / y_std).astype(np.float32)
        self.bucket = bucket_of(lens, edges).astype(np.int32)
        self.n = len(ds)

    def batch(self, idx, pad_to):
        """Rows idx, padded with empty prompts (mask 0) up to pad_to rows."""
        idx = list(idx)
        extra = pad_to - len(idx)
        ids = [self.ids[i] for i in idx] + [np.zeros(0, np.int32)] * extra
        w = [self.w[i] for i in idx] + [np.zeros(0, np.float32)] * extra
        dense = np.concatenate([self.dense[idx], np.zeros((extra, feat.NUM_DENSE), np.float32)])

        def rows(a):
            return np.concatenate([a[idx], np.zeros((extra,) + a.shape[1:], a.dtype)])
        enc = None if self.enc is None else rows(self.enc)
        return (feat.assemble(ids, w, dense, enc), rows(self.y), rows(self.mask),
                rows(self.bucket), rows(self.task))


def _per_prompt_loss(mu, sigma, logits, y, mask, bucket, bucket_weight, beta=0.0, task=None):
    """-> ([K,B] loss, [K,B] NLL): means over each prompt's samples (mask [B,S]). beta > 0
    is beta-NLL (Seitzer et al. 2022): each NLL term weighted by a constant sigma^(2 beta),
    so a wide predicted std no longer mutes the mean's gradient on hard prompts. With `task`
    [B], mu and sigma are [K,B,T] and each prompt is scored by its task's head; the bucket
    head learns the served lengths (task 0) only."""
    if task is not None:
        pick = jnp.broadcast_to(task[None, :, None], mu.shape[:2] + (1,))
        mu = jnp.take_along_axis(mu, pick, -1)[..., 0]
        sigma = jnp.take_along_axis(sigma, pick, -1)[..., 0]
    nll = 0.5 * ((y[None] - mu[..., None]) / sigma[..., None]) ** 2 + jnp.log(sigma[..., None])
    fit = nll * jax.lax.stop_gradient(sigma[..., None] ** (2 * beta)) if beta else nll
    logp = jax.nn.log_softmax(logits, axis=-1)                               # [K,B,C]
    idx = jnp.broadcast_to(bucket[None], (logp.shape[0],) + bucket.shape)     # [K,B,S]
    ce = -jnp.take_along_axis(logp, idx, axis=-1)                            # [K,B,S]
    if task is not None:
        ce = ce * (task == 0)[None, :, None]
    n = jnp.maximum(mask.sum(-1), 1.0)
    total = ((fit + bucket_weight * ce) * mask[None]).sum(-1) / n
    return total, (nll * mask[None]).sum(-1) / n


def make_optimizer(tc, total_steps: int):
    warmup = max(1, int(tc.warmup_frac * total_steps))
    sched = optax.warmup_cosine_decay_schedule(0.0, tc.learning_rate, warmup,
                                               max(total_steps, warmup + 1),
                                               end_value=tc.learning_rate * 0.02)
    return optax.chain(optax.clip_by_global_norm(tc.clip_norm),
                       optax.adamw(sched, weight_decay=tc.weight_decay))


def train_ensemble(train_ds, val_ds, fspec: feat.FeatureSpec, mspec: model_lib.ModelSpec,
                   tc, edges=BUCKET_EDGES, aux=(), train_enc=None, val_enc=None):
    """-> (params with leading [K] axis, normalisation (y_mean, y_std), history).

    aux: extra datasets whose lengths come from other responders (task 1, 2, ...: own
    mean/std heads, weight `tc.aux_weight`); they train the shared features only, and
    validation, early stopping and the served head are task 0's.
    train_enc, val_enc: with mspec.encoder_dim, the sentence embeddings [N, D] of train_ds's
    prompts followed by aux's, and of val_ds's.
    val_ds None (training on train + validation): no validation metrics, every epoch runs
    and the last epoch's params are kept (needs tc.keep == "last")."""
    t_start = time.perf_counter()
    keep = tc.get("keep", "best")
    if keep not in ("best", "last"):
        raise ValueError(f"train.keep must be 'best' or 'last', got {keep!r}")
    if not 0 <= tc.get("stop_epoch", 0) <= tc.num_epochs:
        raise ValueError(f"train.stop_epoch must be in 0..num_epochs={tc.num_epochs}, got "
                         f"{tc.stop_epoch}")
    if val_ds is None and keep != "last":
        raise ValueError("train.keep='best' picks epochs on validation, so it needs a "
                         "validation split; with data.train_on_val use train.keep='last'")
    if mspec.num_tasks != 1 + len(aux):
        raise ValueError(f"model num_tasks={mspec.num_tasks} but {len(aux)} auxiliary "
                         "datasets (+1 for the served lengths)")
    all_y = np.log1p(np.concatenate(train_ds.lengths))
    y_mean, y_std = float(all_y.mean()), float(max(all_y.std(), 1e-3))
    task = np.concatenate([np.full(len(d), t, np.int32)
                           for t, d in enumerate([train_ds, *aux])])
    if mspec.encoder_dim and (train_enc is None or (val_ds is not None and val_enc is None)):
        raise ValueError("the model spec takes sentence embeddings (encoder_dim "
                         f"{mspec.encoder_dim}): pass train_enc and val_enc")
    tr = _Encoded(data_lib.concat([train_ds, *aux]), fspec, y_mean, y_std, edges, task,
                  train_enc)
    va = _Encoded(val_ds, fspec, y_mean, y_std, edges, enc=val_enc) if val_ds is not None \
        else None
    k = tc.ensemble_size
    rng = np.random.default_rng(tc.seed)
    boot = (rng.poisson(1.0, size=(k, tr.n)) if tc.bootstrap else np.ones((k, tr.n))
            ).astype(np.float32)
    boot *= np.where(task == 0, 1.0, tc.aux_weight).astype(np.float32)
    bs = min(tc.batch_size, tr.n)
    steps_per_epoch = -(-tr.n // bs)
    tx = make_optimizer(tc, tc.num_epochs * steps_per_epoch)
    key = jax.random.PRNGKey(tc.seed)
    params = model_lib.ensemble_init(mspec, key, k)
    opt_state = jax.vmap(tx.init)(params)
    bw = tc.bucket_loss_weight

    @jax.jit
    def train_step(params, opt_state, batch, y, mask, bucket, task, boot_w, dkey):
        def loss(p):
            mu, sigma, logits = model_lib.ensemble_apply(mspec, p, batch, True, dkey,
                                                         all_tasks=True)
            per_prompt, _ = _per_prompt_loss(mu, sigma, logits, y, mask, bucket, bw,
                                             tc.nll_beta, task)
            per_member = (per_prompt * boot_w).sum(-1) / jnp.maximum(boot_w.sum(-1), 1.0)
            return per_member.sum(), per_member  # members are independent: d(sum)/dp_k
        (_, per_member), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = jax.vmap(tx.update)(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, per_member

    @jax.jit
    def val_metrics(params, batch, y, mask):
        mu, sigma, _ = model_lib.ensemble_apply(mspec, params, batch)
        nll = 0.5 * ((y[None] - mu[..., None]) / sigma[..., None]) ** 2 + jnp.log(sigma[..., None])
        err = jnp.abs(y[None] - mu[..., None])
        ens_err = jnp.abs(y - mu.mean(0)[:, None])
        return ((nll * mask[None]).sum((1, 2)) / mask.sum(),
                (err * mask[None]).sum((1, 2)) / mask.sum(), (ens_err * mask).sum() / mask.sum())

    if tc.early_stop_metric not in ("nll", "log_mae", "ensemble_log_mae"):
        raise ValueError(f"train.early_stop_metric must be 'nll', 'log_mae' or "
                         f"'ensemble_log_mae', got {tc.early_stop_metric!r}")

    vb = va.batch(range(va.n), va.n) if va is not None else None
    best = jax.tree_util.tree_map(lambda x: x, params)
    best_val = np.full(k, np.inf)
    best_epoch = np.zeros(k, int)
    history = []
    since_improved = 0
    for epoch in range(1, tc.num_epochs + 1):
        order = rng.permutation(tr.n)
        losses = []
        for s in range(steps_per_epoch):
            idx = order[s * bs:(s + 1) * bs]
            batch, y, mask, bucket, btask = tr.batch(idx, bs)
            boot_w = np.concatenate([boot[:, idx], np.zeros((k, bs - len(idx)), np.float32)], 1)
            key, dkey = jax.random.split(key)
            params, opt_state, per_member = train_step(params, opt_state, batch, y, mask,
                                                       bucket, btask, boot_w, dkey)
            losses.append(np.asarray(per_member))
        if vb is not None:
            v_nll, v_mae, v_ens = (np.asarray(x) for x in val_metrics(params, *vb[:3]))
        else:
            v_nll, v_mae, v_ens = np.full(k, np.nan), np.full(k, np.nan), np.nan
        # ensemble_log_mae: one epoch for all members, chosen on the ensemble's error (one
        # choice made on validation, not K, so validation stays closer to unseen data)
        v = {"nll": v_nll, "log_mae": v_mae,
             "ensemble_log_mae": np.full(k, v_ens)}[tc.early_stop_metric]
        if keep == "last":
            # the epoch count was fixed beforehand (on a run with validation): every epoch
            # runs and the final params are kept, so no choice is made on the data trained on
            v = np.full(k, -float(epoch))
        improved = v < best_val - 1e-4
        if improved.any():
            sel = jnp.asarray(improved)
            best = jax.tree_util.tree_map(
                lambda b, p, sel=sel: jnp.where(sel.reshape((-1,) + (1,) * (p.ndim - 1)), p, b),
                best, params)
            best_val = np.where(improved, v, best_val)
            best_epoch = np.where(improved, epoch, best_epoch)
            since_improved = 0
        else:
            since_improved += 1
        tl = float(np.mean(losses))
        history.append({"epoch": epoch, "train_loss": tl, "val_nll": v_nll.tolist(),
                        "val_log_mae": v_mae.tolist(), "val_ensemble_log_mae": float(v_ens)})
        logging.info("epoch %3d  train loss %.4f  val NLL %s  val log-MAE %s  best %s %.4f "
                     "(%.1fs)", epoch, tl, np.array2string(v_nll, precision=3),
                     np.array2string(v_mae, precision=3), tc.early_stop_metric, best_val.mean(),
                     time.perf_counter() - t_start)
        if keep == "last" and epoch == tc.get("stop_epoch", 0):
            logging.info("stop: train.stop_epoch %d reached", epoch)
            break
        if keep == "best" and since_improved >= tc.patience:
            logging.info("early stop: no member improved for %d epochs", tc.patience)
            break
    info = {"y_mean": y_mean, "y_std": y_std, "history": history, "best_epoch": best_epoch.tolist(),
                "best_val": best_val.tolist() if keep == "best" else None,
                "epochs_run": len(history),
                "train_seconds": time.perf_counter() - t_start,
            # which served-task training prompts each member never saw (its bootstrap drew
            # them 0 times): held-out data for calibrating the interval
            "out_of_bag": (boot[:, :len(train_ds)] == 0) if tc.bootstrap else None}
    return best, info


def feature_spec(config) -> feat.FeatureSpec:
    f = config.features
    return feat.FeatureSpec(table_size=f.table_size, ngram_orders=tuple(f.ngram_orders),
                            max_prompt_tokens=f.max_prompt_tokens, hash_seed=f.hash_seed,
                            tokenizer=config.tokenizer, weighting=f.weighting,
                            word_orders=tuple(f.get("word_orders", ())),
                            word_weight=f.get("word_weight", 1.0))


def model_spec(config, num_tasks: int = 1, encoder_dim: int = 0) -> model_lib.ModelSpec:
    m = config.model
    return model_lib.ModelSpec(table_size=config.features.table_size, embed_dim=m.embed_dim,
                               hidden_dim=m.hidden_dim, num_buckets=len(config.bucket_edges) + 1,
                               dropout=m.dropout, bag_dropout=m.bag_dropout, wide=m.wide,
                               num_tasks=num_tasks, encoder_dim=encoder_dim,
                               encoder_proj=m.get("encoder_proj", 32),
                               encoder_dropout=m.get("encoder_dropout", 0.0))


def sentence_encoder(config):
    """-> (SentenceEncoder, EmbeddingCache) of config.features.encoder, or (None, None)."""
    path = config.features.get("encoder", "")
    if not path:
        return None, None
    from llmserve.predictor.encoder import EmbeddingCache, SentenceEncoder
    enc = SentenceEncoder.load(path, config.features.get("encoder_max_tokens", 256))
    return enc, EmbeddingCache(enc, config.features.get("encoder_cache_dir", ""))


def save_checkpoint(path: str, params, meta: dict) -> None:
    import orbax.checkpoint as ocp
    path = os.path.abspath(path)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        ckptr.save(path, ocp.args.Composite(params=ocp.args.StandardSave(params),
                                            meta=ocp.args.JsonSave(meta)), force=True)


def fit_predictor(config, train, val, test, tokenizer, desc: str = ""):
    """Train the ensemble of `config` on train (+ val with data.train_on_val; else val picks
    the epochs), auxiliary data minus any val/test prompt, and calibrate its interval.
    -> (LengthPredictor, params, meta, info, aux descriptions)."""
    aux, aux_desc = build_aux_datasets(config, tokenizer, [val, test])
    for line in aux_desc:
        logging.info("auxiliary data: %s", line)
    encoder, cache = sentence_encoder(config)
    fspec = feature_spec(config)
    mspec = model_spec(config, num_tasks=1 + len(aux),
                       encoder_dim=encoder.dim if encoder is not None else 0)
    on_val = bool(config.data.get("train_on_val", False))
    fit = data_lib.concat([train, val]) if on_val else train
    if on_val:
        logging.info("training on train + validation (%d prompts), %d epochs, last kept",
                     len(fit), config.train.num_epochs)
    train_enc = val_enc = None
    if encoder is not None:
        t0 = time.perf_counter()
        both = data_lib.concat([fit, *aux])
        train_enc = cache.embed(prompt_texts(both.prompts, both.texts, tokenizer))
        val_enc = None if on_val else cache.embed(prompt_texts(val.prompts, val.texts,
                                                               tokenizer))
        logging.info("sentence embeddings (%s, %d tokens): %.1fs", encoder.path,
                     encoder.max_tokens, time.perf_counter() - t0)
    params, info = train_ensemble(fit, None if on_val else val, fspec, mspec, config.train,
                                  tuple(config.bucket_edges), aux, train_enc, val_enc)
    meta = {"format": FORMAT, "feature_spec": fspec.to_dict(), "model_spec": mspec.to_dict(),
                "ensemble_size": config.train.ensemble_size, "y_mean": info["y_mean"],
                "y_std": info["y_std"], "bucket_edges": list(config.bucket_edges),
                "interval": float(config.interval), "interval_scale": 1.0,
                "config": json.loads(config.to_json()), "data": desc}
    if encoder is not None:
        meta["encoder"] = {"path": encoder.path, "fingerprint": encoder.fingerprint,
                           "max_tokens": encoder.max_tokens, "dim": encoder.dim}
    predictor = LengthPredictor(params, meta, tokenizer=tokenizer, encoder=encoder)
    predictor.embedding_cache = cache
    if config.calibrate_interval:
        oob = (fit, info["out_of_bag"]) if (config.calibrate_out_of_bag and
                                            info["out_of_bag"] is not None) else None
        if on_val and oob is None:
            raise ValueError("data.train_on_val leaves no held-out data to calibrate the "
                             "interval on but the out-of-bag prompts: set "
                             "calibrate_out_of_bag=True (and train.bootstrap=True)")
        meta["interval_scale"] = predictor.calibrate(None if on_val else val, oob)
    return predictor, params, meta, info, aux_desc


def train_and_evaluate(config, workdir: str) -> dict:
    """Train on config.data, calibrate the interval on validation, score the held-out test
    split, write workdir/checkpoint (Orbax) and workdir/metrics.json. -> the metrics."""
    from llmserve.predictor.evaluate import score_predictor
    os.makedirs(workdir, exist_ok=True)
    if config.features.get("encoder") and not config.features.get("encoder_cache_dir"):
        config = config.copy_and_resolve_references()
        config.features.encoder_cache_dir = os.path.join(os.path.abspath(workdir),
                                                         "encoder_cache")
    tokenizer = data_lib.tokenizer_for(config.tokenizer)
    train, val, test, desc = build_datasets(config, tokenizer)
    logging.info("data: %s -> %d/%d/%d prompts (train/val/test), %d/%d/%d samples", desc,
                 len(train), len(val), len(test), train.num_samples, val.num_samples,
                 test.num_samples)
    predictor, params, meta, info, aux_desc = fit_predictor(config, train, val, test,
                                                            tokenizer, desc)
    metrics = {"data": desc, "aux_data": aux_desc,
               "trained_on_val": bool(config.data.get("train_on_val", False)),
               "num_prompts": {"train": len(train), "val": len(val), "test": len(test)},
                   "num_params": model_lib.num_params(params),
                   "train_seconds": info["train_seconds"], "epochs_run": info["epochs_run"],
                   "best_epoch": info["best_epoch"], "best_val": info["best_val"],
                   "interval_scale": meta["interval_scale"],
                   "val": score_predictor(predictor, val)}
    if len(test):
        metrics["test"] = score_predictor(predictor, test)
    meta["metrics"] = metrics
    ckpt = os.path.join(workdir, "checkpoint")
    save_checkpoint(ckpt, params, meta)
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
        json.dump(dict(metrics, history=info["history"]), f, indent=1)
    logging.info("checkpoint written to %s", ckpt)
    return metrics
