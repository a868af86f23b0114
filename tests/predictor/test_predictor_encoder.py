"""The length predictor with the optional sentence encoder (features.encoder): the serving
forward against each member's flax apply, train -> save -> load -> predict end to end on the
tiny BERT fixture, the checkpoint's encoder checks, and the unchanged n-gram-only format."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from llmserve.predictor import data, evaluate, features, train
from llmserve.predictor import model as model_lib
from llmserve.predictor.encoder import SentenceEncoder
from llmserve.predictor.serve import LengthPredictor, load_checkpoint

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "bert_tiny")
CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "predictor.py")


def test_serving_forward_with_embeddings_equals_each_member():
    # Oracle: each member's own flax apply (Member concatenates the projected embedding).
    spec = model_lib.ModelSpec(table_size=64, embed_dim=4, hidden_dim=8, dropout=0.0,
                               num_tasks=2, encoder_dim=6, encoder_proj=5)
    params = model_lib.ensemble_init(spec, jax.random.PRNGKey(5), 3)
    params = jax.tree_util.tree_map(
        lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(1), x.shape), params)
    assert params["enc_proj"]["kernel"].shape == (3, 6, 5)
    fspec = features.FeatureSpec(table_size=64)
    batch = features.featurize([[1, 2, 3, 4], [7, 7], [], [9, 1, 2]], fspec, rows=8)
    batch.enc = np.random.default_rng(0).normal(size=(8, 6)).astype(np.float32)
    mu, sigma, probs = model_lib.serving_apply(model_lib.serving_params(params), batch)
    for k in range(3):
        member = jax.tree_util.tree_map(lambda x, k=k: x[k], params)
        m1, s1, l1 = model_lib.member_apply(spec, member, batch)
        np.testing.assert_allclose(mu[k], m1, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(sigma[k], s1, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(probs[k], jax.nn.softmax(l1, -1), rtol=1e-5, atol=1e-6)
    # the embedding is an input: another embedding, another prediction
    batch2 = features.Batch(batch.ids, batch.segments, batch.weights, batch.dense,
                            batch.enc[::-1].copy())
    mu2, _, _ = model_lib.serving_apply(model_lib.serving_params(params), batch2)
    assert not np.allclose(mu, mu2)
    with pytest.raises(ValueError, match="6-wide sentence embeddings"):
        model_lib.member_apply(spec, jax.tree_util.tree_map(lambda x: x[0], params),
                               features.featurize([[1, 2]], fspec))


def test_ngram_only_spec_and_meta_keep_the_old_format():
    d = model_lib.ModelSpec().to_dict()
    assert not any(k.startswith("encoder") for k in d)
    assert model_lib.ModelSpec(**d) == model_lib.ModelSpec()  # an old meta still loads


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from llmserve.config import load_config
    tmp = tmp_path_factory.mktemp("pred_enc")
    enc_dir = tmp / "bert"
    shutil.copytree(FIXTURE, enc_dir)
    c = load_config(CONFIG)
    c.data.synthetic = True
    c.data.aux_sources = ()
    c.data.synthetic_log = str(tmp / "synthetic.jsonl")
    c.data.synthetic_num_requests = 300
    c.features.table_size = 2**10
    c.features.encoder = str(enc_dir)
    c.features.encoder_max_tokens = 16
    c.model.embed_dim = 4
    c.model.hidden_dim = 16
    c.model.encoder_proj = 8
    c.model.encoder_dropout = 0.1
    c.train.ensemble_size = 2
    c.train.num_epochs = 4
    m = train.train_and_evaluate(c, str(tmp / "work"))
    return c, m, str(tmp / "work"), str(enc_dir)


def test_train_save_load_predict_with_an_encoder(trained, tmp_path):
    c, m, work, enc_dir = trained
    assert np.isfinite(m["val"]["mae"]) and np.isfinite(m["test"]["mae"])
    params, meta = load_checkpoint(work)
    enc = SentenceEncoder(enc_dir, 16)
    assert meta["encoder"] == {"path": enc.path, "fingerprint": enc.fingerprint,
                               "max_tokens": 16, "dim": 24}
    assert meta["model_spec"]["encoder_dim"] == 24 and params["enc_proj"]["kernel"].shape == \
        (2, 24, 8)
    # training cached every embedding under the workdir (no encoder_cache_dir given)
    cached = os.listdir(os.path.join(work, "encoder_cache"))
    assert cached == [f"emb_{enc.fingerprint}_16.npz"]

    p = LengthPredictor.load(work)
    tok = data.tokenizer_for(c.tokenizer)
    _, _, te, _ = train.build_datasets(c, tok)
    texts = te.texts[:9]
    out = p.predict(texts)
    assert out.mean.shape == (9,) and np.all(out.lower <= out.upper)
    # ids decode to the same text, so they give the same prediction; batching does not matter
    np.testing.assert_allclose(p.predict([tok.encode(t) for t in texts]).mean, out.mean,
                               rtol=1e-5)
    np.testing.assert_allclose(p.predict(texts[4]).mean, out.mean[4:5], rtol=1e-5)
    # Oracle for the served forward: the members' flax apply on the encoder's own embedding
    batch = features.featurize([tok.encode(t) for t in texts], p.feature_spec)
    batch.enc = enc.embed(texts)
    mu, _, _ = model_lib.ensemble_apply(p.model_spec, params, batch)
    ref = np.expm1((np.asarray(mu) * meta["y_std"] + meta["y_mean"]).mean(0))
    np.testing.assert_allclose(out.median, ref, rtol=1e-4)
    # known texts of id prompts are what the encoder reads
    other = p.predict([tok.encode(t) for t in texts], texts=texts[::-1])
    assert not np.allclose(other.median, out.median)

    res = evaluate.run_evaluation(work, latency_batch_size=4, latency_repeats=2)
    assert res["rows"]["ensemble"]["mae"] == pytest.approx(m["test"]["mae"], rel=1e-5)
    assert res["latency"]["encoder_only"]["ms_per_request"] > 0


def test_checkpoint_checks_its_encoder(trained, tmp_path):
    _, _, work, enc_dir = trained
    moved = tmp_path / "moved"
    shutil.copytree(enc_dir, moved)
    ref = LengthPredictor.load(work).predict(["Name one owl."]).mean
    shutil.move(enc_dir, str(tmp_path / "gone"))
    try:
        with pytest.raises(ValueError, match="does not exist"):
            LengthPredictor.load(work)
        # a moved copy is accepted when named
        np.testing.assert_array_equal(
            LengthPredictor.load(work, encoder_path=str(moved)).predict(["Name one owl."]).mean,
            ref)
        with open(moved / "config.json") as f:
            cfg = json.load(f)
        cfg["layer_norm_eps"] = 1e-6
        with open(moved / "config.json", "w") as f:
            json.dump(cfg, f)
        with pytest.raises(ValueError, match="has changed since the predictor was trained"):
            LengthPredictor.load(work, encoder_path=str(moved))
    finally:
        shutil.move(str(tmp_path / "gone"), enc_dir)


def test_training_without_embeddings_for_an_encoder_model_is_refused():
    ds = data.LengthDataset([[1, 2, 3], [4, 5]], [np.array([3.0]), np.array([9.0])],
                            [None, None], ["x", "x"])
    spec = model_lib.ModelSpec(table_size=64, embed_dim=4, hidden_dim=8, encoder_dim=6)
    from ml_collections import ConfigDict
    from llmserve.config import load_config
    tc = ConfigDict(load_config(CONFIG).train)
    with pytest.raises(ValueError, match="pass train_enc and val_enc"):
        train.train_ensemble(ds, ds, features.FeatureSpec(table_size=64), spec, tc)
