"""Pallas GPU kernels for paged attention, each with a plain-jnp reference."""
from pallas_kernels.paged_attention import paged_decode_attention_reference
from pallas_kernels.ragged_paged_attention import ragged_paged_attention_reference

__all__ = ["paged_decode_attention_reference", "ragged_paged_attention_reference"]
