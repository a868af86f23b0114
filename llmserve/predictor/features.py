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
from collections.abc import Sequence

import numpy as np

_MIX = np.uint64(0x9E3779B97F4A7C15)
_POS_MULT = (0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93, 0xA0761D6478BD642F,
             0xE7037ED1A0B428DB, 0x8EBC6AF09C88C6E3)
NUM_DENSE = 2


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    table_size: int = 2**16          # hash buckets (rows of each member's embedding table)
    ngram_orders: tuple[int, ...] = (1, 2)
    max_prompt_tokens: int = 1024    # longer prompts keep their first 3/4 and last 1/4
    hash_seed: int = 0
    tokenizer: str = "tiny"          # the serving model (preset name or checkpoint dir)

    def __post_init__(self):
        if self.table_size < 2:
            raise ValueError(f"feature spec table_size must be >= 2, got {self.table_size}")
        orders = tuple(self.ngram_orders)
        if not orders or any(not isinstance(n, int) or not 1 <= n <= len(_POS_MULT)
                             for n in orders):
            raise ValueError(f"feature spec ngram_orders must be ints in 1..{len(_POS_MULT)}, "
                             f"got {self.ngram_orders!r}")
        object.__setattr__(self, "ngram_orders", orders)
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
    return buckets.astype(np.int32), (counts / counts.sum()).astype(np.float32)


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


def featurize(prompts: Sequence[Sequence[int]], spec: FeatureSpec) -> Batch:
    """Token-id lists -> a padded ragged Batch."""
    bags = [hashed_ngrams(p, spec) for p in prompts]
    return assemble([b[0] for b in bags], [b[1] for b in bags],
                    np.stack([dense_features(len(p)) for p in prompts]) if len(prompts)
                    else np.zeros((0, NUM_DENSE), np.float32))


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
