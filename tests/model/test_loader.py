"""loader.py: config.json parsing, the safetensors reader, name mapping, errors, round trip."""
from __future__ import annotations

import json
import os
import shutil
import struct

import jax
import ml_dtypes
import numpy as np
import pytest

from llmserve.model import loader
from llmserve.model.config import PRESETS, ModelConfig, RopeScaling
from llmserve.model.params import init_params, param_shapes

FIX = os.path.join(os.path.dirname(__file__), "..", "fixtures", "hf")
MODELS = ("llama", "qwen2", "mistral")


def _copy(name: str, tmp_path) -> str:
    dst = os.path.join(tmp_path, name)
    shutil.copytree(os.path.join(FIX, name), dst)
    return dst


def _edit_config(path: str, **kw) -> None:
    fn = os.path.join(path, "config.json")
    with open(fn) as f:
        hf = json.load(f)
    for k, v in kw.items():
        if v is _DELETE:
            hf.pop(k, None)
        else:
            hf[k] = v
    with open(fn, "w") as f:
        json.dump(hf, f)


_DELETE = object()


def _leaves_match_shapes(params, cfg):
    shapes = param_shapes(cfg)
    got = jax.tree.map(lambda x: tuple(x.shape), params)
    assert got == shapes


# ---- load_config ---------------------------------------------------------------------------
def test_load_config_fixtures():
    c = loader.load_config(os.path.join(FIX, "llama"))
    assert (c.model_type, c.vocab_size, c.hidden_size, c.num_layers) == ("llama", 256, 64, 2)
    assert (c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size) == (4, 2, 16, 128)
    assert c.rope_scaling == RopeScaling(8.0, 1.0, 4.0, 64)
    assert c.rms_norm_eps == 1e-5 and c.rope_theta == 10000.0
    assert not c.tie_word_embeddings and not c.attention_bias
    assert (c.bos_token_id, c.eos_token_id, c.dtype) == (1, 2, "float32")

    q = loader.load_config(os.path.join(FIX, "qwen2"))
    assert q.attention_bias and q.tie_word_embeddings and q.rope_scaling is None
    assert q.rope_theta == 1e6 and q.rms_norm_eps == 1e-6
    assert q.eos_token_id == (3, 4) and q.eos_token_ids == (3, 4) and q.bos_token_id is None
    assert q.head_dim == 16 and q.num_kv_heads == 1  # head_dim absent -> hidden / heads

    m = loader.load_config(os.path.join(FIX, "mistral"))
    assert m.model_type == "mistral" and m.head_dim == 32 and m.q_size == 128
    assert m.max_position_embeddings == 256  # capped to sliding_window


def test_load_config_legacy_keys_and_defaults(tmp_path):
    """transformers < 5 style: rope_theta + rope_scaling, torch_dtype, no head_dim/kv heads."""
    p = _copy("llama", tmp_path)
    _edit_config(p, rope_parameters=_DELETE, head_dim=_DELETE, num_key_value_heads=_DELETE,
                 dtype=_DELETE, torch_dtype="bfloat16", rope_theta=500000.0,
                 rope_scaling={"type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 8192},
                 eos_token_id=[7, 8, 9], rms_norm_eps=_DELETE)
    c = loader.load_config(p)
    assert c.head_dim == 16 and c.num_kv_heads == 4 and c.dtype == "bfloat16"
    assert c.rope_theta == 500000.0 and c.rope_scaling.factor == 32.0
    assert c.eos_token_id == (7, 8, 9) and c.rms_norm_eps == 1e-6
    assert loader.load_config(p, dtype="float32").dtype == "float32"
    _edit_config(p, rope_scaling=None, eos_token_id=[5])
    c = loader.load_config(p)
    assert c.rope_scaling is None and c.eos_token_id == 5
    _edit_config(p, rope_scaling={"rope_type": "default"})
    assert loader.load_config(p).rope_scaling is None


@pytest.mark.parametrize("edit, match", [
    ({"model_type": "gpt2"}, r"unsupported model_type 'gpt2'; supported: llama, mistral, qwen2"),
    ({"model_type": _DELETE}, r"unsupported model_type None"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}},
     r"unsupported rope_type 'yarn'"),
    ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 1e4}},
     r"missing 'low_freq_factor'"),
    ({"hidden_act": "gelu"}, r"hidden_act 'gelu'"),
    ({"attention_bias": True}, r"attention_bias=true is not supported for llama"),
    ({"mlp_bias": True}, r"mlp_bias"),
    ({"hidden_size": _DELETE}, r"required key 'hidden_size' is missing"),
    ({"dtype": "int8"}, r"unsupported torch_dtype 'int8'"),
    ({"eos_token_id": "</s>"}, r"eos_token_id must be an int"),
    ({"num_key_value_heads": 3}, r"multiple of num_kv_heads"),
    ({"partial_rotary_factor": 0.5}, r"partial_rotary_factor"),
    # issue 18: values were coerced by int()/float() and loaded (eps -1 gave empty text)
    ({"hidden_size": "64"}, r"config.json: hidden_size must be an int in \[1, 2\*\*31\), "
                            r"got '64'"),
    ({"rms_norm_eps": -1}, r"config.json: rms_norm_eps must be a positive finite number"),
    ({"rms_norm_eps": "1e-5"}, r"config.json: rms_norm_eps must be a positive finite"),
    ({"num_hidden_layers": 2.0}, r"config.json: num_hidden_layers must be an int"),
    ({"vocab_size": True}, r"config.json: vocab_size must be an int"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 0}},
     r"config.json: rope_theta must be a positive finite number"),
    ({"max_position_embeddings": 2**40}, r"max_position_embeddings must be an int in"),
])
def test_load_config_errors(tmp_path, edit, match):
    p = _copy("llama", tmp_path)
    _edit_config(p, **edit)
    with pytest.raises(ValueError, match=match):
        loader.load_config(p)


