"""Hugging Face checkpoints: config.json + *.safetensors -> (ModelConfig, params), and back.

load_config/load_params also take a GGUF file (llama.cpp's format), read by gguf_loader.py.

Supported architectures: Llama (incl. Llama-3 rope scaling), Mistral, Qwen2 (q/k/v biases).

Safetensors files are parsed here, without torch or the `safetensors` package: an 8-byte
little-endian header length, a JSON header mapping each tensor name to its dtype, shape and
byte range, then the raw bytes. Tensors are read through a read-only numpy memmap, so a
bf16 checkpoint is never decoded through float32 and a 16 GB checkpoint is not held twice:
each tensor goes from the page cache to the device, and is transposed/cast there.

HF stores linear weights [out, in]; our params store them [in, out] (see params.py).
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import struct
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from llmserve.model.config import ModelConfig, RopeScaling, config_float, config_int
from llmserve.model.params import param_shapes

log = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                  "qwen2": "Qwen2ForCausalLM"}
# Defaults of the corresponding transformers config classes, for keys a config.json omits.
_HF_DEFAULTS = {
    "llama": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 2048},
    "mistral": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 4096 * 32},
    "qwen2": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 32768},
}
_TORCH_DTYPES = {"float32": "float32", "float": "float32", "bfloat16": "bfloat16",
                 "float16": "float16", "half": "float16"}

# ---------------------------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------------------------
_ST_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("bool"),
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsFile:
    """Read-only view of one .safetensors file; `get(name)` returns a zero-copy numpy array."""

    def __init__(self, path: str):
        self.path = path
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > _MAX_HEADER or 8 + n > size:
                raise ValueError(f"{path}: not a safetensors file (header length {n} does not "
                                 f"fit a file of {size} bytes)")
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(f"{path}: safetensors header is not valid JSON: {e}") from None
        if not isinstance(header, dict):
            raise ValueError(f"{path}: safetensors header is not a JSON object")
        self.metadata = header.pop("__metadata__", None) or {}
        self._entries: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}
        data_len = size - 8 - n
        for name, e in header.items():
            try:
                dt, shape, (start, end) = e["dtype"], tuple(e["shape"]), e["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{path}: malformed header entry for tensor {name!r}: {e!r}") \
                    from None
            if dt not in _ST_DTYPES:
                raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {dt!r}; "
                                 f"supported: {sorted(_ST_DTYPES)}")
            np_dt = _ST_DTYPES[dt]
            nbytes = math.prod(shape) * np_dt.itemsize
            if not (0 <= start <= end <= data_len) or end - start != nbytes:
                raise ValueError(f"{path}: tensor {name!r} byte range [{start}, {end}) does not "
                                 f"match dtype {dt} shape {list(shape)} ({nbytes} bytes) within "
                                 f"{data_len} data bytes; the file is truncated or corrupt")
            self._entries[name] = (np_dt, shape, start, end)
        self._mm = (np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n, shape=(data_len,))
                    if data_len > 0 else np.zeros((0,), np.uint8))

    def keys(self) -> list[str]:
        return list(self._entries)

    def __iter__(self):
        return iter(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def get(self, name: str) -> np.ndarray:
        dt, shape, start, end = self._entries[name]
        if start == end:  # empty tensor
            return np.zeros(shape, dt)
        return np.ndarray(shape, dt, buffer=self._mm, offset=start)  # read-only, zero-copy


def save_safetensors(path: str, tensors: dict[str, np.ndarray],
                     metadata: dict[str, str] | None = None) -> None:
    """Write numpy arrays as a .safetensors file (the inverse of SafetensorsFile)."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    arrays, offset = [], 0
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        if not a.flags.c_contiguous:
            a = a.copy(order="C")  # (np.ascontiguousarray would turn a scalar into shape [1])
        if a.dtype not in _ST_NAMES:
            raise ValueError(f"tensor {name!r}: dtype {a.dtype} cannot be saved as safetensors")
        header[name] = {"dtype": _ST_NAMES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # pad so the data starts 8-byte aligned
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for a in arrays:
            f.write(a.tobytes())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# config.json -> ModelConfig
# ---------------------------------------------------------------------------------------------
def _read_config_json(path: str) -> dict:
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"checkpoint directory {path!r} does not exist or is not a directory")
    fn = os.path.join(path, "config.json")
    if not os.path.isfile(fn):
        raise ValueError(f"no config.json in checkpoint directory {path!r}")
    try:
        with open(fn) as f:
            hf = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{fn} is not valid JSON: {e}") from None
    if not isinstance(hf, dict):
        raise ValueError(f"{fn} is not a JSON object")
    return hf


