"""Measurement stages behind scripts/kernel_bench.py and scripts/gpu_check.sh.

Each stage (env, correctness, decode, ragged, autotune) runs in its own process (so a
device fault in one does not lose the others), under a time budget: it starts no new item
when too little time is left, and rewrites <out_dir>/<stage>.json after every item, so a
timeout or crash keeps what was measured. `bench_report.summarize` merges and prints them.

Timing: a function is called once (compile + first run), warmed up, then timed as the
median over `reps` repetitions of `inner` back-to-back calls ended by
jax.block_until_ready (so per-call dispatch overlaps, as in a serving loop). Bandwidth is
reported against a copy (`y = x + 1`, read + write bytes) measured in the same process.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import _compat, tuning
from pallas_kernels.paged_attention import (
    choose_num_splits,
    default_block_kv,
    paged_decode_attention,
    paged_decode_attention_reference,
)
from pallas_kernels.ragged_paged_attention import (
    query_tiles,
    ragged_paged_attention,
    ragged_paged_attention_reference,
    tile_plan,
)

MODELS = {
    "llama3-8b": {"num_heads": 32, "num_kv_heads": 8, "head_dim": 128},
    "llama2-7b": {"num_heads": 32, "num_kv_heads": 32, "head_dim": 128},
    "qwen2-0.5b": {"num_heads": 14, "num_kv_heads": 2, "head_dim": 64},
}
PAGE_SIZE = 16
# Dense bf16 tensor-core peak of H100/H200 SXM (FLOP/s), for the ragged roofline.
PEAK_FLOPS = {"bfloat16": 989e12, "float32": 495e12}
L2_BYTES = 50 * 2**20       # H100/H200 L2: problems smaller than ~2x this may stay cached
DEVICE_FATAL = ("ILLEGAL_ADDRESS", "illegal memory access", "CUDA_ERROR_LAUNCH_FAILED",
                "unspecified launch failure")


def _cdiv(a, b):
    return -(-a // b)


def _next_pow2(x):
    return 1 << max(0, int(x) - 1).bit_length()


# --------------------------------------------------------------------------- recording


class Recorder:
    """One stage's results; rewritten to <out_dir>/<stage>.json after every change."""

    def __init__(self, out_dir: str, stage: str, budget_s: float):
        self.path = os.path.join(out_dir, f"{stage}.json")
        os.makedirs(out_dir, exist_ok=True)
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + budget_s
        self.data = {"stage": stage, "budget_s": budget_s, "finished": False, "items": [],
                     "errors": [], "skipped": []}
        self.fatal = False
        self.flush()

    def time_left(self) -> float:
        return self.deadline - time.perf_counter()

    def set(self, key, value):
        self.data[key] = value
        self.flush()

    def add(self, item: dict):
        self.data["items"].append(item)
        self.flush()
        print(json.dumps(item, default=str), flush=True)

    def skip(self, what: str, why: str):
        self.data["skipped"].append({"what": what, "why": why})
        self.flush()
        print(f"SKIP {what}: {why}", flush=True)

    def error(self, what: str, exc: BaseException):
        msg = f"{type(exc).__name__}: {exc}"
        self.data["errors"].append({"what": what, "error": msg[:1500],
                                    "traceback": traceback.format_exc()[-3000:]})
        if any(s in msg for s in DEVICE_FATAL):
            self.fatal = True
            self.data["errors"][-1]["fatal"] = True
        self.flush()
        print(f"ERROR {what}: {msg[:500]}", file=sys.stderr, flush=True)

    def flush(self):
        self.data["elapsed_s"] = round(time.perf_counter() - self.t0, 2)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1, default=str)
        os.replace(tmp, self.path)

    def finish(self):
        self.data["finished"] = True
        self.flush()

    def can_start(self, what: str, need_s: float) -> bool:
        if self.fatal:
            self.skip(what, "device fault earlier in this process")
            return False
        if self.time_left() < need_s:
            self.skip(what, f"time budget ({self.time_left():.0f}s left, ~{need_s:.0f}s needed)")
            return False
        return True


# --------------------------------------------------------------------------- timing


def time_fn(fn, args, *, warmup=2, reps=5, inner=10, max_s=3.0) -> dict:
    """Median seconds per call (see the module docstring) and the first call's time."""
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    per_call = []
    spent = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        out = None
        for _ in range(inner):
            out = fn(*args)
        jax.block_until_ready(out)
        dt = time.perf_counter() - t
        per_call.append(dt / inner)
        spent += dt
        if spent > max_s and len(per_call) >= 2:
            break
    return {"median_s": statistics.median(per_call), "min_s": min(per_call),
            "reps": len(per_call), "inner": inner, "first_call_s": round(first, 3)}


