"""LengthPredictor: a trained checkpoint -> output-length predictions for a batch of prompts.

    p = LengthPredictor.load("runs/predictor/checkpoint")
    out = p.predict(["Write an essay on owls.", [256, 72, 105]])   # text or token ids
    out.mean, out.lower, out.upper, out.bucket_probs                 # numpy, per prompt

Members predict a Gaussian over log(1 + length); the ensemble is their equal-weight mixture.
`median` = expm1 of the mixture's mean log length (the point that minimises absolute error
for a log-symmetric spread), `mean` = the mixture's expected length in tokens, and
[lower, upper] the central `interval` (80%) interval: the mixture's mean log length +- z x its
std, the std scaled by a factor calibrated on the validation split at training time.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import jax
import numpy as np

from llmserve.predictor import features as feat
from llmserve.predictor import model as model_lib

FORMAT = "llmserve-length-predictor/1"
_META_KEYS = ("format", "feature_spec", "model_spec", "ensemble_size", "y_mean", "y_std",
              "bucket_edges", "interval", "interval_scale")


def _z(interval: float) -> float:
    from statistics import NormalDist
    return NormalDist().inv_cdf(0.5 + interval / 2)


@dataclasses.dataclass
class Prediction:
    mean: np.ndarray          # expected output length (tokens)
    median: np.ndarray        # point estimate for absolute error (tokens)
    lower: np.ndarray         # central-interval bounds (tokens)
    upper: np.ndarray
    bucket_probs: np.ndarray  # [N, num_buckets], buckets split at `bucket_edges`
    log_mean: np.ndarray      # mixture mean of log(1 + length)
    log_std: np.ndarray       # mixture std of log(1 + length), calibrated
    member_mu: np.ndarray     # [K, N] each member's mean of log(1 + length)
    member_sigma: np.ndarray  # [K, N] each member's std (uncalibrated)
    member_probs: np.ndarray  # [K, N, C]

    def __len__(self) -> int:
        return len(self.mean)


class LengthPredictor:
    def __init__(self, params, meta: dict, tokenizer=None, encoder=None,
                 encoder_path: str | None = None):
        """encoder: the SentenceEncoder of a checkpoint trained with one (meta["encoder"]);
        None loads it from meta's path (or `encoder_path`, for a moved directory) after
        checking its fingerprint."""
        self.meta = meta
        self.feature_spec = feat.FeatureSpec.from_dict(meta["feature_spec"])
        self.model_spec = model_lib.ModelSpec(**meta["model_spec"])
        self.params = params
        self.y_mean, self.y_std = float(meta["y_mean"]), float(meta["y_std"])
        self.bucket_edges = tuple(meta["bucket_edges"])
        self.interval = float(meta["interval"])
        self.interval_scale = float(meta["interval_scale"])
        # lengths served = learned lengths x output_scale (a scaled-down replay of the data)
        self.output_scale = float(meta.get("output_scale", 1.0))
        self._tokenizer = tokenizer
        self._serving = model_lib.serving_params(params)  # kept on device between calls
        self.encoder = encoder if encoder is not None else _load_encoder(meta, encoder_path)
        # an EmbeddingCache of this encoder (training and evaluation set one: their prompts
        # repeat); serving leaves it None, so every prompt is encoded
        self.embedding_cache = None

    @property
    def num_members(self) -> int:
        return int(jax.tree_util.tree_leaves(self.params)[0].shape[0])

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from llmserve.predictor.data import tokenizer_for
            self._tokenizer = tokenizer_for(self.feature_spec.tokenizer)
        return self._tokenizer

    # ---- loading -----------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str, expect_tokenizer: str | None = None,
             encoder_path: str | None = None) -> LengthPredictor:
        """Restore a checkpoint written by train_and_evaluate (the `checkpoint` directory, or
        the workdir holding it). ValueError names what is missing or incompatible, including
        a sentence encoder directory that is gone or holds another model (`encoder_path`
        points at a moved copy)."""
        params, meta = load_checkpoint(path)
        if expect_tokenizer is not None and meta["feature_spec"].get("tokenizer") != \
                expect_tokenizer:
            raise ValueError(f"predictor checkpoint {path!r} was trained with the tokenizer of "
                             f"{meta['feature_spec'].get('tokenizer')!r}, but the serving "
                             f"model is {expect_tokenizer!r}: its token ids would mean "
                             "something else")
        p = cls(params, meta, encoder_path=encoder_path)
        p.warmup()
        return p

    def warmup(self, rows: int = 8, max_ngrams: int = 8192) -> int:
        """Compile the forward for batches of up to `rows` prompts holding up to `max_ngrams`
        n-grams (the shapes of a serving step with a few arrivals), so a scheduler does not
        stall on a compile inside its first steps (~0.3 s each here). -> shapes compiled."""
        n, pad = 0, 256
        while pad <= max_ngrams:
            z = np.zeros(pad, np.int32)
            b = feat.Batch(z, z, np.zeros(pad, np.float32),
                           np.zeros((rows, feat.NUM_DENSE), np.float32), self._enc_rows(rows))
            jax.block_until_ready(model_lib.serving_apply(self._serving, b))
            n, pad = n + 1, pad * 2
        return n

    # ---- prediction --------------------------------------------------------------------------
    def encode(self, prompts) -> list[list[int]]:
        if isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and prompts
                                        and isinstance(prompts[0], (int, np.integer))):
            prompts = [prompts]
        out = []
        for i, p in enumerate(prompts):
            if isinstance(p, str):
                out.append(self.tokenizer.encode(p))
            elif isinstance(p, (list, tuple, np.ndarray)):
                out.append([int(t) for t in p])
            else:
                raise ValueError(
                    f"prompt {i} must be a string or a list of token ids, got "
                    f"{type(p).__name__}")
        return out

    def _enc_rows(self, rows: int, emb=None):
        if self.encoder is None:
            return None
        out = np.zeros((rows, self.model_spec.encoder_dim), np.float32)
        if emb is not None:
            out[:len(emb)] = emb
        return out

    def embed(self, token_ids: Sequence[Sequence[int]], texts=None) -> np.ndarray:
        """Sentence embeddings of the prompts: of texts[i] when given (not None), else of
        the serving tokenizer's decode of token_ids[i]."""
        src = self.embedding_cache if self.embedding_cache is not None else self.encoder
        return src.embed(prompt_texts(token_ids, texts, self.tokenizer))

    def raw(self, token_ids: Sequence[Sequence[int]], texts=None):
        """-> (mu [K,N], sigma [K,N]) in log(1 + length) and probs [K,N,C]. texts: the
        prompts' texts (or None each) for a sentence encoder; else the ids are decoded."""
        n = len(token_ids)
        rows = max(8, 1 << max(0, n - 1).bit_length())  # bounded number of compiled shapes
        batch = feat.featurize(token_ids, self.feature_spec, rows)
        if self.encoder is not None:
            batch.enc = self._enc_rows(rows, self.embed(token_ids, texts))
        mu, sigma, probs = jax.device_get(model_lib.serving_apply(self._serving, batch))
        return mu[:, :n] * self.y_std + self.y_mean, sigma[:, :n] * self.y_std, probs[:, :n]

    def predict(self, prompts, texts=None) -> Prediction:
        """prompts: texts or token-id lists (one prompt or a batch). texts: optionally the
        known text of id prompts (a sentence encoder then reads it instead of a decode)."""
        ids = self.encode(prompts)
        if self.encoder is not None:
            one = isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and prompts
                                               and isinstance(prompts[0], (int, np.integer)))
            batch = [prompts] if one else list(prompts)
            given = list(texts) if texts is not None else [None] * len(batch)
            if len(given) != len(batch):
                raise ValueError(f"predict: {len(given)} texts for {len(batch)} prompts")
            texts = [p if isinstance(p, str) else t for p, t in zip(batch, given)]
        mu, sigma, probs = self.raw(ids, texts)
        m = mu.mean(0)
        std = np.sqrt(np.maximum((sigma ** 2 + mu ** 2).mean(0) - m ** 2, 1e-12))
        std = std * self.interval_scale
        z = _z(self.interval)
        expected = np.mean(np.exp(mu + 0.5 * sigma ** 2), 0) - 1
        c = self.output_scale
        return Prediction(mean=expected * c, median=np.expm1(m) * c,
                          lower=np.maximum(np.expm1(m - z * std), 0) * c,
                          upper=np.expm1(m + z * std) * c, bucket_probs=probs.mean(0), log_mean=m,
                          log_std=std, member_mu=mu, member_sigma=sigma, member_probs=probs)

    def calibrate(self, ds, out_of_bag=None) -> float:
        """Scale the interval so it covers `interval` of the observed lengths of ds (the
        validation split) -> the scale, also kept on self.

        out_of_bag: (train_ds, mask [K, N]) with mask[k, i] true where member k never saw
        training prompt i. Those prompts are scored by the mixture of the members that did
        not see them and pooled with ds: a calibration set ~8x the validation split, and one
        the members' early stopping (chosen on validation) did not tune."""
        if ds is None and out_of_bag is None:
            raise ValueError("calibrate needs a dataset or out-of-bag training prompts")
        self.interval_scale = 1.0
        zs = []
        if ds is not None:  # None: trained on validation too, only out-of-bag prompts left
            p = self.predict(ds.prompts, ds.texts)
            pidx, y = ds.per_sample()
            zs.append(np.abs(np.log1p(y) - p.log_mean[pidx]) / p.log_std[pidx])
        if out_of_bag is not None:
            train_ds, mask = out_of_bag
            mask = np.asarray(mask, bool)
            mu, sigma, _ = self.raw(train_ds.prompts, train_ds.texts)
            cnt = mask.sum(0)
            keep = cnt > 0
            m = np.where(mask, mu, 0).sum(0) / np.maximum(cnt, 1)
            second = np.where(mask, sigma ** 2 + mu ** 2, 0).sum(0) / np.maximum(cnt, 1)
            std = np.sqrt(np.maximum(second - m ** 2, 1e-12))
            tidx, ty = train_ds.per_sample()
            sel = keep[tidx]
            zs.append(np.abs(np.log1p(ty[sel]) - m[tidx[sel]]) / std[tidx[sel]])
        self.interval_scale = float(np.quantile(np.concatenate(zs), self.interval) /
                                    _z(self.interval))
        self.meta["interval_scale"] = self.interval_scale
        return self.interval_scale