def _rope(hf: dict, fn: str, default_theta: float) -> tuple[float, RopeScaling | None]:
    # transformers < 5 writes `rope_theta` + `rope_scaling`; >= 5 writes `rope_parameters`
    # (which also holds rope_theta). Accept both.
    rp = hf.get("rope_parameters")
    rs = hf.get("rope_scaling")
    theta = hf.get("rope_theta")
    if isinstance(rp, dict):
        theta = rp.get("rope_theta", theta)
        if rs is None:
            rs = rp
    elif rp is not None:
        raise ValueError(f"{fn}: rope_parameters must be an object, got {rp!r}")
    theta = config_float(fn, "rope_theta", default_theta if theta is None else theta)
    if rs is None:
        return theta, None
    if not isinstance(rs, dict):
        raise ValueError(
            f"{fn}: rope_scaling must be an object or null, got {rs!r}")
    rtype = rs.get("rope_type", rs.get("type", "default"))
    if rtype == "default":
        return theta, None
    if rtype != "llama3":
        raise ValueError(f"{fn}: unsupported rope_type {rtype!r}; supported: 'default' "
                         "(no scaling) and 'llama3'")
    try:
        return theta, RopeScaling(
            **{k: config_float(fn, f"rope_scaling.{k}", rs[k])
               for k in ("factor", "low_freq_factor", "high_freq_factor")},
            original_max_position_embeddings=config_int(
                fn, "rope_scaling.original_max_position_embeddings",
                rs["original_max_position_embeddings"]))
    except KeyError as e:
        raise ValueError(f"{fn}: llama3 rope scaling is missing {e.args[0]!r}") from None


def _token_ids(v: Any, key: str, fn: str) -> int | tuple[int, ...] | None:
    if v is None or isinstance(v, int):
        return v
    if isinstance(v, list) and all(isinstance(x, int) for x in v):
        return v[0] if len(v) == 1 else tuple(v)
    raise ValueError(f"{fn}: {key} must be an int, a list of ints or null, got {v!r}")