def copy_bandwidth(num_bytes: int = 2**31, dtype=jnp.float32) -> dict:
    """y = x + 1 over num_bytes of x: (read + write) bytes / median time."""
    n = num_bytes // jnp.dtype(dtype).itemsize
    x = jnp.zeros((n,), dtype)
    f = jax.jit(lambda x: x + 1)
    t = time_fn(f, (x,), warmup=2, reps=7, inner=5, max_s=2.0)
    moved = 2 * n * jnp.dtype(dtype).itemsize
    del x
    return {"bytes_moved": moved, "median_s": t["median_s"],
            "gbps": moved / t["median_s"] / 1e9, "best_gbps": moved / t["min_s"] / 1e9}


# --------------------------------------------------------------------------- problems


def _shuffled_tables(key, pages_needed, rows, max_pages, num_pages):
    """Block tables [rows, max_pages] whose pages are a random permutation of the pool."""
    perm = np.asarray(jax.random.permutation(key, num_pages))
    bt = np.zeros((rows, max_pages), np.int32)
    off = 0
    for i, n in enumerate(pages_needed):
        bt[i, :n] = perm[off:off + n]
        off += n
    return bt


def decode_inputs(seed, batch, ctx, model, page_size=PAGE_SIZE, dtype=jnp.bfloat16,
                  lens=None):
    """Device arrays for decode at `ctx` tokens per sequence (or `lens`), pages shuffled."""
    cfg = MODELS[model] if isinstance(model, str) else model
    hq, hkv, d = cfg["num_heads"], cfg["num_kv_heads"], cfg["head_dim"]
    lens = np.full((batch,), ctx, np.int32) if lens is None else np.asarray(lens, np.int32)
    pages_needed = [_cdiv(int(n), page_size) for n in lens]
    max_pages = _next_pow2(max(1, max(pages_needed)))
    num_pages = max(1, sum(pages_needed))
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)
    q = jax.random.normal(k1, (batch, hq, d), dtype)
    kp = jax.random.normal(k2, (hkv, num_pages, page_size, d), dtype)
    vp = jax.random.normal(k3, (hkv, num_pages, page_size, d), dtype)
    bt = _shuffled_tables(k4, pages_needed, batch, max_pages, num_pages)
    return q, kp, vp, jnp.asarray(bt), jnp.asarray(lens)


def ragged_inputs(seed, q_lens, ctx_lens, model, *, num_tokens, num_slots,
                  page_size=PAGE_SIZE, dtype=jnp.bfloat16):
    cfg = MODELS[model] if isinstance(model, str) else model
    hq, hkv, d = cfg["num_heads"], cfg["num_kv_heads"], cfg["head_dim"]
    n = len(q_lens)
    used = int(sum(q_lens))
    pages_needed = [_cdiv(int(c), page_size) for c in ctx_lens]
    max_pages = _next_pow2(max(1, max(pages_needed)))
    num_pages = max(1, sum(pages_needed))
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)
    q = jax.random.normal(k1, (num_tokens, hq, d), dtype)
    kp = jax.random.normal(k2, (hkv, num_pages, page_size, d), dtype)
    vp = jax.random.normal(k3, (hkv, num_pages, page_size, d), dtype)
    bt = _shuffled_tables(k4, pages_needed, num_slots, max_pages, num_pages)
    qsl = np.full((num_slots + 1,), used, np.int32)
    qsl[0] = 0
    qsl[1:n + 1] = np.cumsum(q_lens)
    lens = np.zeros((num_slots,), np.int32)
    lens[:n] = ctx_lens
    return (q, kp, vp, jnp.asarray(bt), jnp.asarray(lens), jnp.asarray(qsl),
            jnp.asarray(n, jnp.int32))


def decode_bytes(lens, model, itemsize) -> int:
    """Roofline bytes: K and V of every context token once, plus q and the output."""
    cfg = MODELS[model] if isinstance(model, str) else model
    kv = int(np.sum(lens)) * cfg["num_kv_heads"] * cfg["head_dim"] * 2 * itemsize
    qo = 2 * len(lens) * cfg["num_heads"] * cfg["head_dim"] * itemsize
    return kv + qo


def ragged_roofline(q_lens, ctx_lens, model, dtype, bw_gbps) -> dict:
    cfg = MODELS[model] if isinstance(model, str) else model
    itemsize = jnp.dtype(dtype).itemsize
    kv = int(np.sum(ctx_lens)) * cfg["num_kv_heads"] * cfg["head_dim"] * 2 * itemsize
    qo = 2 * int(np.sum(q_lens)) * cfg["num_heads"] * cfg["head_dim"] * itemsize
    flops = 0
    for ql, c in zip(q_lens, ctx_lens):
        keys = np.arange(c - ql, c) + 1             # keys seen by each new row
        flops += 4 * cfg["head_dim"] * cfg["num_heads"] * int(keys.sum())
    t_mem = (kv + qo) / (bw_gbps * 1e9)
    t_flop = flops / PEAK_FLOPS[jnp.dtype(dtype).name]
    return {"bytes": kv + qo, "flops": flops, "t_mem_s": t_mem, "t_flop_s": t_flop,
            "roofline_s": max(t_mem, t_flop)}


