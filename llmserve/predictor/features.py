"""Token ids -> the predictor's inputs: hashed n-gram ids for an embedding bag + dense features.

The ids come from the serving model's tokenizer (byte-level for dummy models), so the
predictor sees exactly what the scheduler sees. A prompt becomes the set of its distinct
hashed n-grams (orders from the spec, e.g. unigrams and bigrams), each weighted by its share
of the prompt's n-grams; the model sums their embeddings (a mean-pooled bag). A batch is
ragged: the n-grams of all prompts are concatenated with a segment id per n-gram, and the
total is padded to a power of two so jit compiles a bounded number of shapes.
"""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np

_MIX = np.uint64(0x9E3779B97F4A7C15)
_POS_MULT = (0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93, 0xA0761D6478BD642F,
             0xE7037ED1A0B428DB, 0x8EBC6AF09C88C6E3)
NUM_DENSE = 2
WEIGHTINGS = ("share", "log_l2")


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    table_size: int = 2**16          # hash buckets (rows of each member's embedding table)
    ngram_orders: tuple[int, ...] = (1, 2)
    max_prompt_tokens: int = 1024    # longer prompts keep their first 3/4 and last 1/4
    hash_seed: int = 0
    tokenizer: str = "tiny"          # the serving model (preset name or checkpoint dir)
    weighting: str = "share"         # n-gram weight: share (count / total) or log_l2
                                     # (1 + log count, L2-normalised: TF-style damping)

    def __post_init__(self):
        if self.table_size < 2:
            raise ValueError(f"feature spec table_size must be >= 2, got {self.table_size}")
        orders = tuple(self.ngram_orders)
        if not orders or any(not isinstance(n, int) or not 1 <= n <= len(_POS_MULT)
                             for n in orders):
            raise ValueError(f"feature spec ngram_orders must be ints in 1..{len(_POS_MULT)}, "
                             f"got {self.ngram_orders!r}")
        object.__setattr__(self, "ngram_orders", orders)
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"feature spec weighting must be one of {WEIGHTINGS}, "
                             f"got {self.weighting!r}")
        if self.max_prompt_tokens < 1:
            raise ValueError(f"feature spec max_prompt_tokens must be >= 1, "
                             f"got {self.max_prompt_tokens}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["ngram_orders"] = list(self.ngram_orders)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FeatureSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown feature spec field(s) {unknown}; known: {sorted(known)}")
        d = dict(d)
        if "ngram_orders" in d:
            d["ngram_orders"] = tuple(d["ngram_orders"])
        return cls(**d)


def _truncate(ids: np.ndarray, limit: int) -> np.ndarray:
    if len(ids) <= limit:
        return ids
    tail = limit // 4  # the end of a prompt often holds the actual request
    return np.concatenate([ids[:limit - tail], ids[len(ids) - tail:]])


