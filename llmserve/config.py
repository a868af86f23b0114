"""EngineConfig: a frozen, validated dataclass built from an ml_collections ConfigDict or kwargs.

ml_collections is imported only by the functions that read config files, so the engine runs
on machines without it (the GPU check).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any

from llmserve.core.scheduler import POLICIES, SchedulerConfig

SCHEDULER_KNOBS = ("chunked_prefill", "queue_policy", "kv_allocation", "preemption_victim",
                   "aging_rate", "length_bins", "static_batch_size", "static_batch_timeout_s",
                   "enable_prefix_caching", "predictor")

LOAD_FORMATS = ("auto", "dummy", "safetensors")
DTYPES = ("auto", "float32", "bfloat16", "float16")
ATTENTION_IMPLS = ("reference", "pallas", "pallas_interpret")


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    model: str = "tiny"                 # preset name, or a Hugging Face checkpoint directory
    load_format: str = "auto"           # auto: checkpoint dir -> safetensors, preset -> dummy
    dtype: str = "auto"                 # auto: the checkpoint's (presets: their own) dtype
    max_num_seqs: int = 64              # most requests running at once
    max_num_batched_tokens: int = 512   # token budget per step
    block_size: int = 16                # tokens per KV block (power of two)
    num_kv_blocks: int = 0              # 0: enough for max_num_seqs full-length requests,
    #                                     capped by the KV memory budget below
    kv_cache_memory_bytes: int = 0      # KV budget per device; 0: from memory_utilization
    memory_utilization: float = 0.9     # fraction of the device's memory (GPU allocator
    #                                     limit, or host RAM) for weights + activations + KV
    cpu_kv_cache_max_bytes: int = 4 * 2**30  # on a CPU the automatic KV budget stops here
    max_model_len: int = 0              # prompt + output tokens per request; 0: the model's
    #                                     limit, capped by what the KV pool holds
    policy: str = "chunked"             # scheduling preset
    attention_impl: str = "reference"   # reference (plain jnp) | pallas | pallas_interpret
    tensor_parallel_size: int = 1       # devices one replica's heads/MLP columns are split over
    seed: int = 0                       # dummy weights and default per-request sampling seeds
    warmup: bool = False                # compile every bucket shape at start
    trace_log: str = ""                 # JSONL file: one record per finished request
    #                                     (predictor training data); "" = off
    # Scheduler knobs (core/scheduler.py): None = the value of the `policy` preset.
    chunked_prefill: bool | None = None         # may a prompt be split across steps
    queue_policy: str | None = None             # fcfs | shortest_first | length_bins
    kv_allocation: str | None = None            # paged | reserve_max | reserve_predicted
    preemption_victim: str | None = None        # newest | most_remaining
    aging_rate: float | None = None             # shortest_first: tokens of priority per s waited
    length_bins: str | None = None              # length_bins: edges, e.g. "50,500"
    static_batch_size: int | None = None        # static: requests per formed batch
    static_batch_timeout_s: float | None = None  # static: dispatch a partial batch after this
    enable_prefix_caching: bool | None = None   # share KV of identical prompt prefixes
    predictor: str | None = None                # none | oracle | noisy_oracle:REL[:SEED] |
    #                                             constant:N | checkpoint:DIR

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            base, _, optional = f.type.partition(" | ")
            if v is None and optional:
                continue
            want = {"str": str, "int": int, "bool": bool, "float": (int, float)}[base]
            if not isinstance(v, want) or (want is not bool and isinstance(v, bool)):
                raise ValueError(f"config field {f.name!r} must be {f.type}, got {v!r} "
                                 f"({type(v).__name__})")
        choices = dict(load_format=LOAD_FORMATS, dtype=DTYPES, policy=POLICIES,
                       attention_impl=ATTENTION_IMPLS)
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"config field {name!r} must be one of {allowed}, "
                                 f"got {getattr(self, name)!r}")
        for name in ("max_num_seqs", "max_num_batched_tokens", "tensor_parallel_size",
                     "cpu_kv_cache_max_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"config field {name!r} must be >= 1, got {getattr(self, name)}")
        for name in ("num_kv_blocks", "max_model_len", "kv_cache_memory_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"config field {name!r} must be >= 0 (0 = automatic), "
                                 f"got {getattr(self, name)}")
        if not 0 < self.memory_utilization <= 1:
            raise ValueError("config field 'memory_utilization' must be in (0, 1], got "
                             f"{self.memory_utilization}")
        # Unknown or inconsistent scheduler knobs fail here, when the config is built.
        self.scheduler_config(max(1, self.num_kv_blocks))

    def scheduler_config(self, num_kv_blocks: int):
        """The SchedulerConfig of this engine config (knobs left None come from the preset)."""
        knobs = {k: getattr(self, k) for k in SCHEDULER_KNOBS if getattr(self, k) is not None}
        # max_model_len 0 (automatic) is resolved by the engine; until then, check the knobs
        # with the longest length every preset accepts.
        length = self.max_model_len or min(self.max_num_batched_tokens, 2048)
        return SchedulerConfig.for_policy(
            self.policy, max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens, block_size=self.block_size,
            num_kv_blocks=num_kv_blocks, max_model_len=length, **knobs)

    @classmethod
    def from_dict(cls, d: Any) -> EngineConfig:
        """From a dict / ConfigDict; an unknown field is an error that names it."""
        if hasattr(d, "to_dict"):
            d = d.to_dict()
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown engine config field(s) {unknown}; known fields: "
                             f"{sorted(known)}")
        return cls(**d)

    def replace(self, **kw) -> EngineConfig:
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(kw) - known)
        if unknown:
            raise ValueError(f"unknown engine config field(s) {unknown}; known fields: "
                             f"{sorted(known)}")
        return dataclasses.replace(self, **kw)


def load_config(path: str, overrides: dict | None = None):
    """Load `get_config()` from a configs/*.py file as a ConfigDict (needs ml_collections)."""
    if not os.path.isfile(path):
        raise ValueError(f"config file {path!r} does not exist")
    spec = importlib.util.spec_from_file_location("_llmserve_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not hasattr(mod, "get_config"):
        raise ValueError(f"config file {path!r} has no get_config()")
    cfg = mod.get_config()
    for k, v in (overrides or {}).items():
        node = cfg
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        if leaf not in node:
            raise ValueError(f"unknown config field {k!r} in {path}")
        node[leaf] = v
    return cfg
