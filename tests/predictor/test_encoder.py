"""The Flax BERT sentence encoder against Hugging Face transformers' golden outputs on a random
tiny BERT (tests/fixtures/bert_tiny, written by tests/fixtures/make_bert_fixture.py), its
error paths, and its embedding cache."""
import json
import os
import shutil

import numpy as np
import pytest

from llmserve.predictor import encoder as enc_lib

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "bert_tiny")


@pytest.fixture(scope="module")
def golden():
    with open(os.path.join(FIXTURE, "golden.json"), encoding="utf-8") as f:
        g = json.load(f)
    with np.load(os.path.join(FIXTURE, "golden.npz")) as z:
        arrays = dict(z)
    return g, arrays


@pytest.fixture(scope="module")
def encoder(golden):
    return enc_lib.SentenceEncoder.load(FIXTURE, max_tokens=golden[0]["max_length"])


def test_token_ids_equal_transformers(golden):
    g, _ = golden
    tok = enc_lib.BertTokenizer.from_dir(FIXTURE)
    with open(os.path.join(FIXTURE, "vocab.txt"), encoding="utf-8") as f:
        cased = enc_lib.BertTokenizer([t.rstrip("\n") for t in f], do_lower_case=False)
    for case in g["texts"]:
        assert tok.encode(case["text"], g["max_length"]) == case["ids"], case["text"]
        assert case["ids"] == case["ids_slow"]  # the fast and slow references agree
        assert cased.encode(case["text"], g["max_length"]) == case["ids_cased"], case["text"]
    # the fixture covers what it claims: truncation, [UNK] (over-long and unknown words)
    assert any(len(c["ids"]) == g["max_length"] for c in g["texts"])
    assert all(tok.unk_id in g["texts"][i]["ids"] for i in (3, 5))


def test_hidden_states_and_pooling_equal_transformers(golden, encoder):
    g, arrays = golden
    ids = [c["ids"] for c in g["texts"]]
    width = max(len(x) for x in ids) + 5  # more padding than the reference batch had
    a = np.zeros((len(ids), width), np.int32)
    m = np.zeros((len(ids), width), np.int32)
    for i, x in enumerate(ids):
        a[i, :len(x)], m[i, :len(x)] = x, 1
    h = np.asarray(encoder.hidden_states(a, m))
    for i, x in enumerate(ids):
        ref = arrays[f"hidden_{i}"]
        assert np.abs(ref).max() > 0.5  # not a degenerate all-zero reference
        np.testing.assert_allclose(h[i, :len(x)], ref, rtol=1e-5, atol=1e-5)
    # embed: its own tokenization, bucketed padding and batching; modules.json has Normalize
    emb = encoder.embed([c["text"] for c in g["texts"]])
    assert encoder.normalize
    for i in range(len(ids)):
        p = arrays[f"pooled_{i}"]
        np.testing.assert_allclose(emb[i], p / np.linalg.norm(p), rtol=1e-5, atol=1e-5)
    one = encoder.embed([g["texts"][1]["text"]])  # batch composition does not matter
    np.testing.assert_allclose(one[0], emb[1], rtol=1e-5, atol=1e-6)


def _copy(tmp_path):
    d = tmp_path / "enc"
    shutil.copytree(FIXTURE, d)
    return d


def _edit_json(path, **changes):
    with open(path) as f:
        cfg = json.load(f)
    cfg.update(changes)
    with open(path, "w") as f:
        json.dump(cfg, f)


def test_errors_name_the_file_or_field(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        enc_lib.SentenceEncoder(str(tmp_path / "nowhere"))
    for name in ("vocab.txt", "model.safetensors", "config.json"):
        d = _copy(tmp_path)
        os.remove(d / name)
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            enc_lib.SentenceEncoder(str(d))
        shutil.rmtree(d)
    cases = [("config.json", {"position_embedding_type": "relative_key"},
              "position_embedding_type"),
             ("config.json", {"model_type": "roberta"}, "model_type"),
             ("config.json", {"hidden_act": "swish"}, "hidden_act"),
             ("config.json", {"num_attention_heads": 5}, "num_attention_heads"),
             ("config.json", {"hidden_size": None}, "hidden_size"),
             ("tokenizer_config.json", {"tokenizer_class": "XLMRobertaTokenizer"},
              "tokenizer_class"),
             (os.path.join("1_Pooling", "config.json"),
              {"pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True},
              "pooling_mode_cls_token")]
    for name, change, field in cases:
        d = _copy(tmp_path)
        _edit_json(d / name, **change)
        with pytest.raises(ValueError, match=field):
            enc_lib.SentenceEncoder(str(d))
        shutil.rmtree(d)
    d = _copy(tmp_path)  # a truncated weights file
    with open(d / "model.safetensors", "r+b") as f:
        f.truncate(os.path.getsize(d / "model.safetensors") - 100)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        enc_lib.SentenceEncoder(str(d))
    with pytest.raises(ValueError, match="encoder_max_tokens"):
        enc_lib.SentenceEncoder(FIXTURE, max_tokens=2)


def test_max_tokens_is_capped_by_the_model():
    # config.json: max_position_embeddings 40
    assert enc_lib.SentenceEncoder(FIXTURE, max_tokens=512).max_tokens == 40


def test_embedding_cache_persists_and_is_keyed_by_text(tmp_path, encoder):
    texts = ["hello world", "the lazy dog", "hello world"]
    ref = encoder.embed(texts)
    c1 = enc_lib.EmbeddingCache(encoder, str(tmp_path))
    np.testing.assert_allclose(c1.embed(texts), ref, rtol=1e-6, atol=1e-7)

    class NoCompute:  # a second process: every embedding must come from the file
        fingerprint, max_tokens, dim = encoder.fingerprint, encoder.max_tokens, encoder.dim

        def embed(self, texts):
            raise AssertionError(f"recomputed {texts}")
    c2 = enc_lib.EmbeddingCache(NoCompute(), str(tmp_path))
    np.testing.assert_array_equal(c2.embed(texts[::-1]), c1.embed(texts[::-1]))
    with pytest.raises(AssertionError, match="recomputed"):
        c2.embed(["a new prompt"])