def test_load_config_missing_dir_and_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        loader.load_config(os.path.join(tmp_path, "nope"))
    with pytest.raises(ValueError, match=r"no config.json in checkpoint directory"):
        loader.load_config(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        loader.load_config(str(tmp_path))


# ---- load_params ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_load_params_matches_safetensors(name):
    """Every tensor lands in its slot, transposed for linears (checked against raw bytes)."""
    path = os.path.join(FIX, name)
    cfg = loader.load_config(path)
    params = loader.load_params(path, cfg)
    _leaves_match_shapes(params, cfg)
    where = loader._open_checkpoint(path)
    l1 = params["layers"][1]
    np.testing.assert_array_equal(np.asarray(l1["wq"]),
                                  where["model.layers.1.self_attn.q_proj.weight"]
                                  .get("model.layers.1.self_attn.q_proj.weight").T)
    np.testing.assert_array_equal(np.asarray(params["embed"]),
                                  where["model.embed_tokens.weight"]
                                  .get("model.embed_tokens.weight"))
    np.testing.assert_array_equal(np.asarray(l1["mlp_norm"]),
                                  where["model.layers.1.post_attention_layernorm.weight"]
                                  .get("model.layers.1.post_attention_layernorm.weight"))
    if cfg.attention_bias:
        np.testing.assert_array_equal(np.asarray(l1["bk"]),
                                      where["model.layers.1.self_attn.k_proj.bias"]
                                      .get("model.layers.1.self_attn.k_proj.bias"))
    assert ("lm_head" in params) == (not cfg.tie_word_embeddings)
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(params))


def test_load_params_casts_dtype():
    path = os.path.join(FIX, "qwen2")
    cfg = loader.load_config(path, dtype="bfloat16")
    params = loader.load_params(path, cfg)
    assert all(x.dtype == jax.numpy.bfloat16 for x in jax.tree.leaves(params))
    p16 = loader.load_params(path, cfg, dtype="float16")
    assert all(x.dtype == jax.numpy.float16 for x in jax.tree.leaves(p16))


def test_bf16_and_f16_checkpoints(tmp_path):
    """bf16/f16 tensors are read bit-exactly (no float32 detour) from our own writer's files."""
    path = os.path.join(FIX, "llama")
    cfg = loader.load_config(path)
    params = loader.load_params(path, cfg)
    for dt in ("bfloat16", "float16"):
        out = os.path.join(tmp_path, dt)
        loader.save_hf_checkpoint(params, cfg, out, dtype=dt)
        cfg2 = loader.load_config(out)
        assert cfg2 == cfg.replace(dtype=dt)
        st = loader.SafetensorsFile(os.path.join(out, "model.safetensors"))
        raw = st.get("model.layers.0.mlp.up_proj.weight")
        assert raw.dtype == (np.dtype(ml_dtypes.bfloat16) if dt == "bfloat16" else np.float16)
        p2 = loader.load_params(out, cfg2)
        np.testing.assert_array_equal(np.asarray(p2["layers"][0]["w_up"]), raw.T)
        np.testing.assert_allclose(np.asarray(p2["layers"][0]["w_up"], np.float32),
                                   np.asarray(params["layers"][0]["w_up"]), rtol=1e-2, atol=1e-2)