def load_config(path: str, dtype: str | None = None) -> ModelConfig:
    """ModelConfig from a Hugging Face checkpoint directory's config.json, or a GGUF file.

    `dtype` overrides the checkpoint's torch_dtype/dtype (float32 when neither is given).
    Raises ValueError for anything the model code cannot run exactly.
    """
    if os.path.isfile(os.fspath(path)):
        from llmserve.model.gguf_loader import load_gguf_config
        return load_gguf_config(path, dtype)
    hf = _read_config_json(path)
    fn = os.path.join(os.fspath(path), "config.json")
    mt = hf.get("model_type")
    if mt not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{fn}: unsupported model_type {mt!r}; supported: "
                         f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    d = _HF_DEFAULTS[mt]

    def req(key: str) -> Any:
        if key not in hf or hf[key] is None:
            raise ValueError(f"{fn}: required key {key!r} is missing")
        return hf[key]

    act = hf.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ValueError(f"{fn}: unsupported hidden_act {act!r}; only 'silu' is supported")
    prf = hf.get("partial_rotary_factor", (hf.get("rope_parameters") or {}).get(
        "partial_rotary_factor", 1.0))
    if prf not in (None, 1, 1.0):
        raise ValueError(f"{fn}: partial_rotary_factor={prf} is not supported")
    if hf.get("mlp_bias"):
        raise ValueError(f"{fn}: mlp_bias=true is not supported")
    if mt == "qwen2":
        attention_bias = True  # Qwen2 always has q/k/v biases and no o_proj bias
    else:
        attention_bias = False
        if hf.get("attention_bias"):
            # Llama's attention_bias also puts a bias on o_proj, which our params lack.
            raise ValueError(f"{fn}: attention_bias=true is not supported for {mt}")

    def size(key: str, value=None) -> int:    # sizes as JSON gave them: "64" is no int
        return config_int(fn, key, req(key) if value is None else value)

    hidden, heads = size("hidden_size"), size("num_attention_heads")
    head_dim = hf.get("head_dim")
    if head_dim is None:
        if hidden % heads:
            raise ValueError(f"{fn}: hidden_size {hidden} is not divisible by "
                             f"num_attention_heads {heads} and head_dim is not given")
        head_dim = hidden // heads
    kv_heads = hf.get("num_key_value_heads")
    theta, scaling = _rope(hf, fn, d["rope_theta"])
    max_pos = size("max_position_embeddings",
                   hf.get("max_position_embeddings") or d["max_position_embeddings"])
    window = hf.get("sliding_window")
    if mt == "qwen2" and not hf.get("use_sliding_window", False):
        window = None
    if window is not None and size("sliding_window", window) < max_pos:
        # We implement full attention only; it equals sliding-window attention while the
        # sequence fits in the window, so cap the usable length there.
        log.warning("%s: sliding_window=%s < max_position_embeddings=%s; full attention is "
                    "exact only up to the window, so max_position_embeddings is capped to %s",
                    fn, window, max_pos, window)
        max_pos = int(window)
    if dtype is None:
        td = hf.get("torch_dtype", hf.get("dtype")) or "float32"
        if td not in _TORCH_DTYPES:
            raise ValueError(f"{fn}: unsupported torch_dtype {td!r}; supported: "
                             f"{sorted(set(_TORCH_DTYPES.values()))} (or pass dtype=)")
        dtype = _TORCH_DTYPES[td]
    return ModelConfig(
        vocab_size=size("vocab_size"), hidden_size=hidden,
        intermediate_size=size("intermediate_size"),
        num_layers=size("num_hidden_layers"), num_heads=heads,
        num_kv_heads=size("num_key_value_heads", heads if kv_heads is None else kv_heads),
        head_dim=size("head_dim", head_dim),
        rms_norm_eps=config_float(fn, "rms_norm_eps", hf.get("rms_norm_eps",
                                                             d["rms_norm_eps"])),
        rope_theta=theta,
        rope_scaling=scaling, max_position_embeddings=max_pos,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=attention_bias, dtype=dtype,
        bos_token_id=_token_ids(hf.get("bos_token_id"), "bos_token_id", fn),
        eos_token_id=_token_ids(hf.get("eos_token_id"), "eos_token_id", fn),
        model_type=mt)


