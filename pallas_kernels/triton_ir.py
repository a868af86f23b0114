"""What the Triton compiler makes of our kernels, on a machine without a GPU.

`triton_modules(fn, *specs)` lowers fn for CUDA (as the lowering tests do) and returns the
Triton-dialect module of each pallas_call. `compile_report(ttir, ...)` compiles one with
the Python `triton` package (optional: `pip install triton`, the version jaxlib bundles
is best) for sm_90 and reports what decides a memory-bound kernel's speed: shared-memory
bytes, registers and spills (from ptxas), the pipeline depth of each shared-memory buffer
(the leading dimension of its `local_alloc`), how many async copies a loop keeps in
flight (`async_wait num`), and whether loads went through cp.async. The first version of
the decode loop showed one buffer and a wait for every tile here, and V staged in 255
registers; that finding, not a GPU profile, led to the row-prefetching loop (see
BENCHMARKS.md). XLA compiles with its own bundled Triton, so treat this as a strong hint.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile

import jax
import jax.numpy as jnp


from pallas_kernels import _compat


def triton_modules(fn, *specs) -> list[str]:
    """Triton-dialect MLIR text of every pallas_call in jax.jit(fn) lowered for CUDA."""
    with _compat.capture_triton_modules() as modules:
        _compat.lower_for_cuda(fn, *specs)
    return list(modules)


def _ptxas_report(triton_mod, ptx: str) -> dict:
    ptxas = os.path.join(os.path.dirname(triton_mod.__file__), "backends", "nvidia", "bin",
                         "ptxas")
    if not os.path.exists(ptxas):
        return {}
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        out = subprocess.run([ptxas, "-arch=sm_90a", "-v", src, "-o", os.path.join(d, "k.o")],
                             capture_output=True, text=True, timeout=120)
    text = out.stdout + out.stderr
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.search(r"(\d+) bytes spill stores", text)
    return {"registers": int(regs.group(1)) if regs else None,
            "spill_store_bytes": int(spill.group(1)) if spill else None}


def compile_report(ttir: str, *, num_warps: int, num_stages: int, capability: int = 90) -> dict:
    """Compiles one module with Python Triton and summarises it (ImportError without it)."""
    import triton
    from triton.backends.compiler import GPUTarget

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "kernel.ttir")
        with open(path, "w") as f:
            f.write(ttir)
        kernel = triton.compile(path, target=GPUTarget("cuda", capability, 32),
                                options={"num_warps": num_warps, "num_stages": num_stages})
    ttgir, ptx = kernel.asm["ttgir"], kernel.asm["ptx"]
    buffers = re.findall(r"ttg\.local_alloc : \(\) -> !ttg\.memdesc<(\d+)x([0-9x]+)x(\w+),",
                         ttgir)
    return {
        "triton": triton.__version__,
        "shared_bytes": kernel.metadata.shared,
        # (depth, tile shape, dtype) of each pipelined buffer
        "pipelined_buffers": [(int(n), shape, dt) for n, shape, dt in buffers],
        "async_wait_nums": [int(n) for n in re.findall(r"async_wait.*?\{num = (\d+)", ttgir)],
        "cp_async": ptx.count("cp.async.cg") + ptx.count("cp.async.ca"),
        "ld_global_v4": ptx.count("ld.global.v4"),
        "mma": ptx.count("mma.sync"),
        "wgmma": ptx.count("wgmma.mma_async"),
        "ttgir_chars": len(ttgir),
        **_ptxas_report(triton, ptx),
    }




def kernel_specs(kernel: str, *, batch=64, context=2048, num_tokens=640, num_heads=32,
                 num_kv_heads=8, head_dim=128, page_size=16, num_pages=8192,
                 dtype="bfloat16"):
    """ShapeDtypeStructs of a decode or ragged call (default: Llama-3-8B, bf16, page 16)."""
    s, i32 = jax.ShapeDtypeStruct, jnp.int32
    pool = s((num_kv_heads, num_pages, page_size, head_dim), dtype)
    max_pages = -(-context // page_size)
    if kernel == "decode":
        return (s((batch, num_heads, head_dim), dtype), pool, pool, s((batch, max_pages), i32),
                s((batch,), i32))
    if kernel == "ragged":
        return (s((num_tokens, num_heads, head_dim), dtype), pool, pool,
                s((batch, max_pages), i32), s((batch,), i32), s((batch + 1,), i32), s((), i32))
    raise ValueError(f"kernel: expected 'decode' or 'ragged', got {kernel!r}")
