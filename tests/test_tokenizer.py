"""llmserve.tokenizer: byte fallback, HF tokenizer.json (checked against transformers' output
stored by tests/fixtures/make_hf_fixtures.py), ids-only tokenizer, and load_tokenizer's choice."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from llmserve.model.config import PRESETS, ModelConfig
from llmserve.tokenizer import (
    ByteTokenizer,
    HFTokenizer,
    TokenIdsOnly,
    Tokenizer,
    decode_continuation,
    load_tokenizer,
)

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "hf")
LLAMA = os.path.join(FIX, "llama")


def _cfg(vocab: int, **kw) -> ModelConfig:
    return ModelConfig(vocab_size=vocab, hidden_size=8, intermediate_size=8, num_layers=1,
                       num_heads=1, num_kv_heads=1, head_dim=8, **kw)


def test_import_does_not_need_tokenizers_library():
    code = ("import sys; sys.modules['tokenizers'] = None; import llmserve.tokenizer as t; "
            "from llmserve.model.config import PRESETS; "
            "print(type(t.load_tokenizer(None, PRESETS['tiny'])).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ByteTokenizer"


@pytest.mark.parametrize("text", ["", "hello", "héllo wörld ✓ 日本語 🙂", "a\nb\tc\0"])
def test_byte_roundtrip(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids[0] == 256 and ids[1:] == list(text.encode("utf-8"))
    assert all(0 <= i < 259 for i in ids)
    assert tok.decode(ids) == text
    assert ByteTokenizer(add_bos=False).encode(text) == list(text.encode("utf-8"))


def test_byte_decode_ignores_specials_and_replaces_bad_utf8():
    tok = ByteTokenizer()
    assert tok.decode([256, 104, 105, 257, 258, 300, -1]) == "hi"
    assert tok.decode([0xE6, 0x97]) == "\ufffd"  # truncated multi-byte character
    assert tok.decode([0xFF, 104]) == "\ufffdh"
    assert (tok.bos_token_id, tok.eos_token_ids, tok.vocab_size) == (256, (257,), 259)
    with pytest.raises(TypeError, match="takes a str"):
        tok.encode([1, 2])


def test_hf_tokenizer_matches_transformers():
    with open(os.path.join(LLAMA, "tokenizer_golden.json")) as f:
        golden = json.load(f)
    cfg = PRESETS["tiny"].replace(vocab_size=256, bos_token_id=1, eos_token_id=2)
    tok = load_tokenizer(LLAMA, cfg)
    assert isinstance(tok, HFTokenizer) and isinstance(tok, Tokenizer)
    assert tok.bos_token_id == golden["bos_token_id"] == 1
    assert tok.eos_token_ids == (golden["eos_token_id"],)
    assert tok.vocab_size == golden["vocab_size"]
    for case in golden["cases"]:
        assert tok.encode(case["text"]) == case["ids"], case["text"]
        assert tok.decode(case["ids"]) == case["decoded"]
    # Round trip on text made of the training alphabet.
    s = "The quick dog schedules blocks of tokens."
    assert tok.decode(tok.encode(s)) == s


def _tok_dir(tmp_path, tc: dict | None, post_processor: bool = True) -> str:
    d = os.path.join(tmp_path, "tok")
    os.makedirs(d)
    with open(os.path.join(LLAMA, "tokenizer.json")) as f:
        tj = json.load(f)
    if not post_processor:
        tj["post_processor"] = None
    with open(os.path.join(d, "tokenizer.json"), "w") as f:
        json.dump(tj, f)
    if tc is not None:
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump(tc, f)
    return d


def test_hf_tokenizer_config_handling(tmp_path):
    cfg = _cfg(256, bos_token_id=1, eos_token_id=(2, 7))
    # add_bos_token without a post-processor that adds it: we prepend; eos from both sources.
    d = _tok_dir(tmp_path, {"bos_token": {"content": "<s>"}, "eos_token": "</s>",
                            "add_bos_token": True}, post_processor=False)
    tok = HFTokenizer(d, cfg)
    ids = tok.encode("hello")
    assert ids[0] == 1 and ids.count(1) == 1
    assert tok.eos_token_ids == (2, 7)
    # No tokenizer_config.json: specials fall back to the model config, nothing is prepended.
    shutil.rmtree(d)
    d = _tok_dir(tmp_path, None, post_processor=False)
    tok = HFTokenizer(d, cfg)
    assert tok.bos_token_id == 1 and tok.eos_token_ids == (2, 7)
    assert tok.encode("hello")[0] != 1


def test_hf_tokenizer_errors(tmp_path):
    d = _tok_dir(tmp_path, {"bos_token": "<nope>"})
    with pytest.raises(ValueError, match="bos_token '<nope>' is not in the vocabulary"):
        HFTokenizer(d, _cfg(256))
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        f.write("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        HFTokenizer(d, _cfg(256))
    os.remove(os.path.join(d, "tokenizer_config.json"))
    with pytest.raises(ValueError, match="more than the model's vocab_size 100"):
        HFTokenizer(d, _cfg(100))
    with open(os.path.join(d, "tokenizer.json"), "w") as f:
        f.write("garbage")
    with pytest.raises(ValueError, match="cannot read"):
        HFTokenizer(d, _cfg(256))


def test_load_tokenizer_choice(tmp_path):
    assert isinstance(load_tokenizer(None, PRESETS["tiny"]), ByteTokenizer)
    assert isinstance(load_tokenizer(None, PRESETS["llama3-8b"]), ByteTokenizer)  # dummy weights
    # A checkpoint with the 259-id byte vocabulary and no tokenizer.json (the mistral fixture).
    assert isinstance(load_tokenizer(os.path.join(FIX, "mistral"), _cfg(259)), ByteTokenizer)
    # A real-vocabulary checkpoint without tokenizer.json, and a small vocab: ids only.
    for path, cfg in ((str(tmp_path), _cfg(32000, eos_token_id=2)),
                      (os.path.join(FIX, "qwen2"), _cfg(200, eos_token_id=(3, 4))),
                      (None, _cfg(100))):
        tok = load_tokenizer(path, cfg)
        assert isinstance(tok, TokenIdsOnly) and isinstance(tok, Tokenizer)
        with pytest.raises(ValueError, match="pass prompts as lists of token ids"):
            tok.encode("hello")
        assert tok.decode([5, 6]) == "5 6"
        assert tok.vocab_size == cfg.vocab_size and tok.eos_token_ids == cfg.eos_token_ids


def test_decode_continuation_keeps_the_space_after_the_prompt():
    # The fixture is SentencePiece-style (Metaspace): decoding the continuation alone drops
    # the space that separates it from the prompt.
    tok = HFTokenizer(LLAMA)
    prompt = tok.encode("Hello")
    whole = tok.encode("Hello world")
    assert whole[:len(prompt)] == prompt
    cont = whole[len(prompt):]
    assert tok.decode(cont) == "world"              # the defect decode_continuation avoids
    assert decode_continuation(tok, prompt, cont) == " world"
    assert decode_continuation(tok, [], cont) == "world"
    byte = ByteTokenizer()
    assert decode_continuation(byte, byte.encode("a"), byte.encode(" b")[1:]) == " b"


def test_chat_template_comes_from_the_checkpoint(tmp_path):
    from llmserve.tokenizer import DEFAULT_CHAT_TEMPLATE, chat_template_for
    msgs = [{"role": "user", "content": "hi"}]
    # tokenizer_config.json's template (a named list picks "default"), with the special tokens
    # as text and transformers' extras (tojson, loop controls) available.
    tpl = ("{{ bos_token }}{% for m in messages %}{% if loop.index > 5 %}{% break %}{% endif %}"
           "{{ m | tojson }}{% endfor %}{{ eos_token }}")
    d = _tok_dir(tmp_path, {"bos_token": "<s>", "eos_token": "</s>",
                            "chat_template": [{"name": "tool_use", "template": "x"},
                                              {"name": "default", "template": tpl}]})
    tok = HFTokenizer(d, _cfg(256))
    assert tok.chat_template == tpl
    assert chat_template_for(tok).render(msgs) == '<s>{"role": "user", "content": "hi"}</s>'
    # No template anywhere: the plain default (the dummy presets).
    byte = ByteTokenizer()
    assert chat_template_for(byte).source == DEFAULT_CHAT_TEMPLATE
    assert chat_template_for(byte).render(msgs) == "<|user|>\nhi\n<|assistant|>\n"
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"chat_template": 7}, f)
    with pytest.raises(ValueError, match="chat_template must be a string"):
        HFTokenizer(d, _cfg(256))