def hashed_ngrams(ids: Sequence[int], spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    """-> (distinct bucket ids, weights summing to 1) of one prompt's n-grams."""
    t = _truncate(np.asarray(ids, dtype=np.uint64), spec.max_prompt_tokens)
    parts = []
    with np.errstate(over="ignore"):  # uint64 wrap-around is the hash
        for n in spec.ngram_orders:
            if len(t) < n:
                continue
            h = np.full(len(t) - n + 1, np.uint64(n) * _MIX + np.uint64(spec.hash_seed),
                        dtype=np.uint64)
            for j in range(n):
                h = (h ^ (t[j:len(t) - n + 1 + j] + _MIX)) * np.uint64(_POS_MULT[j])
                h ^= h >> np.uint64(31)
            parts.append(h % np.uint64(spec.table_size))
    if not parts:
        return np.zeros(0, np.int32), np.zeros(0, np.float32)
    buckets, counts = np.unique(np.concatenate(parts), return_counts=True)
    return buckets.astype(np.int32), _weights(counts, np.zeros(len(counts), np.int64), 1,
                                              spec.weighting)


def _weights(counts, segments, num_segments, weighting):
    """Per-n-gram weights from per-(prompt, n-gram) counts, normalised within each prompt."""
    if weighting == "share":
        w = counts.astype(np.float64)
        return (w / np.bincount(segments, w, num_segments)[segments]).astype(np.float32)
    w = 1.0 + np.log(counts.astype(np.float64))
    norm = np.sqrt(np.bincount(segments, w * w, num_segments))
    return (w / norm[segments]).astype(np.float32)


def hashed_ngrams_batch(prompts: Sequence[Sequence[int]], spec: FeatureSpec
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every prompt's hashed_ngrams at once, without a Python loop over tokens or n-grams
    (the serving path): -> (bucket ids, weights, prompt index), grouped by prompt in order.
    Same buckets and weights as hashed_ngrams on each prompt."""
    limit = spec.max_prompt_tokens
    tail = limit // 4
    cut = [p if len(p) <= limit else list(p[:limit - tail]) + list(p[len(p) - tail:])
           for p in prompts]
    lens = np.fromiter((len(p) for p in cut), np.int64, len(cut))
    total = int(lens.sum())
    if not total:
        return np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    nmax = max(spec.ngram_orders)
    flat = np.zeros(total + nmax, np.uint64)
    flat[:total] = np.fromiter(itertools.chain.from_iterable(cut), np.int64, total)
    seg = np.repeat(np.arange(len(cut)), lens)
    # tokens left in the prompt from each position: an n-gram starts where >= n remain
    left = np.repeat(np.cumsum(lens), lens) - np.arange(total)
    keys = []
    with np.errstate(over="ignore"):
        for n in spec.ngram_orders:
            ok = left >= n
            h = np.full(total, np.uint64(n) * _MIX + np.uint64(spec.hash_seed), np.uint64)
            for j in range(n):
                h = (h ^ (flat[j:total + j] + _MIX)) * np.uint64(_POS_MULT[j])
                h ^= h >> np.uint64(31)
            keys.append(seg[ok] * spec.table_size + (h[ok] % np.uint64(spec.table_size)
                                                     ).astype(np.int64))
    uniq, counts = np.unique(np.concatenate(keys), return_counts=True)
    segs = uniq // spec.table_size
    w = _weights(counts, segs, len(cut), spec.weighting)
    return (uniq % spec.table_size).astype(np.int32), w, segs


def dense_features(prompt_len: int) -> np.ndarray:
    """Log prompt length (and its square), scaled to about unit range."""
    x = np.log1p(prompt_len) / 8.0
    return np.array([x, x * x], np.float32)


@dataclasses.dataclass
class Batch:
    """A ragged batch: n-gram `ids` of all prompts, their `segments` (prompt index) and
    `weights` (0 on padding), and `dense` [B, NUM_DENSE]."""
    ids: np.ndarray
    segments: np.ndarray
    weights: np.ndarray
    dense: np.ndarray

    @property
    def size(self) -> int:
        return len(self.dense)


def _pad_len(n: int, minimum: int = 256) -> int:
    return max(minimum, 1 << max(0, n - 1).bit_length())


def featurize(prompts: Sequence[Sequence[int]], spec: FeatureSpec, rows: int | None = None
              ) -> Batch:
    """Token-id lists -> a padded ragged Batch (vectorised; `rows` >= len(prompts) pads the
    batch with empty prompts so a jitted model sees few distinct shapes)."""
    n = len(prompts)
    rows = n if rows is None else rows
    if rows < n:
        raise ValueError(f"featurize: rows={rows} is fewer than the {n} prompts")
    ids, w, seg = hashed_ngrams_batch(prompts, spec)
    padded = _pad_len(len(ids))
    flat_ids = np.zeros(padded, np.int32)
    flat_w = np.zeros(padded, np.float32)
    flat_seg = np.zeros(padded, np.int32)
    flat_ids[:len(ids)], flat_w[:len(ids)], flat_seg[:len(ids)] = ids, w, seg
    x = np.log1p(np.fromiter((len(p) for p in prompts), np.float64, n)) / 8.0
    dense = np.zeros((rows, NUM_DENSE), np.float32)
    dense[:n, 0], dense[:n, 1] = x, x * x
    return Batch(flat_ids, flat_seg, flat_w, dense)


def assemble(ids: Sequence[np.ndarray], weights: Sequence[np.ndarray],
             dense: np.ndarray) -> Batch:
    """Per-prompt bags (from hashed_ngrams) -> a padded ragged Batch."""
    lens = [len(i) for i in ids]
    total = sum(lens)
    padded = _pad_len(total)
    flat_ids = np.zeros(padded, np.int32)
    flat_w = np.zeros(padded, np.float32)
    seg = np.zeros(padded, np.int32)
    if total:
        flat_ids[:total] = np.concatenate(ids)
        flat_w[:total] = np.concatenate(weights)
        seg[:total] = np.repeat(np.arange(len(ids), dtype=np.int32), lens)
    return Batch(flat_ids, seg, flat_w, np.asarray(dense, np.float32))
