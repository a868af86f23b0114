"""llmserve: a JAX research framework for LLM inference scheduling."""
from setuptools import find_packages, setup

setup(
    name="llmserve",
    version="0.1.0",
    description="Serve a real transformer in JAX and measure what scheduling wins back.",
    python_requires=">=3.12",
    packages=find_packages(include=["llmserve", "llmserve.*", "pallas_kernels", "pallas_kernels.*"]),
    # Fitted hardware profiles the simulator loads by name (llmserve/sim/hardware.py).
    package_data={"llmserve.sim": ["profiles/*.json"]},
    install_requires=[
        "jax>=0.11,<0.13",
        "flax",
        "optax",
        "numpy",
        "orbax-checkpoint",
        "absl-py",
        "ml-collections",
        "safetensors",
        "tokenizers",
        "gguf>=0.19",   # GGUF files (llama.cpp's reader and dequantizers), llmserve.model.gguf_loader
        "jinja2",       # chat templates (LLM.chat, the server's chat endpoint)
        "scipy",        # cost-model fit (llmserve.sim)
        "matplotlib",   # benchmark figures (llmserve.metrics.report)
    ],
    extras_require={
        "cuda12": ["jax[cuda12]>=0.11,<0.13"],
        # OpenAI-compatible HTTP server (llmserve.server, scripts/serve.py).
        "serve": ["fastapi", "uvicorn", "prometheus_client", "httpx", "jinja2"],
        # Real replicas as Ray actors (llmserve.cluster.ray_backend).
        "cluster": ["ray"],
        # Compile the kernels' Triton IR for sm_90 on a CPU (scripts/kernel_ir.py); large.
        "kernel-ir": ["triton>=3.5"],
        "dev": [
            "pytest", "hypothesis", "ruff",
            "fastapi", "uvicorn", "prometheus_client", "httpx", "jinja2", "openai",
            "ray",
            "nbclient", "nbformat", "ipykernel",
        ],
    },
)
