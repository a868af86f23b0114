"""The offline Triton inspection (pallas_kernels/triton_ir.py).

Capturing the Triton module needs only JAX. Compiling it needs the optional `triton`
package (setup.py extra `kernel-ir`, not in CI); where it is installed, the test checks
the property the row-prefetching loop exists for: the K/V loads get num_stages - 1
shared-memory buffers, against one for the first version's loop.
"""
from __future__ import annotations

import importlib.util

import pytest

from pallas_kernels import paged_decode_attention, ragged_paged_attention, triton_ir


def test_captures_one_module_per_pallas_call():
    dec = triton_ir.triton_modules(paged_decode_attention, *triton_ir.kernel_specs("decode"))
    rag = triton_ir.triton_modules(ragged_paged_attention,
                                   *triton_ir.kernel_specs("ragged", batch=16, num_tokens=64))
    assert len(dec) == 1 and "tt.func" in dec[0] and "scf.for" in dec[0]
    assert len(rag) == 2 and all("tt.dot" in m for m in rag)   # two tile classes
    with pytest.raises(ValueError, match="kernel: expected"):
        triton_ir.kernel_specs("prefill")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                    reason="optional triton package not installed (extra kernel-ir)")
def test_prefetched_rows_are_pipelined_num_stages_minus_one_deep():
    specs = triton_ir.kernel_specs("decode")

    def depths(**kw):
        (mod,) = triton_ir.triton_modules(lambda *a: paged_decode_attention(*a, **kw), *specs)
        rep = triton_ir.compile_report(mod, num_warps=2, num_stages=kw["num_stages"])
        return sorted(d for d, shape, _ in rep["pipelined_buffers"] if "x128" in shape), rep

    new, rep = depths(num_stages=4)
    old, _ = depths(num_stages=4, prefetch_rows=False)
    assert new == [3, 3]                      # K and V, 3 tiles in flight
    assert max(old) == 1                      # the first loop: one buffer, a wait per tile
    assert rep["spill_store_bytes"] in (0, None)