def test_sharded_fixture_and_missing_shard(tmp_path):
    p = _copy("mistral", tmp_path)
    with open(os.path.join(p, "model.safetensors.index.json")) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    assert len(shards) > 1
    os.remove(os.path.join(p, shards[1]))
    with pytest.raises(ValueError, match=rf"shard '{shards[1]}' listed in .*index.json is missing"):
        loader.load_params(p, loader.load_config(p))


def test_bad_index(tmp_path):
    p = _copy("mistral", tmp_path)
    cfg = loader.load_config(p)
    idx = os.path.join(p, "model.safetensors.index.json")
    with open(idx) as f:
        index = json.load(f)
    wm = index["weight_map"]
    name = "model.layers.0.self_attn.q_proj.weight"
    wrong = next(s for s in sorted(set(wm.values())) if s != wm[name])
    wm[name] = wrong
    with open(idx, "w") as f:
        json.dump(index, f)
    with pytest.raises(ValueError, match=rf"lists tensor '{name}' in shard '{wrong}'"):
        loader.load_params(p, cfg)
    with open(idx, "w") as f:
        f.write('{"metadata": {}}')
    with pytest.raises(ValueError, match="not a valid index"):
        loader.load_params(p, cfg)


def test_unindexed_shards_merge(tmp_path):
    """Several *.safetensors without an index: tensors are taken from all of them."""
    p = _copy("llama", tmp_path)
    cfg = loader.load_config(p)
    st = loader.SafetensorsFile(os.path.join(p, "model.safetensors"))
    names = st.keys()
    half = len(names) // 2
    loader.save_safetensors(os.path.join(p, "a.safetensors"), {n: st.get(n) for n in names[:half]})
    loader.save_safetensors(os.path.join(p, "b.safetensors"), {n: st.get(n) for n in names[half:]})
    ref = loader.load_params(os.path.join(FIX, "llama"), cfg)
    os.remove(os.path.join(p, "model.safetensors"))
    got = loader.load_params(p, cfg)
    jax.tree.map(np.testing.assert_array_equal, got, ref)
    loader.save_safetensors(os.path.join(p, "c.safetensors"), {names[0]: st.get(names[0])})
    with pytest.raises(ValueError, match=f"tensor '{names[0]}' appears in both"):
        loader.load_params(p, cfg)


def _rewrite(path: str, fn, drop=(), replace=None, add=None):
    st = loader.SafetensorsFile(os.path.join(path, fn))
    t = {n: np.array(st.get(n)) for n in st if n not in drop}
    t.update(replace or {})
    t.update(add or {})
    del st
    loader.save_safetensors(os.path.join(path, fn), t)


def test_missing_tensor(tmp_path):
    p = _copy("llama", tmp_path)
    _rewrite(p, "model.safetensors", drop=["model.layers.1.mlp.down_proj.weight"])
    with pytest.raises(ValueError, match=r"tensor 'model.layers.1.mlp.down_proj.weight' is "
                                         r"missing from checkpoint"):
        loader.load_params(p, loader.load_config(p))


def test_missing_lm_head_when_untied(tmp_path):
    p = _copy("llama", tmp_path)
    _rewrite(p, "model.safetensors", drop=["lm_head.weight"])
    with pytest.raises(ValueError, match=r"'lm_head.weight' is missing"):
        loader.load_params(p, loader.load_config(p))


def test_wrong_shape(tmp_path):
    p = _copy("llama", tmp_path)
    _rewrite(p, "model.safetensors",
             replace={"model.layers.0.self_attn.k_proj.weight": np.zeros((64, 64), np.float32)})
    with pytest.raises(ValueError, match=r"tensor 'model.layers.0.self_attn.k_proj.weight' .* "
                                         r"has shape \[64, 64\], expected \[32, 64\]"):
        loader.load_params(p, loader.load_config(p))


