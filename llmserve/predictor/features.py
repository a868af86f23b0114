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
    word_orders: tuple[int, ...] = ()  # + hashed n-grams of words (byte-level ids only: a
                                     # word is a run of ASCII letters/digits or non-ASCII
                                     # bytes, case-folded), into the same bag
    word_weight: float = 1.0         # the word view's total weight per prompt (the token
                                     # n-grams' is 1)

    def __post_init__(self):
        if self.table_size < 2:
            raise ValueError(f"feature spec table_size must be >= 2, got {self.table_size}")
        orders = tuple(self.ngram_orders)
        if not orders or any(not isinstance(n, int) or not 1 <= n <= len(_POS_MULT)
                             for n in orders):
            raise ValueError(f"feature spec ngram_orders must be ints in 1..{len(_POS_MULT)}, "
                             f"got {self.ngram_orders!r}")
        object.__setattr__(self, "ngram_orders", orders)
        words = tuple(self.word_orders)
        if any(not isinstance(n, int) or not 1 <= n <= len(_POS_MULT) for n in words):
            raise ValueError(f"feature spec word_orders must be ints in 1..{len(_POS_MULT)}, "
                             f"got {self.word_orders!r}")
        object.__setattr__(self, "word_orders", words)
        if not self.word_weight > 0:
            raise ValueError(f"feature spec word_weight must be > 0, got {self.word_weight}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"feature spec weighting must be one of {WEIGHTINGS}, "
                             f"got {self.weighting!r}")
        if self.max_prompt_tokens < 1:
            raise ValueError(f"feature spec max_prompt_tokens must be >= 1, "
                             f"got {self.max_prompt_tokens}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["ngram_orders"] = list(self.ngram_orders)
        d["word_orders"] = list(self.word_orders)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FeatureSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown feature spec field(s) {unknown}; known: {sorted(known)}")
        d = dict(d)
        for k in ("ngram_orders", "word_orders"):
            if k in d:
                d[k] = tuple(d[k])
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
    if parts:
        buckets, counts = np.unique(np.concatenate(parts), return_counts=True)
        ids = buckets.astype(np.int32)
        w = _weights(counts, np.zeros(len(counts), np.int64), 1, spec.weighting)
    else:
        ids, w = np.zeros(0, np.int32), np.zeros(0, np.float32)
    if spec.word_orders:
        wid, ww, _ = _word_view(t, np.zeros(len(t), np.int64), 1, spec)
        ids, w = np.concatenate([ids, wid]), np.concatenate([w, ww])
    return ids, w


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
    ids = (uniq % spec.table_size).astype(np.int32)
    if spec.word_orders:
        wid, ww, wseg = _word_view(flat[:total], seg, len(cut), spec)
        order = np.argsort(np.concatenate([segs, wseg]), kind="stable")  # grouped by prompt
        ids = np.concatenate([ids, wid])[order]
        w = np.concatenate([w, ww])[order]
        segs = np.concatenate([segs, wseg])[order]
    return ids, w, segs


# Byte ids that belong to words: ASCII letters and digits, and every non-ASCII byte (UTF-8
# letters of other scripts); ids >= 256 (specials) never do. Letters fold to lower case.
_IN_WORD = np.zeros(512, bool)
_IN_WORD[[*range(48, 58), *range(65, 91), *range(97, 123), *range(128, 256)]] = True
_FOLD = np.arange(512, dtype=np.uint64)
_FOLD[65:91] += np.uint64(32)
_WORD_P = np.uint64(0x100000001B3)   # polynomial base of a word's hash over its bytes


def _word_view(flat: np.ndarray, seg: np.ndarray, num_segments: int, spec: FeatureSpec
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hashed word n-grams of token ids `flat` (prompt index `seg`, grouped) -> (bucket ids,
    weights: each prompt's sum to spec.word_weight under spec.weighting, prompt index).
    A word's hash is sum((folded byte + 1) x P^position) mod 2^64, then mixed like a token."""
    t = np.minimum(np.asarray(flat, np.int64), 511)
    seg = np.asarray(seg, np.int64)
    n = len(t)
    if not n:
        return np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    inw = _IN_WORD[t]
    new_seg = np.ones(n, bool)
    new_seg[1:] = seg[1:] != seg[:-1]
    prev_in = np.zeros(n, bool)
    prev_in[1:] = inw[:-1]
    start = inw & (new_seg | ~prev_in)
    starts = np.flatnonzero(start)
    if not len(starts):
        return np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    run = np.cumsum(start) - 1                      # run index of each in-word position
    pos = np.flatnonzero(inw)
    r = run[pos]
    k = pos - starts[r]                             # position within its word
    with np.errstate(over="ignore"):
        powers = np.cumprod(np.concatenate([[np.uint64(1)],
                                            np.full(int(k.max()), _WORD_P, np.uint64)]))
        terms = (_FOLD[t[pos]] + np.uint64(1)) * powers[k]
        # pos is sorted by run, so each run's terms are contiguous: one reduceat
        first = np.flatnonzero(np.concatenate([[True], r[1:] != r[:-1]]))
        words = np.add.reduceat(terms, first)
        words = (words ^ np.uint64(0xA5A5A5A5)) * _MIX
        words ^= words >> np.uint64(29)
        wseg = seg[starts]
        keys = []
        for order in spec.word_orders:
            m = len(words) - order + 1
            if m <= 0:
                continue
            same = np.ones(m, bool)
            for j in range(1, order):
                same &= wseg[j:j + m] == wseg[:m]
            h = np.full(m, np.uint64(order) * np.uint64(_POS_MULT[-1]) + np.uint64(spec.hash_seed) +
                        np.uint64(7), np.uint64)
            for j in range(order):
                h = (h ^ (words[j:j + m] + _MIX)) * np.uint64(_POS_MULT[j])
                h ^= h >> np.uint64(31)
            keys.append(wseg[:m][same] * spec.table_size +
                        (h[same] % np.uint64(spec.table_size)).astype(np.int64))
    if not keys:
        return np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    uniq, counts = np.unique(np.concatenate(keys), return_counts=True)
    segs = uniq // spec.table_size
    w = _weights(counts, segs, num_segments, spec.weighting) * np.float32(spec.word_weight)
    return (uniq % spec.table_size).astype(np.int32), w.astype(np.float32), segs


def dense_features(prompt_len: int) -> np.ndarray:
    """Log prompt length (and its square), scaled to about unit range."""
    x = np.log1p(prompt_len) / 8.0
    return np.array([x, x * x], np.float32)


@dataclasses.dataclass
class Batch:
    """A ragged batch: n-gram `ids` of all prompts, their `segments` (prompt index) and
    `weights` (0 on padding), `dense` [B, NUM_DENSE], and with a sentence encoder (optional)
    each prompt's embedding `enc` [B, D] (zeros on padding rows)."""
    ids: np.ndarray
    segments: np.ndarray
    weights: np.ndarray
    dense: np.ndarray
    enc: np.ndarray | None = None

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
             dense: np.ndarray, enc: np.ndarray | None = None) -> Batch:
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
    return Batch(flat_ids, seg, flat_w, np.asarray(dense, np.float32),
                 None if enc is None else np.asarray(enc, np.float32))