def _ref_mem_bytes(tokens_x_ctx, model, itemsize):
    """Rough peak memory of the XLA references: gathered K/V in the input dtype + f32."""
    cfg = MODELS[model] if isinstance(model, str) else model
    return 2 * tokens_x_ctx * cfg["num_kv_heads"] * cfg["head_dim"] * (itemsize + 4)


def _max_err(out, ref):
    a = np.asarray(jnp.asarray(out, jnp.float32))
    b = np.asarray(jnp.asarray(ref, jnp.float32))
    return {"max_abs_err": float(np.max(np.abs(a - b))) if a.size else 0.0,
            "finite": bool(np.all(np.isfinite(a)))}


# --------------------------------------------------------------------------- stages


def stage_env(rec: Recorder, profile: str, interpret: bool):
    devs = jax.devices()
    d0 = devs[0]
    info = {
        "python": sys.version.split()[0], "platform": platform.platform(),
        "jax": jax.__version__, "backend": jax.default_backend(),
        "devices": [str(d) for d in devs], "device_kind": getattr(d0, "device_kind", None),
        "core_count": getattr(d0, "core_count", None),
        "triton_backend": _compat.triton_backend_status(),
        "profile": profile, "interpret": interpret,
    }
    try:
        import jaxlib
        info["jaxlib"] = jaxlib.__version__
    except ImportError:
        pass
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    try:
        info["memory_stats"] = {k: v for k, v in (d0.memory_stats() or {}).items()
                                if k in ("bytes_limit", "bytes_in_use", "peak_bytes_in_use")}
    except Exception as e:
        info["memory_stats"] = repr(e)
    rec.set("env", info)
    print(json.dumps(info, indent=1, default=str), flush=True)


def _correctness_cases(profile):
    """(kernel, model, dtype, page_size, problem) for the GPU correctness stage."""
    if profile == "smoke":
        small = {"num_heads": 8, "num_kv_heads": 2, "head_dim": 64}
        return [
            ("decode", small, "float32", 16, {"lens": [0, 1, 16, 17, 100], "splits": None}),
            ("decode", small, "bfloat16", 16, {"lens": [0, 5, 64], "splits": 3}),
            ("ragged", small, "bfloat16", 16, {"q_lens": [1, 20, 0, 3], "ctx": [9, 40, 0, 3],
                                               "T": 32, "S": 6}),
        ]
    lens_mix = [0, 1, 15, 16, 17, 255, 256, 1000, 2047, 2048, 4097, 8000]
    rq, rc = [1, 100, 0, 17, 1, 1, 300, 1], [1, 1300, 0, 17, 2048, 4000, 300, 77]
    return [
        ("decode", "llama3-8b", "bfloat16", 16, {"lens": lens_mix, "splits": None}),
        ("decode", "llama3-8b", "float32", 16, {"lens": lens_mix, "splits": None}),
        ("decode", "llama3-8b", "bfloat16", 16, {"lens": [0, 3, 513, 2048], "splits": 1}),
        ("decode", "llama3-8b", "bfloat16", 16, {"lens": [0, 3, 60, 2048], "splits": 40}),
        ("decode", "qwen2-0.5b", "bfloat16", 32, {"lens": lens_mix, "splits": None}),
        ("decode", "llama2-7b", "bfloat16", 64, {"lens": lens_mix[:8], "splits": None}),
        ("ragged", "llama3-8b", "bfloat16", 16, {"q_lens": rq, "ctx": rc, "T": 512, "S": 16}),
        ("ragged", "llama3-8b", "float32", 16, {"q_lens": rq, "ctx": rc, "T": 512, "S": 16}),
        ("ragged", "qwen2-0.5b", "bfloat16", 32, {"q_lens": rq, "ctx": rc, "T": 512, "S": 16}),
        ("ragged", "llama2-7b", "bfloat16", 64, {"q_lens": rq, "ctx": rc, "T": 512, "S": 16}),
    ]


TOLERANCE = {"bfloat16": 3e-2, "float32": 2e-3}


