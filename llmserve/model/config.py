"""Model shapes: a frozen, hashable ModelConfig (usable as a jit static argument) and presets."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

_DTYPES = ("float32", "bfloat16", "float16")
_INT32_MAX = 2**31 - 1      # token ids, positions and sizes are int32 in the step


def config_int(source: str, key: str, value, least: int = 1) -> int:
    """A size read from a checkpoint's config (config.json, GGUF metadata), as JSON gave it:
    an int in [least, 2**31), not a string, a float or a bool. ValueError naming source and
    key (hidden_size: "64" once loaded as 64 by int())."""
    if isinstance(value, bool) or not isinstance(value, int) or \
            not least <= value <= _INT32_MAX:
        raise ValueError(f"{source}: {key} must be an int in [{least}, 2**31), got "
                         f"{value!r:.80}")
    return value


def config_float(source: str, key: str, value) -> float:
    """A positive, finite real read from a checkpoint's config (rms_norm_eps, rope_theta,
    rope scaling factors): rms_norm_eps -1 loaded and then produced empty text."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or value <= 0:
        raise ValueError(f"{source}: {key} must be a positive finite number, got "
                         f"{value!r:.80}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama-3 style frequency scaling (`rope_type: llama3` in HF config.json)."""
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v projection biases (Qwen2)
    dtype: str = "float32"
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    model_type: str = "llama"

    def __post_init__(self):
        # Checked here as well as by the loaders, so no source of a ModelConfig (presets,
        # config.json, GGUF, replace()) can carry a value the model code turns into garbage.
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
                     "num_heads", "num_kv_heads", "head_dim", "max_position_embeddings"):
            config_int("ModelConfig", name, getattr(self, name))
        for name in ("rms_norm_eps", "rope_theta"):
            config_float("ModelConfig", name, getattr(self, name))
        for name in ("bos_token_id", "eos_token_id"):
            v = getattr(self, name)
            for t in (v if isinstance(v, tuple) else () if v is None else (v,)):
                config_int("ModelConfig", name, t, least=0)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"ModelConfig.num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})")
        if self.dtype not in _DTYPES:
            raise ValueError(f"ModelConfig.dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if self.head_dim % 2:
            raise ValueError(f"ModelConfig.head_dim must be even for RoPE, got {self.head_dim}")

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, int):
            return (self.eos_token_id,)
        return tuple(self.eos_token_id)

    def num_params(self) -> int:
        h, i = self.hidden_size, self.intermediate_size
        attn = h * self.q_size * 2 + h * self.kv_size * 2
        if self.attention_bias:
            attn += self.q_size + 2 * self.kv_size
        layer = attn + 3 * h * i + 2 * h
        embed = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * layer + embed + h

    def replace(self, **kw: Any) -> ModelConfig:
        return dataclasses.replace(self, **kw)


# Byte-level tokenizer for dummy models: 256 bytes + <bos>, <eos>, <pad>. See llmserve/tokenizer.py.
BYTE_VOCAB_SIZE = 259
BYTE_BOS, BYTE_EOS = 256, 257

PRESETS: dict[str, ModelConfig] = {
    # ~20M parameters: big enough that scheduling effects are real, small enough for 2 CPU cores.
    "tiny": ModelConfig(vocab_size=BYTE_VOCAB_SIZE, hidden_size=512, intermediate_size=1792,
                        num_layers=6, num_heads=8, num_kv_heads=2, head_dim=64,
                        rope_theta=10000.0, max_position_embeddings=4096,
                        bos_token_id=BYTE_BOS, eos_token_id=BYTE_EOS, model_type="llama"),
    # A random Llama with a real (Llama-2 sized) vocabulary: where the sampler and the
    # vocabulary projection cost what they cost on real models (the engine benchmark's default).
    "tiny-32k": ModelConfig(vocab_size=32000, hidden_size=256, intermediate_size=1024,
                            num_layers=4, num_heads=4, num_kv_heads=2, head_dim=64,
                            rope_theta=10000.0, max_position_embeddings=4096,
                            bos_token_id=1, eos_token_id=2, model_type="llama"),
    "llama3-8b": ModelConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                             num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128,
                             rope_theta=500000.0, rope_scaling=RopeScaling(),
                             max_position_embeddings=8192, dtype="bfloat16",
                             bos_token_id=128000, eos_token_id=128001),
    "llama2-7b": ModelConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                             num_layers=32, num_heads=32, num_kv_heads=32, head_dim=128,
                             rms_norm_eps=1e-5, rope_theta=10000.0,
                             max_position_embeddings=4096, dtype="bfloat16",
                             bos_token_id=1, eos_token_id=2),
    "mistral-7b": ModelConfig(vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                              num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128,
                              rope_theta=10000.0, max_position_embeddings=32768,
                              dtype="bfloat16", bos_token_id=1, eos_token_id=2,
                              model_type="mistral"),
    "qwen2-0.5b": ModelConfig(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                              num_layers=24, num_heads=14, num_kv_heads=2, head_dim=64,
                              rms_norm_eps=1e-6, rope_theta=1000000.0,
                              max_position_embeddings=32768, tie_word_embeddings=True,
                              attention_bias=True, dtype="bfloat16",
                              bos_token_id=151643, eos_token_id=151643, model_type="qwen2"),
}


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; expected one of {sorted(PRESETS)} "
                         "or a checkpoint directory")
    return PRESETS[name]