# ---------------------------------------------------------------------------------------------
# safetensors -> params
# ---------------------------------------------------------------------------------------------
_LAYER_MAP = {  # our name -> (HF suffix under model.layers.{i}., transpose)
    "attn_norm": ("input_layernorm.weight", False),
    "wq": ("self_attn.q_proj.weight", True), "wk": ("self_attn.k_proj.weight", True),
    "wv": ("self_attn.v_proj.weight", True), "wo": ("self_attn.o_proj.weight", True),
    "bq": ("self_attn.q_proj.bias", False), "bk": ("self_attn.k_proj.bias", False),
    "bv": ("self_attn.v_proj.bias", False),
    "mlp_norm": ("post_attention_layernorm.weight", False),
    "w_gate": ("mlp.gate_proj.weight", True), "w_up": ("mlp.up_proj.weight", True),
    "w_down": ("mlp.down_proj.weight", True),
}
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def hf_name_map(cfg: ModelConfig) -> dict[tuple, tuple[str, bool]]:
    """Param path (tuple of keys) -> (HF tensor name, stored transposed)."""
    out: dict[tuple, tuple[str, bool]] = {("embed",): ("model.embed_tokens.weight", False),
                                          ("final_norm",): ("model.norm.weight", False)}
    shapes = param_shapes(cfg)
    for i, layer in enumerate(shapes["layers"]):
        for k in layer:
            suffix, t = _LAYER_MAP[k]
            out[("layers", i, k)] = (f"model.layers.{i}.{suffix}", t)
    if "lm_head" in shapes:
        out[("lm_head",)] = ("lm_head.weight", True)
    return out