def stage_correctness(rec: Recorder, profile: str, interpret: bool):
    """Both kernels vs the references (f32 matmuls at 'highest' precision) on device."""
    for i, (kernel, model, dt, ps, prob) in enumerate(_correctness_cases(profile)):
        name = f"{kernel}/{model if isinstance(model, str) else 'small'}/{dt}/page{ps}/{i}"
        if not rec.can_start(name, 4.0):
            continue
        dtype = jnp.dtype(dt)
        try:
            t = time.perf_counter()
            if kernel == "decode":
                args = decode_inputs(i, len(prob["lens"]), 0, model, ps, dtype, prob["lens"])
                out = jax.jit(lambda *a, s=prob["splits"]: paged_decode_attention(
                    *a, num_splits=s, interpret=interpret))(*args)
                with jax.default_matmul_precision("highest"):
                    ref = jax.jit(paged_decode_attention_reference)(*args)
                zero_rows = np.asarray(args[4]) == 0
            else:
                args = ragged_inputs(i, prob["q_lens"], prob["ctx"], model, num_tokens=prob["T"],
                                     num_slots=prob["S"], page_size=ps, dtype=dtype)
                out = jax.jit(lambda *a: ragged_paged_attention(*a, interpret=interpret))(*args)
                with jax.default_matmul_precision("highest"):
                    ref = jax.jit(ragged_paged_attention_reference)(*args)
                zero_rows = np.arange(prob["T"]) >= int(sum(prob["q_lens"]))
            err = _max_err(out, ref)
            zeros_ok = bool(np.all(np.asarray(out, np.float32)[zero_rows] == 0.0))
            ok = err["finite"] and zeros_ok and err["max_abs_err"] <= TOLERANCE[dt]
            rec.add({"case": name, "ok": ok, **err, "zero_rows_ok": zeros_ok,
                     "tolerance": TOLERANCE[dt], "seconds": round(time.perf_counter() - t, 2),
                     "problem": prob})
        except Exception as e:
            rec.error(name, e)


def _decode_shapes(profile):
    if profile == "smoke":
        return [(1, 64), (4, 128)], "small"
    # target shapes (batch >= 64, ctx >= 2k) first, so a short budget still measures them
    order = [(64, 2048), (256, 2048), (64, 8192), (256, 8192), (8, 2048), (1, 2048),
             (8, 8192), (1, 8192), (64, 512), (256, 512), (8, 512), (1, 512)]
    return order, "llama3-8b"


def _model_of(model):
    return {"num_heads": 8, "num_kv_heads": 2, "head_dim": 64} if model == "small" else model


def stage_decode(rec: Recorder, profile: str, interpret: bool, ref_mem_limit: float):
    """Decode kernel vs the XLA reference, Llama-3-8B bf16, page 16, several batch x ctx."""
    bw = copy_bandwidth(2**31 if profile != "smoke" else 2**22)
    rec.set("copy_bandwidth", bw)
    print(f"copy bandwidth: {bw['gbps']:.0f} GB/s", flush=True)
    shapes, model = _decode_shapes(profile)
    model = _model_of(model)
    dtype = jnp.bfloat16
    kernel = jax.jit(lambda *a: paged_decode_attention(*a, interpret=interpret))
    legacy = jax.jit(lambda *a: paged_decode_attention(*a, interpret=interpret,
                                                       **tuning.DECODE_LEGACY))
    reference = jax.jit(paged_decode_attention_reference)
    for batch, ctx in shapes:
        name = f"decode B={batch} ctx={ctx}"
        if not rec.can_start(name, 6.0):
            continue
        args = None
        try:
            args = decode_inputs(batch * 7 + ctx, batch, ctx, model, PAGE_SIZE, dtype)
            nbytes = decode_bytes(np.asarray(args[4]), model, 2)
            tk = time_fn(kernel, args)
            item = {"case": name, "batch": batch, "ctx": ctx, "kernel": tk,
                    "bytes": nbytes, "kernel_us": tk["median_s"] * 1e6,
                    "kernel_gbps": nbytes / tk["median_s"] / 1e9,
                    "frac_copy_bw": nbytes / tk["median_s"] / 1e9 / bw["gbps"],
                    "l2_resident_possible": nbytes < 2 * L2_BYTES,
                    "num_splits": choose_num_splits(
                        batch, _kv_heads(model), args[3].shape[1] * PAGE_SIZE,
                        default_block_kv(PAGE_SIZE, _head_dim(model), dtype))}
            if rec.time_left() > 10.0:  # the first version's loop, same inputs, same run
                tl = time_fn(legacy, args)
                item.update(legacy_us=tl["median_s"] * 1e6,
                            speedup_vs_legacy=tl["median_s"] / tk["median_s"])
            mem = _ref_mem_bytes(batch * args[3].shape[1] * PAGE_SIZE, model, 2)
            if mem > ref_mem_limit:
                item["reference"] = f"skipped: needs ~{mem / 2**30:.0f} GiB"
            elif rec.time_left() < 8.0:
                item["reference"] = "skipped: time budget"
            else:
                tr = time_fn(reference, args, warmup=1, reps=3, inner=2, max_s=2.0)
                item.update(reference=tr, ref_us=tr["median_s"] * 1e6,
                            speedup_vs_ref=tr["median_s"] / tk["median_s"])
                err = _max_err(kernel(*args), reference(*args))
                item["max_abs_err_vs_ref"] = err["max_abs_err"]
            rec.add(item)
        except Exception as e:
            rec.error(name, e)
        finally:
            del args


