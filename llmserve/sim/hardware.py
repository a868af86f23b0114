"""Accelerator profiles: dense bf16 peak FLOP/s, HBM bandwidth and memory (vendor datasheets).

Fitted profiles: a JSON in sim/profiles/ (written by sim/calibrate.save_profile) names a base
profile and the cost-model efficiency factors fitted to that device's measured step times;
get_hardware(its name) returns the base profile carrying them, and CostModel uses them in place
of the defaults (e.g. `h200-fit`: the recorded H200 runs).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np


@dataclasses.dataclass(frozen=True)
class HardwareProfile:
    name: str
    peak_flops: float       # dense (no sparsity) bf16 FLOP/s
    mem_bandwidth: float    # bytes/s
    memory_bytes: float
    # Device-to-device link for tensor parallelism (cost_model.py's all-reduce term): bytes/s
    # one way per device, and latency per ring hop. 0 = none (no tensor parallelism).
    link_bandwidth: float = 0.0
    link_latency_s: float = 0.0
    # Fitted cost-model efficiency factors, ((name, value), ...); empty = the defaults.
    efficiency: tuple = ()


PROFILES = {
    # NVIDIA A100 80GB SXM: 312 TFLOP/s bf16 dense, 2,039 GB/s HBM2e.
    # NVLink 3: 600 GB/s per GPU both ways together (300 GB/s one way); ~2 us per ring hop
    # is a round figure for NCCL's small-message latency over NVSwitch, not a measurement.
    "a100-80gb": HardwareProfile("a100-80gb", 312e12, 2.039e12, 80e9, 300e9, 2e-6),
    # NVIDIA H100 SXM5 80GB: 989 TFLOP/s bf16 dense, 3.35 TB/s HBM3.
    # NVLink 4: 900 GB/s per GPU both ways together (450 GB/s one way).
    "h100-80gb": HardwareProfile("h100-80gb", 989e12, 3.35e12, 80e9, 450e9, 2e-6),
    # NVIDIA H200 SXM 141GB: same compute as H100, 4.8 TB/s HBM3e.
    "h200": HardwareProfile("h200", 989e12, 4.8e12, 141e9, 450e9, 2e-6),
    # NVIDIA Jetson AGX Orin 64GB module (an edge device): Ampere GPU, 42.5 TFLOP/s dense FP16
    # tensor (the GPU's 170 sparse INT8 TOPS halved for dense, halved again for FP16; Jetson
    # AGX Orin Series Technical Brief), 204.8 GB/s 256-bit LPDDR5 shared with the CPU, 64 GB
    # (module data sheet; up to 60 W module power in MAXN). Memory is shared: size its KV pool
    # with a lower memory_utilization.
    "jetson-agx-orin-64gb": HardwareProfile("jetson-agx-orin-64gb", 42.5e12, 204.8e9, 64e9),
}


PROFILE_DIR = os.path.join(os.path.dirname(__file__), "profiles")


def fitted_profiles() -> list[str]:
    """Names of the fitted profiles in sim/profiles/."""
    if not os.path.isdir(PROFILE_DIR):
        return []
    return sorted(f[:-5] for f in os.listdir(PROFILE_DIR) if f.endswith(".json"))


def load_fitted(name: str) -> HardwareProfile:
    path = os.path.join(PROFILE_DIR, f"{name}.json")
    with open(path) as f:
        data = json.load(f)
    base = data.get("base")
    if base not in PROFILES:
        raise ValueError(f"fitted profile {path}: base must be one of {sorted(PROFILES)}, "
                         f"got {base!r}")
    eff = tuple(sorted((k, float(v)) for k, v in data["efficiency"].items()))
    return dataclasses.replace(PROFILES[base], name=name, efficiency=eff)


def get_hardware(name: str) -> HardwareProfile:
    key = name.lower()
    if key == "cpu":
        return measure_cpu()
    if key in PROFILES:
        return PROFILES[key]
    if key in fitted_profiles():
        return load_fitted(key)
    raise ValueError(f"hardware must be one of {sorted(PROFILES) + fitted_profiles() + ['cpu']}"
                     f", got {name!r}")


_CPU: HardwareProfile | None = None


def measure_cpu(size: int = 1024, copy_mb: int = 128) -> HardwareProfile:
    """This machine's achievable float32 matmul FLOP/s and copy bandwidth (numpy), measured once
    per process: the roofline the tiny-model runs are placed on (fit() absorbs the rest)."""
    global _CPU
    if _CPU is None:
        a = np.ones((size, size), np.float32)
        a @ a
        best = min(_timed(lambda: a @ a) for _ in range(3))
        flops = 2 * size**3 / best
        x = np.ones(copy_mb * 2**20 // 4, np.float32)
        y = np.empty_like(x)
        bt = min(_timed(lambda: np.copyto(y, x)) for _ in range(3))
        import os
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        _CPU = HardwareProfile("cpu", flops, 2 * x.nbytes / bt, float(mem))
    return _CPU


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t