def _open_checkpoint(path: str) -> dict[str, SafetensorsFile]:
    """Tensor name -> the file that holds it."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"checkpoint directory {path!r} does not exist or is not a directory")
    index_fn = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index_fn):
        try:
            with open(index_fn) as f:
                weight_map = json.load(f)["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ValueError(f"{index_fn}: not a valid index (expected a JSON object with a "
                             "'weight_map' of tensor name -> shard file)") from None
        shards: dict[str, SafetensorsFile] = {}
        for shard in sorted(set(weight_map.values())):
            sfn = os.path.join(path, shard)
            if not os.path.isfile(sfn):
                raise ValueError(f"shard {shard!r} listed in {index_fn} is missing from {path!r}")
            shards[shard] = SafetensorsFile(sfn)
        where = {}
        for name, shard in weight_map.items():
            if name not in shards[shard]:
                raise ValueError(f"{index_fn} lists tensor {name!r} in shard {shard!r}, "
                                 "but that shard does not contain it")
            where[name] = shards[shard]
        return where
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        bins = [f for f in os.listdir(path) if f.endswith((".bin", ".pt", ".pth"))]
        extra = (f" (found {', '.join(sorted(bins))}: PyTorch .bin/.pt checkpoints are not "
                 "supported; convert them to safetensors)") if bins else ""
        raise ValueError(f"no *.safetensors files in checkpoint directory {path!r}{extra}")
    where = {}
    for fname in files:
        st = SafetensorsFile(os.path.join(path, fname))
        for name in st:
            if name in where:
                raise ValueError(f"tensor {name!r} appears in both {where[name].path} and "
                                 f"{st.path} (and there is no model.safetensors.index.json)")
            where[name] = st
    return where


@functools.partial(jax.jit, static_argnames=("transpose", "dtype"))
def convert_on_device(x, transpose: bool, dtype: str):
    return (x.T if transpose else x).astype(dtype)


def load_params(path: str, cfg: ModelConfig, dtype: str | None = None) -> dict:
    """Params pytree (see params.py) from a checkpoint directory's safetensors file(s), or a
    GGUF file (dequantized).

    Every expected tensor must be present with the exact HF shape; tensors we don't use are
    an error too (they would mean the config and the weights disagree), except rotary
    inv_freq buffers and a redundant lm_head.weight of a tied model.
    """
    if os.path.isfile(os.fspath(path)):
        from llmserve.model.gguf_loader import load_gguf_params
        return load_gguf_params(path, cfg, dtype)
    dtype = str(jnp.dtype(dtype or cfg.dtype))
    where = _open_checkpoint(path)
    # Some checkpoints of the bare model (LlamaModel) omit the "model." prefix.
    strip = "model.embed_tokens.weight" not in where and "embed_tokens.weight" in where
    shapes = param_shapes(cfg)
    params: dict = {"layers": [{} for _ in range(cfg.num_layers)]}
    used = set()
    for key, (name, transpose) in hf_name_map(cfg).items():
        src = name[len("model."):] if strip and name.startswith("model.") else name
        if src not in where:
            raise ValueError(f"tensor {src!r} is missing from checkpoint {os.fspath(path)!r}")
        used.add(src)
        ours = shapes[key[0]] if len(key) == 1 else shapes["layers"][key[1]][key[2]]
        expected = tuple(reversed(ours)) if transpose else tuple(ours)
        st = where[src]
        if st.shape(src) != expected:
            raise ValueError(f"tensor {src!r} in {st.path} has shape {list(st.shape(src))}, "
                             f"expected {list(expected)} for this config.json")
        arr = convert_on_device(jax.device_put(st.get(src)), transpose, dtype)
        if len(key) == 1:
            params[key[0]] = arr
        else:
            params["layers"][key[1]][key[2]] = arr
    unused = sorted(n for n in where if n not in used and not n.endswith(_IGNORED_SUFFIXES)
                    and not (cfg.tie_word_embeddings and n == "lm_head.weight"))
    if unused:
        more = f" (+{len(unused) - 5} more)" if len(unused) > 5 else ""
        raise ValueError(f"checkpoint {os.fspath(path)!r} has tensors this config does not use: "
                         f"{unused[:5]}{more}; config.json and the weights disagree")
    return params


# ---------------------------------------------------------------------------------------------
# params -> HF checkpoint (for benchmarks against transformers on the same weights)
# ---------------------------------------------------------------------------------------------
def hf_config_dict(cfg: ModelConfig) -> dict:
    """A config.json that transformers (and load_config) read back as `cfg`."""
    if cfg.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"unsupported model_type {cfg.model_type!r}; supported: "
                         f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    if cfg.attention_bias != (cfg.model_type == "qwen2"):
        raise ValueError(f"attention_bias={cfg.attention_bias} cannot be expressed for "
                         f"model_type {cfg.model_type!r} (only qwen2 has q/k/v biases)")
    eos = cfg.eos_token_id
    rope_scaling = None if cfg.rope_scaling is None else {
        "rope_type": "llama3", "factor": cfg.rope_scaling.factor,
        "low_freq_factor": cfg.rope_scaling.low_freq_factor,
        "high_freq_factor": cfg.rope_scaling.high_freq_factor,
        "original_max_position_embeddings": cfg.rope_scaling.original_max_position_embeddings}
    hf = {
        "architectures": [_ARCHITECTURES[cfg.model_type]], "model_type": cfg.model_type,
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim, "hidden_act": "silu", "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta, "rope_scaling": rope_scaling,
        # transformers >= 5 reads rope_parameters; older versions read the two keys above.
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta,
                            **(rope_scaling or {})},
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": list(eos) if isinstance(eos, tuple) else eos,
        "torch_dtype": cfg.dtype, "dtype": cfg.dtype,
    }
    if cfg.model_type == "llama":
        hf.update(attention_bias=False, mlp_bias=False)
    else:
        hf.update(sliding_window=None, use_sliding_window=False)
    return hf


def save_hf_checkpoint(params: dict, cfg: ModelConfig, path: str,
                       dtype: str | None = None) -> None:
    """Write params as a Hugging Face checkpoint directory (config.json + model.safetensors)
    that transformers' AutoModelForCausalLM.from_pretrained and load_params both read."""
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    dtype = str(jnp.dtype(dtype or cfg.dtype))
    hf = hf_config_dict(cfg.replace(dtype=dtype))
    tensors = {}
    for key, (name, transpose) in hf_name_map(cfg).items():
        node: Any = params
        for k in key:
            node = node[k]
        a = np.asarray(jax.device_get(convert_on_device(node, transpose, dtype)))
        tensors[name] = a
    save_safetensors(os.path.join(path, "model.safetensors"), tensors,
                     metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf, f, indent=2, sort_keys=True)
        f.write("\n")


def iter_tensor_names(path: str) -> Iterable[str]:
    """All tensor names in a checkpoint directory (for diagnostics)."""
    return sorted(_open_checkpoint(path))
