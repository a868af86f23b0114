"""llmserve: serve a real transformer in JAX and measure what scheduling wins back.

Public API: LLM, LLMEngine, SamplingParams, EngineConfig, load_config. Imported lazily so
that `import llmserve.core` stays free of jax.
"""
_EXPORTS = {
    "LLM": "llmserve.engine", "LLMEngine": "llmserve.engine",
    "SamplingParams": "llmserve.sampling_params", "EngineConfig": "llmserve.config",
    "load_config": "llmserve.config", "RequestOutput": "llmserve.outputs",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'llmserve' has no attribute {name!r}")