def test_unexpected_tensor_and_ignored_ones(tmp_path):
    p = _copy("llama", tmp_path)
    cfg = loader.load_config(p)
    _rewrite(p, "model.safetensors",
             add={"model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(8, np.float32)})
    loader.load_params(p, cfg)  # inv_freq buffers are ignored
    _rewrite(p, "model.safetensors",
             add={"model.layers.0.self_attn.o_proj.bias": np.ones(64, np.float32)})
    with pytest.raises(ValueError, match=r"tensors this config does not use: "
                                         r"\['model.layers.0.self_attn.o_proj.bias'\]"):
        loader.load_params(p, cfg)


def test_tied_checkpoint_with_redundant_lm_head(tmp_path):
    p = _copy("qwen2", tmp_path)
    cfg = loader.load_config(p)
    st = loader.SafetensorsFile(os.path.join(p, "model.safetensors"))
    emb = np.array(st.get("model.embed_tokens.weight"))
    del st
    _rewrite(p, "model.safetensors", add={"lm_head.weight": emb})
    assert "lm_head" not in loader.load_params(p, cfg)


def test_no_safetensors(tmp_path):
    p = os.path.join(tmp_path, "ckpt")
    os.makedirs(p)
    shutil.copy(os.path.join(FIX, "llama", "config.json"), p)
    cfg = loader.load_config(p)
    with pytest.raises(ValueError, match=r"no \*.safetensors files") as e:
        loader.load_params(p, cfg)
    assert ".bin" not in str(e.value)
    open(os.path.join(p, "pytorch_model.bin"), "wb").close()
    with pytest.raises(ValueError, match=r"found pytorch_model.bin: PyTorch .bin/.pt checkpoints "
                                         r"are not supported"):
        loader.load_params(p, cfg)
    with pytest.raises(ValueError, match="does not exist"):
        loader.load_params(os.path.join(tmp_path, "nope"), cfg)


def test_corrupt_safetensors(tmp_path):
    p = _copy("llama", tmp_path)
    cfg = loader.load_config(p)
    fn = os.path.join(p, "model.safetensors")
    with open(fn, "rb") as f:
        data = f.read()
    with open(fn, "wb") as f:
        f.write(data[:-100])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        loader.load_params(p, cfg)
    with open(fn, "wb") as f:
        f.write(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(ValueError, match="not a safetensors file"):
        loader.load_params(p, cfg)
    with open(fn, "wb") as f:
        f.write(struct.pack("<Q", 4) + b"{x]}")
    with pytest.raises(ValueError, match="not valid JSON"):
        loader.load_params(p, cfg)
    with open(fn, "wb") as f:
        hdr = json.dumps({"a": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}}).encode()
        f.write(struct.pack("<Q", len(hdr)) + hdr + b"\0")
    with pytest.raises(ValueError, match="unsupported dtype 'Q7'"):
        loader.load_params(p, cfg)


def test_safetensors_roundtrip_all_dtypes(tmp_path):
    fn = os.path.join(tmp_path, "x.safetensors")
    rng = np.random.default_rng(0)
    t = {"f32": rng.normal(size=(3, 5)).astype(np.float32),
         "bf16": rng.normal(size=(7,)).astype(ml_dtypes.bfloat16),
         "f16": rng.normal(size=(2, 2, 2)).astype(np.float16),
         "i64": np.arange(5, dtype=np.int64), "empty": np.zeros((0, 4), np.float32),
         "scalar": np.array(3.5, np.float32)}
    loader.save_safetensors(fn, t, metadata={"format": "pt"})
    st = loader.SafetensorsFile(fn)
    assert st.metadata == {"format": "pt"} and sorted(st.keys()) == sorted(t)
    for k, v in t.items():
        got = st.get(k)
        assert got.dtype == v.dtype and got.shape == v.shape
        np.testing.assert_array_equal(got, v)
    assert not st.get("f32").flags.writeable and not st.get("f32").flags.owndata


# ---- save_hf_checkpoint --------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [
    PRESETS["tiny"].replace(hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                            num_kv_heads=2, head_dim=8),
    ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=40, num_layers=1, num_heads=2,
                num_kv_heads=1, head_dim=16, tie_word_embeddings=True, attention_bias=True,
                rope_theta=1e6, rms_norm_eps=1e-6, eos_token_id=(3, 4), model_type="qwen2"),
    ModelConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_layers=1, num_heads=2,
                num_kv_heads=2, head_dim=8, rope_scaling=RopeScaling(8.0, 1.0, 4.0, 64),
                bos_token_id=0, eos_token_id=1),
], ids=["tiny-llama", "qwen2", "llama3-rope"])
def test_save_hf_checkpoint_roundtrip(tmp_path, cfg):
    params = init_params(cfg, seed=3)
    loader.save_hf_checkpoint(params, cfg, str(tmp_path))
    cfg2 = loader.load_config(str(tmp_path))
    assert cfg2 == cfg
    got = loader.load_params(str(tmp_path), cfg2)
    jax.tree.map(np.testing.assert_array_equal, got, params)
    with open(os.path.join(tmp_path, "config.json")) as f:
        hf = json.load(f)
    assert hf["architectures"] == [loader._ARCHITECTURES[cfg.model_type]]


def test_save_hf_checkpoint_rejects_inexpressible(tmp_path):
    cfg = PRESETS["tiny"].replace(attention_bias=True, num_layers=1, hidden_size=16,
                                  intermediate_size=16, num_heads=2, num_kv_heads=1, head_dim=8)
    with pytest.raises(ValueError, match="attention_bias=True cannot be expressed"):
        loader.save_hf_checkpoint({}, cfg, str(tmp_path))  # config is checked first
