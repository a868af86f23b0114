"""Small GGUF files for tests, written with gguf.GGUFWriter the way llama.cpp's converter
(convert_hf_to_gguf.py) writes them: HF [out, in] weights, q/k rows permuted for llama-arch."""
from __future__ import annotations

import os

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import quants

from llmserve.model import loader


def permute_qk(w: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """llama.cpp's LlamaModel.permute (HF rotate-half layout -> GGUF interleaved pairs)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def add_tensor(writer: gguf.GGUFWriter, name: str, w: np.ndarray, qtype: Q = Q.F32) -> None:
    w = np.ascontiguousarray(w, np.float32)
    if qtype == Q.F32:
        writer.add_tensor(name, w)
    elif qtype == Q.F16:
        writer.add_tensor(name, w.astype(np.float16))
    else:
        writer.add_tensor(name, quants.quantize(w, qtype), raw_dtype=qtype)


def write_gguf(path: str, arch: str, meta: dict, tensors: dict, types: dict | None = None,
               tokenizer: dict | None = None) -> str:
    """meta: '{arch}.' keys without the prefix -> value (typed by the writer's helpers below);
    tensors: GGUF name -> float32 array; types: name -> quantization type (default F32)."""
    w = gguf.GGUFWriter(path, arch)
    for key, value in meta.items():
        full = f"{arch}.{key}"
        if isinstance(value, bool):
            w.add_bool(full, value)
        elif isinstance(value, int):
            w.add_uint32(full, value)
        elif isinstance(value, float):
            w.add_float32(full, value)
        else:
            w.add_string(full, value)
    for key, value in (tokenizer or {}).items():
        if isinstance(value, list):
            w.add_array(key, value)
        elif isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        else:
            w.add_string(key, value)
    for name, t in tensors.items():
        add_tensor(w, name, t, (types or {}).get(name, Q.F32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def hf_to_gguf(hf_dir: str, path: str, types: dict | None = None) -> str:
    """An HF llama/mistral/qwen2 checkpoint directory as a GGUF file, as llama.cpp converts it
    (mistral is written as arch 'llama'; sliding_window is dropped, the context capped to it)."""
    cfg = loader.load_config(hf_dir, dtype="float32")
    where = loader._open_checkpoint(hf_dir)
    arch = "qwen2" if cfg.model_type == "qwen2" else "llama"
    meta = {"context_length": cfg.max_position_embeddings, "block_count": cfg.num_layers,
            "embedding_length": cfg.hidden_size, "feed_forward_length": cfg.intermediate_size,
            "attention.head_count": cfg.num_heads, "attention.head_count_kv": cfg.num_kv_heads,
            "attention.key_length": cfg.head_dim, "attention.value_length": cfg.head_dim,
            "rope.dimension_count": cfg.head_dim, "rope.freq_base": float(cfg.rope_theta),
            "attention.layer_norm_rms_epsilon": float(cfg.rms_norm_eps),
            "vocab_size": cfg.vocab_size}
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight":
             "output_norm.weight", "lm_head.weight": "output.weight"}
    suffixes = {"input_layernorm.weight": "attn_norm.weight",
                "self_attn.q_proj.weight": "attn_q.weight",
                "self_attn.k_proj.weight": "attn_k.weight",
                "self_attn.v_proj.weight": "attn_v.weight",
                "self_attn.o_proj.weight": "attn_output.weight",
                "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
                "self_attn.v_proj.bias": "attn_v.bias",
                "post_attention_layernorm.weight": "ffn_norm.weight",
                "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
                "mlp.down_proj.weight": "ffn_down.weight"}
    tensors = {}
    for hf_name in sorted(where):
        a = np.array(where[hf_name].get(hf_name), np.float32)
        if hf_name in names:
            if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
                continue
            tensors[names[hf_name]] = a
            continue
        i, suffix = hf_name.split(".", 3)[2], hf_name.split(".", 3)[3]
        if arch == "llama" and suffix.startswith("self_attn.q_proj"):
            a = permute_qk(a, cfg.num_heads, cfg.num_heads)
        elif arch == "llama" and suffix.startswith("self_attn.k_proj"):
            a = permute_qk(a, cfg.num_heads, cfg.num_kv_heads)
        tensors[f"blk.{i}.{suffixes[suffix]}"] = a
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tok = {"tokenizer.ggml.eos_token_id": cfg.eos_token_ids[0]} if cfg.eos_token_ids else {}
    if cfg.bos_token_id is not None:
        tok["tokenizer.ggml.bos_token_id"] = cfg.bos_token_id
    return write_gguf(path, arch, meta, tensors, types, tok)
