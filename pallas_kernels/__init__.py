"""Pallas GPU kernels for paged attention, each with a plain-jnp reference.

`paged_decode_attention` (one query token per sequence, flash-decoding splits) and
`ragged_paged_attention` (a flat batch mixing prefill chunks and decode tokens) run on the
Pallas Triton backend on GPU, or on CPU with interpret=True; the *_reference functions are
the plain-jnp oracles and the portable fallback.
"""
from pallas_kernels.paged_attention import (
    paged_decode_attention,
    paged_decode_attention_reference,
)
from pallas_kernels.ragged_paged_attention import (
    ragged_paged_attention,
    ragged_paged_attention_reference,
    ragged_paged_attention_tiled,
)

__all__ = [
    "paged_decode_attention",
    "paged_decode_attention_reference",
    "ragged_paged_attention",
    "ragged_paged_attention_reference",
    "ragged_paged_attention_tiled",
]