def rescale_checkpoint(src: str, dst: str, output_scale: float) -> str:
    """Copy the checkpoint at src to dst/checkpoint with every served length (mean, median,
    interval) multiplied by output_scale: the predictor for a replay whose output lengths
    were scaled by the same factor (write_heldout_workload). Bucket probabilities and the
    log-space fields stay those of the learned lengths. -> the new checkpoint directory."""
    if not output_scale > 0:
        raise ValueError(f"output_scale must be > 0, got {output_scale}")
    from llmserve.predictor.train import save_checkpoint
    params, meta = load_checkpoint(src)
    meta = dict(meta, output_scale=float(output_scale) * float(meta.get("output_scale", 1.0)))
    out = os.path.join(os.path.abspath(dst), "checkpoint")
    save_checkpoint(out, params, meta)
    return out


def prompt_texts(token_ids, texts, tokenizer) -> list[str]:
    """Each prompt's text (texts[i]; texts may be None), or the serving tokenizer's decode of
    its ids where none is known: what a sentence encoder reads."""
    if texts is None:
        texts = [None] * len(token_ids)
    return [t if t is not None else tokenizer.decode(ids) for ids, t in zip(token_ids, texts)]


def _load_encoder(meta: dict, path: str | None = None):
    """The sentence encoder a checkpoint was trained with (None if it has none), after checking
    that its directory still holds the same model."""
    info = meta.get("encoder")
    if not info:
        return None
    from llmserve.predictor.encoder import SentenceEncoder, fingerprint
    path = path or info["path"]
    if not os.path.isdir(path):
        raise ValueError(f"the predictor was trained with the sentence encoder {info['path']!r} "
                         f"(features.encoder), but {path!r} does not exist: copy the model "
                         "there or pass its new location as encoder_path")
    got = fingerprint(path)
    if got != info["fingerprint"]:
        raise ValueError(f"sentence encoder {path!r} has changed since the predictor was "
                         f"trained: fingerprint {got} (config.json, vocab.txt, safetensors "
                         f"size), the checkpoint expects {info['fingerprint']}")
    enc = SentenceEncoder(path, int(info["max_tokens"]))
    if enc.dim != int(info["dim"]):
        raise ValueError(f"sentence encoder {path!r} gives {enc.dim}-wide embeddings, the "
                         f"checkpoint expects {info['dim']}")
    return enc


