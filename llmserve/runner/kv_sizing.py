"""How many KV blocks an engine gets and how long a request may be, from the model and memory.

As vLLM does it: the pool is what a fraction of the device's memory leaves after what is
already in use (the weights, loaded before this runs) and a reserve for one step's
activations; `max_model_len` defaults to the model's own limit, capped by what that pool
holds. On a CPU the fraction applies to the RAM available now, and the pool is capped at
`cpu_kv_cache_max_bytes` (4 GiB, vLLM-CPU's VLLM_CPU_KVCACHE_SPACE default): RAM is shared
with everything else on the host, and zeroing tens of GB at start-up buys nothing a CPU
engine can use.
"""
from __future__ import annotations

import dataclasses

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class KVPlan:
    num_blocks: int
    max_model_len: int
    block_bytes: int                # one block, one device
    budget_bytes: int               # what the pool could have had
    source: str                     # where the budget came from, for the log line

    @property
    def pool_bytes(self) -> int:
        return self.num_blocks * self.block_bytes

    def describe(self, block_size: int) -> str:
        return (f"KV cache: {self.num_blocks} blocks x {block_size} tokens = "
                f"{self.num_blocks * block_size} tokens, "
                f"{self.pool_bytes / GIB:.2f} GiB per device "
                f"({self.source}); max_model_len {self.max_model_len}")


def host_memory() -> tuple[int, int]:
    """(total, in use) bytes of this host's RAM; in use counts what the kernel cannot hand
    out now (MemTotal - MemAvailable)."""
    info = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                k, v = line.split(":", 1)
                info[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    if "MemTotal" in info and "MemAvailable" in info:
        return info["MemTotal"], info["MemTotal"] - info["MemAvailable"]
    import os
    page = os.sysconf("SC_PAGE_SIZE")
    total = os.sysconf("SC_PHYS_PAGES") * page
    return total, total - os.sysconf("SC_AVPHYS_PAGES") * page


def device_memory() -> tuple[int, int, str]:
    """(total, in use, kind) for the first JAX device: an accelerator's allocator limit and
    use, or the host's RAM for a CPU."""
    import jax
    d = jax.devices()[0]
    stats = None
    if d.platform != "cpu":
        try:
            stats = d.memory_stats()
        except Exception:   # some backends do not implement it
            stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), int(stats.get("bytes_in_use", 0)), d.platform
    total, used = host_memory()
    return total, used, "cpu"


def activation_reserve_bytes(model_config, max_num_batched_tokens: int) -> int:
    """One step's largest live activations, float32: every row projected on the vocabulary
    (the prompt-logprobs variant does that) plus the MLP and attention intermediates."""
    mc = model_config
    per_token = mc.vocab_size + 3 * mc.intermediate_size + 4 * mc.hidden_size
    return 4 * max_num_batched_tokens * per_token


def plan_kv(*, block_bytes: int, block_size: int, max_num_seqs: int,
            max_num_batched_tokens: int, chunked_prefill: bool, model_max_len: int,
            max_model_len: int = 0, num_kv_blocks: int = 0, budget_bytes: int,
            source: str) -> KVPlan:
    """The plan for a budget already known. max_model_len / num_kv_blocks 0 = derive them."""
    pool_cap = budget_bytes // block_bytes
    if max_model_len:
        if max_model_len > model_max_len:
            raise ValueError(f"max_model_len ({max_model_len}) exceeds the model's "
                             f"max_position_embeddings ({model_max_len}): set max_model_len <= "
                             f"{model_max_len} (LLM(..., max_model_len=N), "
                             "--config.engine.max_model_len=N in the scripts) or leave it 0, "
                             "the default, for the model's own limit")
        length = max_model_len
    else:
        # The model's limit, capped by what the pool holds; unchunked prompts must also fit
        # one step's token budget (the scheduler requires it).
        holds = (num_kv_blocks or pool_cap) * block_size
        length = min(model_max_len, holds)
        if not chunked_prefill:
            length = min(length, max_num_batched_tokens)
        if length < 2:
            raise ValueError(f"the KV budget of {budget_bytes} bytes ({source}) holds "
                             f"{holds} tokens, too few for one request: raise "
                             "kv_cache_memory_bytes or memory_utilization")
    if num_kv_blocks:
        blocks = num_kv_blocks
    else:
        # No more than max_num_seqs full-length requests can use.
        blocks = min(pool_cap, max_num_seqs * -(-length // block_size))
        if blocks < 1:
            raise ValueError(f"the KV budget of {budget_bytes} bytes ({source}) holds no block "
                             f"of {block_bytes} bytes: raise kv_cache_memory_bytes or "
                             "memory_utilization")
    return KVPlan(blocks, length, block_bytes, budget_bytes, source)


def kv_budget(*, kv_cache_memory_bytes: int, memory_utilization: float,
              cpu_kv_cache_max_bytes: int, reserve_bytes: int,
              measure=device_memory) -> tuple[int, str]:
    """(bytes for the KV pool on one device, a description of where they came from)."""
    if kv_cache_memory_bytes:
        return kv_cache_memory_bytes, "kv_cache_memory_bytes"
    total, used, kind = measure()
    if kind == "cpu":
        # A host's RAM is shared with other processes whose use comes and goes: the fraction
        # applies to what is available now, so a busy host shrinks the pool instead of
        # refusing to start (vLLM-CPU takes a fixed KV space, the cap below).
        free = int((total - used) * memory_utilization) - reserve_bytes
        src = (f"memory_utilization {memory_utilization} of {(total - used) / GIB:.1f} GiB "
               f"available host memory, {reserve_bytes / GIB:.2f} GiB activation reserve")
    else:
        # An accelerator's memory is this process's: the fraction is of all of it, less what
        # is in use (the weights), as vLLM's gpu_memory_utilization.
        free = int(total * memory_utilization) - used - reserve_bytes
        src = (f"memory_utilization {memory_utilization} of {total / GIB:.1f} GiB {kind} "
               f"memory, {used / GIB:.1f} GiB in use, {reserve_bytes / GIB:.2f} GiB "
               "activation reserve")
    if kind == "cpu" and free > cpu_kv_cache_max_bytes:
        return cpu_kv_cache_max_bytes, src + ", capped at cpu_kv_cache_max_bytes"
    if free <= 0:
        raise ValueError(f"no memory left for a KV cache: {src}; raise memory_utilization or "
                         "set kv_cache_memory_bytes")
    return free, src
