"""Padding buckets: every batch is padded to one of a known, bounded set of shapes.

A shape is (num_tokens, num_seqs, max_blocks_per_seq, decode_only). num_seqs is tied to
num_tokens (min(tokens, max_num_seqs)) since a batch never has more sequences than tokens;
decode_only (one token per sequence, routed to the decode kernel) exists for the token
buckets that fit max_num_seqs. So the set is about |token buckets| x |block-table buckets|
x 2, all of it compiled by a warm-up.

Below the smallest token bucket, decode batches (one token per sequence) get buckets of their
own (`decode_buckets`, 2, 4, 8 sequences): a batch-1 decode step then computes two rows
(layers, vocabulary projection, sampler), not min_tokens rows of which all but one are padding.
Not one row: with a single token XLA (CPU) turns the KV-cache scatter into an update that
copies the whole donated cache every step (430 ms a step at 2048 blocks, 3.7 ms with two rows).
"""
from __future__ import annotations

import bisect


def powers_of_two(lo: int, hi: int) -> list[int]:
    out, v = [], lo
    while v < hi:
        out.append(v)
        v *= 2
    out.append(hi)
    return out


class Buckets:
    def __init__(self, max_num_batched_tokens: int, max_num_seqs: int, max_blocks_per_seq: int,
                 min_tokens: int = 16, min_blocks: int = 8,
                 decode_buckets: tuple[int, ...] = (2, 4, 8)):
        self.token_buckets = powers_of_two(min(min_tokens, max_num_batched_tokens),
                                           max_num_batched_tokens)
        self.decode_buckets = sorted(d for d in decode_buckets
                                     if d < self.token_buckets[0] and d <= max_num_seqs)
        self.block_buckets = powers_of_two(min(min_blocks, max_blocks_per_seq), max_blocks_per_seq)
        self.max_num_seqs = max_num_seqs

    def seqs_for(self, tokens: int) -> int:
        return min(tokens, self.max_num_seqs)

    def pick(self, num_tokens: int, num_seqs: int, max_blocks: int) -> tuple[int, int, int]:
        """(tokens, seqs, blocks) bucket; the runner adds the decode_only flag."""
        d = bisect.bisect_left(self.decode_buckets, num_tokens)
        i = bisect.bisect_left(self.token_buckets, max(num_tokens, num_seqs))
        if num_tokens == num_seqs and d < len(self.decode_buckets):
            t = self.decode_buckets[d]
        elif i == len(self.token_buckets):
            raise ValueError(f"batch of {num_tokens} tokens exceeds the largest bucket "
                             f"{self.token_buckets[-1]}")
        else:
            t = self.token_buckets[i]
        j = bisect.bisect_left(self.block_buckets, max_blocks)
        if j == len(self.block_buckets):
            raise ValueError(f"{max_blocks} blocks per sequence exceeds the largest bucket "
                             f"{self.block_buckets[-1]}")
        return t, self.seqs_for(t), self.block_buckets[j]

    def all_shapes(self) -> list[tuple[int, int, int, bool]]:
        shapes = [(t, t, b, True) for t in self.decode_buckets for b in self.block_buckets]
        for t in self.token_buckets:
            s = self.seqs_for(t)
            for b in self.block_buckets:
                shapes.append((t, s, b, False))
                if s == t:
                    shapes.append((t, s, b, True))
        return shapes