def _find_dir(path: str) -> str:
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise ValueError(f"predictor checkpoint {path!r} does not exist")
    if not os.path.isdir(os.path.join(path, "meta")) and os.path.isdir(
            os.path.join(path, "checkpoint")):
        path = os.path.join(path, "checkpoint")
    return path


def load_checkpoint(path: str):
    """-> (params, meta) after checking the checkpoint is whole and matches its own specs."""
    import orbax.checkpoint as ocp
    path = _find_dir(path)
    missing = [x for x in ("meta", "params") if not os.path.isdir(os.path.join(path, x))]
    if missing:
        raise ValueError(f"predictor checkpoint {path!r} is partial: missing {missing} "
                         "(was the save interrupted? retrain or copy it again)")
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        try:
            meta = ckptr.restore(path, ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:
            raise ValueError(f"predictor checkpoint {path!r}: cannot read 'meta': {e}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise ValueError(f"predictor checkpoint {path!r} is incompatible: format {got!r}, "
                             f"expected {FORMAT!r}")
        absent = [k for k in _META_KEYS if k not in meta]
        if absent:
            raise ValueError(f"predictor checkpoint {path!r} is incompatible: meta lacks "
                             f"{absent}")
        try:
            params = ckptr.restore(path, ocp.args.Composite(
                params=ocp.args.StandardRestore()))["params"]
        except Exception as e:
            raise ValueError(f"predictor checkpoint {path!r}: cannot restore 'params' "
                             f"(partial or corrupt): {e}") from None
    try:
        mspec = model_lib.ModelSpec(**meta["model_spec"])
        feat.FeatureSpec.from_dict(meta["feature_spec"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"predictor checkpoint {path!r} is incompatible: {e}") from None
    want = jax.eval_shape(lambda: model_lib.ensemble_init(mspec, jax.random.PRNGKey(0),
                                                          int(meta["ensemble_size"])))
    want_flat = {jax.tree_util.keystr(k): v.shape
                 for k, v in jax.tree_util.tree_leaves_with_path(want)}
    got_flat = {jax.tree_util.keystr(k): tuple(np.shape(v))
                for k, v in jax.tree_util.tree_leaves_with_path(params)}
    for name in sorted(set(want_flat) | set(got_flat)):
        if want_flat.get(name) != got_flat.get(name):
            raise ValueError(f"predictor checkpoint {path!r} is incompatible: parameter "
                             f"{name} has shape {got_flat.get(name)}, the checkpoint's model "
                             f"spec needs {want_flat.get(name)}")
    return params, meta