def _kv_heads(model):
    return (MODELS[model] if isinstance(model, str) else model)["num_kv_heads"]


def _head_dim(model):
    return (MODELS[model] if isinstance(model, str) else model)["head_dim"]


def _ragged_problem(profile):
    if profile == "smoke":
        return [24] + [1] * 7, [40] + [30] * 7, 32, 8, "small"
    # one 512-token prefill chunk (a 2048-token prompt's last chunk) + 63 decodes at 2048
    return [512] + [1] * 63, [2048] * 64, 640, 64, "llama3-8b"


def ragged_glue(q, k_pages, v_pages, block_tables, seq_lens, query_start_loc, num_seqs, *,
                block_q_rows):
    """What `ragged_paged_attention` computes in XLA besides its kernels (timed alone)."""
    num_tokens, num_heads, _ = q.shape
    num_kv_heads, _, page_size, _ = k_pages.shape
    lens = jnp.clip(seq_lens, 0, block_tables.shape[1] * page_size)
    metas = [query_tiles(query_start_loc, lens, num_seqs, block_q=bq, min_q_len=lo,
                         max_q_len=hi, num_tiles=n)
             for bq, lo, hi, n in tile_plan(num_tokens, block_tables.shape[0],
                                            num_heads // num_kv_heads, block_q_rows)]
    return metas, jnp.zeros_like(q)


def stage_ragged(rec: Recorder, profile: str, interpret: bool, ref_mem_limit: float):
    """The mixed batch vs its roofline and the XLA reference; pure decode vs decode kernel."""
    bw = copy_bandwidth(2**31 if profile != "smoke" else 2**22)
    rec.set("copy_bandwidth", bw)
    q_lens, ctx, num_tokens, num_slots, model = _ragged_problem(profile)
    model = _model_of(model)
    dtype = jnp.bfloat16
    name = f"ragged {len(q_lens)} seqs, q_lens {q_lens[:2]}..., T={num_tokens}"
    kernel = jax.jit(lambda *a: ragged_paged_attention(*a, interpret=interpret))
    args = None
    if rec.can_start(name, 6.0):
        try:
            args = ragged_inputs(1, q_lens, ctx, model, num_tokens=num_tokens,
                                 num_slots=num_slots, dtype=dtype)
            roof = ragged_roofline(q_lens, ctx, model, dtype, bw["gbps"])
            tk = time_fn(kernel, args)
            item = {"case": name, "kernel": tk, "kernel_us": tk["median_s"] * 1e6, **roof,
                    "frac_roofline": roof["roofline_s"] / tk["median_s"],
                    "kernel_gbps": roof["bytes"] / tk["median_s"] / 1e9}
            legacy = jax.jit(lambda *a: ragged_paged_attention(*a, interpret=interpret,
                                                               **tuning.RAGGED_LEGACY))
            tl = time_fn(legacy, args)
            item.update(legacy_us=tl["median_s"] * 1e6,
                        speedup_vs_legacy=tl["median_s"] / tk["median_s"])
            mem = _ref_mem_bytes(num_tokens * args[3].shape[1] * PAGE_SIZE, model, 2)
            if mem > ref_mem_limit:
                item["reference"] = f"skipped: needs ~{mem / 2**30:.0f} GiB"
            else:
                reference = jax.jit(ragged_paged_attention_reference)
                tr = time_fn(reference, args, warmup=1, reps=3, inner=2, max_s=2.0)
                item.update(reference=tr, ref_us=tr["median_s"] * 1e6,
                            speedup_vs_ref=tr["median_s"] / tk["median_s"])
                item["max_abs_err_vs_ref"] = _max_err(kernel(*args), reference(*args))[
                    "max_abs_err"]
            rec.add(item)
        except Exception as e:
            rec.error(name, e)
    if args is not None and rec.can_start("ragged per layer", 8.0):
        try:
            rec.add(_ragged_layer_stack(args, q_lens, ctx, model, dtype, bw, interpret,
                                        num_layers=4 if profile != "smoke" else 2))
        except Exception as e:
            rec.error("ragged per layer", e)
    if args is not None and rec.can_start("ragged glue", 3.0):
        try:  # the XLA ops around the kernels alone: the tile lists and the output buffer
            glue = jax.jit(lambda *a: ragged_glue(*a, block_q_rows=64))
            tg = time_fn(glue, args)
            rec.add({"case": "ragged glue (tile lists + zeroed output, no kernel)",
                     "glue_us": tg["median_s"] * 1e6})
        except Exception as e:
            rec.error("ragged glue", e)
    del args
    # Routing question: the same decode tokens through both kernels.
    n_dec = len(q_lens)
    name = f"pure decode {n_dec} x {ctx[-1]}: ragged vs decode kernel"
    if rec.can_start(name, 6.0):
        try:
            dargs = decode_inputs(2, n_dec, ctx[-1], model, PAGE_SIZE, dtype)
            q, kp, vp, bt, sl = dargs
            qsl = jnp.arange(n_dec + 1, dtype=jnp.int32)
            rargs = (q, kp, vp, bt, sl, qsl, jnp.asarray(n_dec, jnp.int32))
            td = time_fn(jax.jit(lambda *a: paged_decode_attention(*a, interpret=interpret)),
                         dargs)
            tr = time_fn(kernel, rargs)
            nbytes = decode_bytes(np.asarray(sl), model, 2)
            rec.add({"case": name, "decode_us": td["median_s"] * 1e6,
                     "ragged_us": tr["median_s"] * 1e6,
                     "ragged_over_decode": tr["median_s"] / td["median_s"],
                     "decode_gbps": nbytes / td["median_s"] / 1e9,
                     "ragged_gbps": nbytes / tr["median_s"] / 1e9})
            del dargs, rargs
        except Exception as e:
            rec.error(name, e)


def _ragged_layer_stack(args, q_lens, ctx, model, dtype, bw, interpret, num_layers, cfg=None):
    """The mixed batch through num_layers chained calls in one jit, each layer with its own
    K/V pools (as in the engine, whose unrolled layers share one step's metadata): XLA
    computes the tile lists once (common-subexpression elimination; a test checks it on the
    CPU), so this is what a layer pays. Time per layer against the same roofline."""
    q, kp, vp, bt, sl, qsl, n = args
    keys = jax.random.split(jax.random.PRNGKey(7), 2 * (num_layers - 1))
    kps = [kp] + [jax.random.normal(k, kp.shape, dtype) for k in keys[:num_layers - 1]]
    vps = [vp] + [jax.random.normal(k, vp.shape, dtype) for k in keys[num_layers - 1:]]

    def stack(q, kps, vps, bt, sl, qsl, n):
        for k, v in zip(kps, vps):   # each layer's query depends on the previous output
            q = ragged_paged_attention(q, k, v, bt, sl, qsl, n, interpret=interpret,
                                       **(cfg or {}))
        return q

    t = time_fn(jax.jit(stack), (q, kps, vps, bt, sl, qsl, n), reps=5, inner=3)
    roof = ragged_roofline(q_lens, ctx, model, dtype, bw["gbps"])
    per_layer = t["median_s"] / num_layers
    del kps, vps
    name = "" if cfg is None else f" {tuning.config_name(cfg)}"
    return {"case": f"ragged per layer{name} ({num_layers}-layer stack, own K/V pools)",
            "config": cfg, "num_layers": num_layers, "layer_us": per_layer * 1e6,
            "layer_frac_roofline": roof["roofline_s"] / per_layer}


def _time_decode_config(rec, name, cfg, args, nbytes, bw, interpret, reps=5, **extra):
    """Times the decode kernel with config cfg; records and returns the item (None: error)."""
    try:
        f = jax.jit(lambda *a: paged_decode_attention(*a, interpret=interpret, **cfg))
        t = time_fn(f, args, reps=reps)
        item = {"case": name, "config": cfg, **extra, "us": t["median_s"] * 1e6,
                "gbps": nbytes / t["median_s"] / 1e9,
                "frac_copy_bw": nbytes / t["median_s"] / 1e9 / bw["gbps"],
                "first_call_s": t["first_call_s"]}
        rec.add(item)
        return item
    except Exception as e:
        rec.error(name, e)
        return None


def _time_ragged_config(rec, name, cfg, args, roof, interpret, reps=5):
    """Times the ragged kernel with config cfg; records and returns the item (None: error)."""
    try:
        f = jax.jit(lambda *a: ragged_paged_attention(*a, interpret=interpret, **cfg))
        t = time_fn(f, args, reps=reps)
        item = {"case": name, "config": cfg, "us": t["median_s"] * 1e6,
                "frac_roofline": roof["roofline_s"] / t["median_s"]}
        rec.add(item)
        return item
    except Exception as e:
        rec.error(name, e)
        return None


def stage_autotune(rec: Recorder, profile: str, interpret: bool):
    """A small sweep of ragged configs, then of decode block configs (then split counts)."""
    bw = copy_bandwidth(2**31 if profile != "smoke" else 2**22)
    rec.set("copy_bandwidth", bw)
    if profile == "smoke":
        shapes, model, sweep = [(2, 128)], _model_of("small"), tuning.DECODE_SWEEP[:3]
        rsweep = tuning.RAGGED_SWEEP[:2]
    else:
        # (8, 2048) last: small batches, where 4 stages looked slower than 3 in run 3
        shapes, model = [(64, 2048), (1, 8192), (256, 8192), (8, 2048)], "llama3-8b"
        sweep, rsweep = tuning.DECODE_SWEEP, tuning.RAGGED_SWEEP
    dtype = jnp.bfloat16
    best = {}
    # The ragged sweep first: its target is the open one, and a budget cut short by the
    # decode shapes would lose it.
    q_lens, ctx, num_tokens, num_slots, rmodel = _ragged_problem(profile)
    rmodel = _model_of(rmodel)
    args = ragged_inputs(1, q_lens, ctx, rmodel, num_tokens=num_tokens, num_slots=num_slots,
                         dtype=dtype)
    roof = ragged_roofline(q_lens, ctx, rmodel, dtype, bw["gbps"])
    rres = []
    for cfg in rsweep:
        name = f"ragged mixed {tuning.config_name(cfg)}"
        if rec.can_start(name, 3.0):
            item = _time_ragged_config(rec, name, cfg, args, roof, interpret, reps=3)
            rres += [item] if item else []
    if rres:
        top = min(rres, key=lambda r: r["us"])
        rec.set("best_ragged", {"config": top["config"], "us": top["us"],
                                "frac_roofline": top["frac_roofline"]})
    del args
    for batch, ctx in shapes:
        args = decode_inputs(batch + ctx, batch, ctx, model, PAGE_SIZE, dtype)
        nbytes = decode_bytes(np.asarray(args[4]), model, 2)
        auto_splits = choose_num_splits(batch, _kv_heads(model), args[3].shape[1] * PAGE_SIZE,
                                        128)
        results = []
        for cfg in sweep:
            name = f"decode B={batch} ctx={ctx} {tuning.config_name(cfg)}"
            if rec.can_start(name, 3.0):
                item = _time_decode_config(rec, name, cfg, args, nbytes, bw, interpret,
                                           reps=3, shape=[batch, ctx])
                results += [item] if item else []
        if not results:
            continue
        top = min(results, key=lambda r: r["us"])
        splits_tried = {auto_splits}
        for factor in tuning.SPLIT_FACTORS:
            splits = max(1, round(auto_splits * factor))
            if splits in splits_tried:
                continue
            splits_tried.add(splits)
            cfg = {**top["config"], "num_splits": splits}
            name = f"decode B={batch} ctx={ctx} {tuning.config_name(cfg)}"
            if rec.can_start(name, 3.0):
                item = _time_decode_config(rec, name, cfg, args, nbytes, bw, interpret,
                                           reps=3, shape=[batch, ctx], auto_splits=auto_splits)
                results += [item] if item else []
        top = min(results, key=lambda r: r["us"])
        best[f"B={batch} ctx={ctx}"] = {"config": top["config"], "us": top["us"],
                                        "frac_copy_bw": top["frac_copy_bw"],
                                        "default_us": results[0]["us"]
                                        if results[0]["config"] == sweep[0] else None}
        rec.set("best_decode", best)
        del args


def _rank_configs(items, shapes):
    """Configs (no split override) by their mean fraction of copy bandwidth over shapes."""
    by_cfg = {}
    for i in items:
        cfg = i.get("config")
        if cfg is None or "num_splits" in cfg or tuple(i.get("shape", ())) not in shapes:
            continue
        by_cfg.setdefault(tuning.config_name(cfg), (cfg, []))[1].append(i["frac_copy_bw"])
    scored = [(sum(v) / len(v), cfg) for cfg, v in by_cfg.values() if len(v) == len(shapes)]
    return [cfg for _, cfg in sorted(scored, key=lambda x: -x[0])]


def stage_confirm(rec: Recorder, profile: str, interpret: bool):
    """The autotune's two best ragged configs (and the default) on the mixed batch, single
    call and per layer of a stack, then its two best decode configs (and the default) at
    the four target shapes, in one process: the figures the defaults are chosen from."""
    path = os.path.join(os.path.dirname(rec.path), "autotune.json")
    with open(path) as f:
        at = json.load(f)
    bw = copy_bandwidth(2**31 if profile != "smoke" else 2**22)
    rec.set("copy_bandwidth", bw)
    dtype = jnp.bfloat16
    if profile == "smoke":
        tuned, targets, model = [(2, 128)], [(2, 128)], _model_of("small")
    else:
        tuned, model = [(64, 2048), (256, 8192)], "llama3-8b"
        targets = [(64, 2048), (256, 2048), (64, 8192), (256, 8192)]
    rres = sorted((i for i in at.get("items", []) if "frac_roofline" in i),
                  key=lambda i: i["us"])
    rconfigs = [i["config"] for i in rres[:2]]
    rconfigs += [c for c in [tuning.RAGGED_SWEEP[0]] if c not in rconfigs]
    q_lens, ctx, num_tokens, num_slots, rmodel = _ragged_problem(profile)
    rmodel = _model_of(rmodel)
    args = ragged_inputs(3, q_lens, ctx, rmodel, num_tokens=num_tokens, num_slots=num_slots,
                         dtype=dtype)
    roof = ragged_roofline(q_lens, ctx, rmodel, dtype, bw["gbps"])
    for cfg in rconfigs:
        name = f"ragged mixed {tuning.config_name(cfg)}"
        if rec.can_start(name, 3.0):
            _time_ragged_config(rec, name, cfg, args, roof, interpret)
        if rec.can_start(f"ragged per layer {tuning.config_name(cfg)}", 8.0):
            try:
                rec.add(_ragged_layer_stack(args, q_lens, ctx, rmodel, dtype, bw, interpret,
                                            num_layers=4 if profile != "smoke" else 2,
                                            cfg=cfg))
            except Exception as e:
                rec.error(f"ragged per layer {tuning.config_name(cfg)}", e)
    del args
    ranked = _rank_configs(at.get("items", []), [tuple(x) for x in tuned])[:2]
    configs = ranked + [c for c in [tuning.DECODE_SWEEP[0]] if c not in ranked]
    rec.set("decode_configs", configs)
    for batch, ctx in targets:
        args = decode_inputs(batch * 3 + ctx, batch, ctx, model, PAGE_SIZE, dtype)
        nbytes = decode_bytes(np.asarray(args[4]), model, 2)
        for cfg in configs:
            name = f"decode B={batch} ctx={ctx} {tuning.config_name(cfg)}"
            if rec.can_start(name, 3.0):
                _time_decode_config(rec, name, cfg, args, nbytes, bw, interpret,
                                    shape=[batch, ctx])
        del args


def stage_profile(rec: Recorder, profile: str, interpret: bool):
    """A few calls of the default decode (B=64, ctx 2k) and ragged kernels, untimed: the
    target of an external profiler (gpu_check.sh runs it under ncu when ncu exists)."""
    if profile == "smoke":
        batch, ctx, model = 2, 128, _model_of("small")
    else:
        batch, ctx, model = 64, 2048, "llama3-8b"
    args = decode_inputs(5, batch, ctx, model, PAGE_SIZE, jnp.bfloat16)
    f = jax.jit(lambda *a: paged_decode_attention(*a, interpret=interpret))
    for _ in range(3):
        jax.block_until_ready(f(*args))
    q_lens, ctxs, num_tokens, num_slots, rmodel = _ragged_problem(profile)
    rargs = ragged_inputs(1, q_lens, ctxs, _model_of(rmodel), num_tokens=num_tokens,
                          num_slots=num_slots, dtype=jnp.bfloat16)
    g = jax.jit(lambda *a: ragged_paged_attention(*a, interpret=interpret))
    for _ in range(3):
        jax.block_until_ready(g(*rargs))
    rec.add({"case": "profile target ran", "decode_shape": [batch, ctx]})


STAGES = {
    "env": lambda rec, a: stage_env(rec, a.profile, a.interpret),
    "correctness": lambda rec, a: stage_correctness(rec, a.profile, a.interpret),
    "decode": lambda rec, a: stage_decode(rec, a.profile, a.interpret, a.ref_mem_limit),
    "ragged": lambda rec, a: stage_ragged(rec, a.profile, a.interpret, a.ref_mem_limit),
    "autotune": lambda rec, a: stage_autotune(rec, a.profile, a.interpret),
    "confirm": lambda rec, a: stage_confirm(rec, a.profile, a.interpret),
    "profile": lambda rec, a: stage_profile(rec, a.profile, a.interpret),
}


class StageArgs:
    def __init__(self, profile="gpu", interpret=False, ref_mem_limit=48 * 2**30):
        self.profile, self.interpret, self.ref_mem_limit = profile, interpret, ref_mem_limit


def run_stage(stage: str, out_dir: str, budget_s: float, args: StageArgs) -> dict:
    """Runs one stage under its budget; never raises (errors land in the JSON)."""
    rec = Recorder(out_dir, stage, budget_s)
    try:
        rec.set("device", str(jax.devices()[0]))
        STAGES[stage](rec, args)
    except Exception as e:
        rec.error(f"stage {stage}", e)
    rec.finish()
    return rec.data
