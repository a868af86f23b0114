"""Length predictor: features, the vmapped ensemble, training, checkpoints, metrics."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from llmserve.predictor import data, evaluate, features, metrics, train
from llmserve.predictor import model as model_lib
from llmserve.predictor.serve import LengthPredictor, load_checkpoint, rescale_checkpoint

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "predictor.py")


def small_config(tmp_path, n=600):
    from llmserve.config import load_config
    c = load_config(CONFIG)
    c.data.synthetic = True  # never the shared data: the synthetic trace log
    c.data.aux_sources = ()
    c.data.synthetic_log = str(tmp_path / "synthetic.jsonl")
    c.data.synthetic_num_requests = n
    c.features.table_size = 2**12
    c.model.embed_dim = 8
    c.model.hidden_dim = 32
    c.train.ensemble_size = 3
    c.train.num_epochs = 40
    c.train.patience = 8
    c.train.learning_rate = 3e-3
    return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pred")
    c = small_config(tmp)
    # every training option of the default config on: an auxiliary dataset (a second
    # synthetic log: other prompts), n-gram dropout, the wide term, out-of-bag calibration
    from llmserve.workload.trace_log import write_trace_log
    tok = data.tokenizer_for(c.tokenizer)
    write_trace_log(str(tmp / "aux.jsonl"), data.synthetic_records(300, tok, seed=7))
    c.data.aux_sources = (f"trace_log:{tmp / 'aux.jsonl'}",)
    c.model.bag_dropout = 0.3
    c.model.wide = True
    c.calibrate_out_of_bag = True
    m = train.train_and_evaluate(c, str(tmp / "work"))
    return c, m, str(tmp / "work")


def test_hashing_is_deterministic_and_bounded():
    spec = features.FeatureSpec(table_size=97, ngram_orders=(1, 2))
    ids, w = features.hashed_ngrams([5, 6, 5, 6], spec)
    # n-grams: 5, 6, 5, 6 | 56, 65, 56  -> 4 distinct (barring collisions in 97 buckets)
    assert len(ids) <= 4 and np.all((ids >= 0) & (ids < 97))
    assert np.isclose(w.sum(), 1.0)
    ids2, w2 = features.hashed_ngrams([5, 6, 5, 6], spec)
    assert np.array_equal(ids, ids2) and np.array_equal(w, w2)
    # the unigram 5 is 2 of 7 n-grams
    one, _ = features.hashed_ngrams([5], features.FeatureSpec(table_size=97, ngram_orders=(1,)))
    assert np.isclose(w[ids == one[0]].sum(), 2 / 7)
    b = features.featurize([[1, 2, 3], [4]], spec)
    assert b.size == 2 and len(b.ids) >= 256 and b.weights[len(b.ids) - 1] == 0
    with pytest.raises(ValueError, match="ngram_orders"):
        features.FeatureSpec(ngram_orders=(0,))


@pytest.mark.parametrize("weighting", ["share", "log_l2"])
def test_batched_hashing_equals_per_prompt_hashing(weighting):
    # Oracle: the per-prompt hashed_ngrams; truncation and prompts shorter than an order
    # included (an n-gram must never straddle two prompts).
    spec = features.FeatureSpec(table_size=1 << 20, ngram_orders=(1, 3, 5),
                                max_prompt_tokens=9, weighting=weighting)
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(0, 259, n)) for n in (0, 1, 4, 9, 30, 2, 17)]
    ids, w, seg = features.hashed_ngrams_batch(prompts, spec)
    for i, p in enumerate(prompts):
        ref_ids, ref_w = features.hashed_ngrams(p, spec)
        np.testing.assert_array_equal(ids[seg == i], ref_ids)
        np.testing.assert_allclose(w[seg == i], ref_w, rtol=1e-6)
    # 1 + log count, L2-normalised: [7, 7, 7, 8] unigrams -> (1 + log 3, 1) / norm
    one = features.FeatureSpec(table_size=97, ngram_orders=(1,), weighting="log_l2")
    _, wt = features.hashed_ngrams([7, 7, 7, 8], one)
    want = np.array([1 + np.log(3), 1.0]) / np.hypot(1 + np.log(3), 1.0)
    np.testing.assert_allclose(sorted(wt), sorted(want), rtol=1e-6)
    with pytest.raises(ValueError, match="weighting"):
        features.FeatureSpec(weighting="tfidf")


def _oracle_words(text: str, spec) -> dict:
    """Word n-gram buckets -> weight, by regex and Python ints (the spec's hash, scalar)."""
    import re
    m64 = (1 << 64) - 1
    mix, mults = int(features._MIX), features._POS_MULT
    words = []
    for w in re.findall(rb"[A-Za-z0-9\x80-\xff]+", text.encode()):
        h = sum((b + 1) * pow(0x100000001B3, i, 1 << 64) for i, b in enumerate(w.lower())) & m64
        h = ((h ^ 0xA5A5A5A5) * mix) & m64
        words.append(h ^ (h >> 29))
    counts = {}
    for n in spec.word_orders:
        for k in range(len(words) - n + 1):
            h = (n * mults[-1] + spec.hash_seed + 7) & m64
            for j in range(n):
                h = ((h ^ ((words[k + j] + mix) & m64)) * mults[j]) & m64
                h ^= h >> 31
            b = h % spec.table_size
            counts[b] = counts.get(b, 0) + 1
    total = sum(counts.values())
    return {b: c / total * spec.word_weight for b, c in counts.items()}


def test_word_ngrams_against_a_regex_oracle():
    tok = data.tokenizer_for("tiny")
    spec = features.FeatureSpec(table_size=1 << 20, ngram_orders=(3,), word_orders=(1, 2),
                                word_weight=0.5, max_prompt_tokens=4096)
    plain = features.FeatureSpec(table_size=1 << 20, ngram_orders=(3,), max_prompt_tokens=4096)
    texts = ["Write a SHORT poem, please: write!", "", "x", "École d'été -- 42 ways",
             "one\ntwo  three", "?!"]
    prompts = [tok.encode(t) for t in texts]
    ids, w, seg = features.hashed_ngrams_batch(prompts, spec)
    assert np.all(np.diff(seg) >= 0)  # grouped by prompt, as the sorted segment sum needs
    for i, (t, p) in enumerate(zip(texts, prompts)):
        want = _oracle_words(t, spec)
        for b, x in zip(*features.hashed_ngrams(p, plain)):
            want[int(b)] = want.get(int(b), 0.0) + float(x)
        for got_ids, got_w in ((ids[seg == i], w[seg == i]), features.hashed_ngrams(p, spec)):
            got = {}
            for b, x in zip(got_ids, got_w):
                got[int(b)] = got.get(int(b), 0.0) + float(x)
            assert got.keys() == want.keys(), t
            np.testing.assert_allclose([got[k] for k in want], list(want.values()), rtol=1e-5)
    # case folds: "Write" and "write" are one word
    assert _oracle_words("Write write", spec) == _oracle_words("write write", spec)
    with pytest.raises(ValueError, match="word_orders"):
        features.FeatureSpec(word_orders=(9,))


@pytest.mark.parametrize("wide", [False, True])
def test_serving_forward_equals_each_member(wide):
    # Oracle: each member's own flax apply, one at a time.
    spec = model_lib.ModelSpec(table_size=64, embed_dim=4, hidden_dim=8, dropout=0.0,
                               wide=wide, num_tasks=2)
    params = model_lib.ensemble_init(spec, jax.random.PRNGKey(5), 3)
    params = jax.tree_util.tree_map(  # non-trivial LayerNorm params
        lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(1), x.shape), params)
    fspec = features.FeatureSpec(table_size=64)
    batch = features.featurize([[1, 2, 3, 4], [7, 7], [], [9, 1, 2]], fspec, rows=8)
    mu, sigma, probs = model_lib.serving_apply(model_lib.serving_params(params), batch)
    assert mu.shape == (3, 8) and probs.shape == (3, 8, 3)
    for k in range(3):
        member = jax.tree_util.tree_map(lambda x, k=k: x[k], params)
        m1, s1, l1 = model_lib.member_apply(spec, member, batch)
        np.testing.assert_allclose(mu[k], m1, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(sigma[k], s1, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(probs[k], jax.nn.softmax(l1, -1), rtol=1e-5, atol=1e-6)


def test_vmapped_ensemble_equals_members_run_one_by_one():
    spec = model_lib.ModelSpec(table_size=64, embed_dim=4, hidden_dim=8, dropout=0.0)
    params = model_lib.ensemble_init(spec, jax.random.PRNGKey(3), 4)
    batch = features.featurize([[1, 2, 3, 4], [7, 7], [9, 1, 2]],
                               features.FeatureSpec(table_size=64))
    mu, sigma, logits = model_lib.ensemble_apply(spec, params, batch)
    assert mu.shape == (4, 3) and logits.shape == (4, 3, 3)
    for k in range(4):
        member = jax.tree_util.tree_map(lambda x, k=k: x[k], params)
        m1, s1, l1 = model_lib.member_apply(spec, member, batch)
        np.testing.assert_allclose(mu[k], m1, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(sigma[k], s1, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(logits[k], l1, rtol=1e-5, atol=1e-6)
    # members differ (own initialisation)
    assert not np.allclose(mu[0], mu[1])


def test_loss_scores_each_prompt_by_its_task_head():
    # Oracle: the Gaussian NLL and cross-entropy written out in numpy for 1 member,
    # 2 prompts (task 0 and task 1), 2 samples each (the second prompt's 2nd masked).
    mu = np.array([[[0.5, 9.0], [9.0, -1.0]]], np.float32)      # [K=1, B=2, T=2]
    sigma = np.array([[[2.0, 9.0], [9.0, 0.5]]], np.float32)
    logits = np.array([[[0.0, 1.0, 2.0], [5.0, 5.0, 5.0]]], np.float32)
    y = np.array([[1.0, 0.0], [-1.5, 7.0]], np.float32)
    mask = np.array([[1, 1], [1, 0]], np.float32)
    bucket = np.array([[2, 0], [1, 1]], np.int32)
    task = np.array([0, 1], np.int32)
    total, nll = train._per_prompt_loss(mu, sigma, logits, y, mask, bucket, 0.5, task=task)
    g = lambda y, m, s: 0.5 * ((y - m) / s) ** 2 + np.log(s)
    nll0 = (g(1.0, 0.5, 2.0) + g(0.0, 0.5, 2.0)) / 2
    nll1 = g(-1.5, -1.0, 0.5)
    logp = logits[0, 0] - np.log(np.exp(logits[0, 0]).sum())
    ce0 = -(logp[2] + logp[0]) / 2
    np.testing.assert_allclose(nll[0], [nll0, nll1], rtol=1e-5)
    # the bucket head learns only the served task (task 0)
    np.testing.assert_allclose(total[0], [nll0 + 0.5 * ce0, nll1], rtol=1e-5)
    # beta-NLL: same value weighted by sigma^(2 beta)
    tb, _ = train._per_prompt_loss(mu, sigma, logits, y, mask, bucket, 0.0, 1.0, task)
    np.testing.assert_allclose(tb[0], [4 * nll0, 0.25 * nll1], rtol=1e-5)


def test_aux_data_never_holds_a_held_out_prompt(tmp_path):
    tok = data.tokenizer_for("tiny")
    recs = [{"instruction": "Name three  RIVERS in Europe.", "input": "", "output": "a"},
            {"instruction": "Write a poem about owls", "input": "", "output": "bb"},
            {"instruction": "Sum", "input": "2+2", "output": "4"}]
    (tmp_path / "a.json").write_text(json.dumps(recs))
    held = data.LengthDataset([[1], tok.encode("Sum\nContext: 2+2")],
                              [np.array([5.0]), np.array([6.0])],
                              ["Please: name three rivers in europe.", None], ["x", "y"])
    c = small_config(tmp_path)
    c.data.aux_sources = (f"instruct:{tmp_path / 'a.json'}",)
    aux, desc = train.build_aux_datasets(c, tok, [held])
    assert len(aux) == 1 and "2 dropped" in desc[0]   # by text, and by token ids alone
    assert aux[0].texts == ["Write a poem about owls"]
    # a missing source is an error, never skipped
    c.data.aux_sources = (f"instruct:{tmp_path / 'a.json'}", "instruct:/nonexistent/*.json")
    with pytest.raises(ValueError, match="no file matches"):
        train.build_aux_datasets(c, tok, [held])


def test_missing_dataset_is_an_error_naming_the_fetch_command_not_synthetic_data(
        tmp_path, monkeypatch):
    monkeypatch.setenv("LLMSERVE_DATA", str(tmp_path / "empty"))
    tok = data.tokenizer_for("tiny")
    c = small_config(tmp_path)
    c.data.synthetic = False
    c.data.sources = ("castillo_llama31_8b_alpaca_validate",)
    with pytest.raises(ValueError, match="'castillo_llama31_8b_alpaca_validate'.*python scripts/"
                       "fetch_data.py --config=configs/data.py --config.names="
                       "castillo_llama31_8b_alpaca_validate"):
        train.build_datasets(c, tok)
    c.data.sources = ()
    with pytest.raises(ValueError, match="data.synthetic=True"):
        train.build_datasets(c, tok)
    with pytest.raises(ValueError, match="azure_csv data, with no prompt text"):
        data.load_sources(["azure_conv_2023"], tok)


def test_kendall_tau_against_hand_count():
    # pairs of (1,2,3,4) vs (1,3,2,4): 6 pairs, 1 discordant -> (5 - 1) / 6
    assert np.isclose(metrics.kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]), 4 / 6)
    assert np.isclose(metrics.kendall_tau([1, 2, 3], [3, 2, 1]), -1.0)
    assert list(metrics.bucket_of([0, 49, 50, 499, 500])) == [0, 0, 1, 1, 2]


def test_split_is_by_prompt_and_deterministic():
    ds = data.LengthDataset([[i, i + 1] for i in range(200)],
                            [np.array([5.0, 6.0]) for _ in range(200)], [None] * 200,
                            ["x"] * 200)
    a = data.split_by_prompt(ds, (0.7, 0.1, 0.2))
    b = data.split_by_prompt(ds, (0.7, 0.1, 0.2))
    keys = [{tuple(p) for p in s.prompts} for s in a]
    assert keys == [{tuple(p) for p in s.prompts} for s in b]
    assert sum(len(k) for k in keys) == 200 and not (keys[0] & keys[1] or keys[0] & keys[2])
    assert 100 < len(keys[0]) < 180


def test_training_beats_the_constant_and_the_checkpoint_round_trips(trained, tmp_path):
    c, m, work = trained
    test = m["test"]
    # Oracle: on the synthetic data the task template sets the length, so a predictor that
    # reads the prompt must beat the training median by a wide margin.
    tok = data.tokenizer_for(c.tokenizer)
    tr, _, te, _ = train.build_datasets(c, tok)
    base = evaluate.baseline_rows(tr, te)["constant"]
    assert test["mae"] < 0.5 * base["mae"], (test, base)
    assert test["bucket_acc"] > base["bucket_acc"] + 0.2
    assert test["kendall_tau"] > 0.7
    assert 0.6 < test["coverage80"] < 0.95
    with open(os.path.join(work, "metrics.json")) as f:
        assert json.load(f)["test"]["mae"] == pytest.approx(test["mae"])

    p = LengthPredictor.load(work)
    texts = te.texts[:7]
    out = p.predict(texts)
    assert out.mean.shape == (7,) and out.bucket_probs.shape == (7, 3)
    assert np.all(out.lower <= out.median) and np.all(out.median <= out.upper)
    np.testing.assert_allclose(out.bucket_probs.sum(-1), 1.0, rtol=1e-5)
    # text and its token ids give the same prediction; batch composition does not matter
    by_ids = p.predict([tok.encode(t) for t in texts])
    np.testing.assert_allclose(out.mean, by_ids.mean, rtol=1e-6)
    single = p.predict(texts[3])
    np.testing.assert_allclose(single.mean, out.mean[3:4], rtol=1e-5)
    # copy, reload: identical predictions
    copy = tmp_path / "copy"
    shutil.copytree(os.path.join(work, "checkpoint"), copy)
    np.testing.assert_array_equal(LengthPredictor.load(str(copy)).predict(texts).mean, out.mean)
    # the scheduler's adapter drives it from core
    from llmserve.core.predictors import create_predictor
    from llmserve.core.request import Request
    from llmserve.sampling_params import SamplingParams
    reqs = [Request(str(i), tok.encode(t), SamplingParams(max_tokens=4000), 0.0)
            for i, t in enumerate(texts)]
    means, spreads = create_predictor(f"checkpoint:{copy}").predict(reqs)
    np.testing.assert_allclose(means, out.mean, rtol=1e-5)
    assert all(s > 0 for s in spreads)


def test_checkpoint_errors(trained, tmp_path):
    _, _, work = trained
    src = os.path.join(work, "checkpoint")
    with pytest.raises(ValueError, match="does not exist"):
        LengthPredictor.load(str(tmp_path / "missing"))
    partial = tmp_path / "partial"
    shutil.copytree(src, partial)
    shutil.rmtree(partial / "params")
    with pytest.raises(ValueError, match=r"partial: missing \['params'\]"):
        LengthPredictor.load(str(partial))
    with pytest.raises(ValueError, match="trained with the tokenizer"):
        LengthPredictor.load(src, expect_tokenizer="llama3-8b")
    params, meta = load_checkpoint(src)
    bad = dict(meta, model_spec=dict(meta["model_spec"], hidden_dim=7))
    train.save_checkpoint(str(tmp_path / "bad_shape"), params, bad)
    with pytest.raises(ValueError, match=r"incompatible: parameter .* has shape .* needs"):
        LengthPredictor.load(str(tmp_path / "bad_shape"))
    train.save_checkpoint(str(tmp_path / "bad_format"), params, dict(meta, format="other/9"))
    with pytest.raises(ValueError, match="incompatible: format 'other/9'"):
        LengthPredictor.load(str(tmp_path / "bad_format"))


def test_data_builders(tmp_path):
    tok = data.tokenizer_for("tiny")
    cast = [{"prompt_text": "hi", "output_sizes": [10, 15001, 20], "dataset": "Alpaca"},
            {"prompt_text": "yo", "output_sizes": [15001]}]
    (tmp_path / "c.json").write_text(json.dumps(cast))
    ds = data.from_castillo(str(tmp_path / "c.json"), tok)
    assert len(ds) == 1 and list(ds.lengths[0]) == [10, 20]  # cap runs dropped
    dolly = [{"instruction": "a", "context": "b", "response": "xyz", "category": "qa"}]
    (tmp_path / "d.json").write_text(json.dumps(dolly))
    d = data.from_instruct_json(str(tmp_path / "d.json"), tok)
    assert d.texts == ["a\nContext: b"] and list(d.lengths[0]) == [3]
    with pytest.raises(ValueError, match="record 0: field 'prompt_text'"):
        (tmp_path / "e.json").write_text(json.dumps([{"x": 1}]))
        data.from_castillo(str(tmp_path / "e.json"), tok)
    with pytest.raises(ValueError, match="KIND:PATH"):
        data.load_sources(["bogus:/x"], tok)


def test_scaled_heldout_workload_and_rescaled_checkpoint(trained, tmp_path):
    from llmserve.workload.trace_log import read_trace_log
    c, _, work = trained
    tok = data.tokenizer_for(c.tokenizer)
    _, _, te, _ = train.build_datasets(c, tok)
    path = str(tmp_path / "w.jsonl")
    pidx, y = te.per_sample()
    n = evaluate.write_heldout_workload(te, path, rate=5.0, seed=1, num_requests=9,
                                       output_scale=0.25)
    # written twice: the file is replaced, not appended to
    assert evaluate.write_heldout_workload(te, path, 5.0, 1, 0, 9, 0.25) == n == 9
    recs = read_trace_log(path)
    assert len(recs) == 9
    # every request is a held-out pair with its length scaled and rounded up (hand rule)
    pairs = {(tuple(te.prompts[i]), int(np.ceil(v / 4))) for i, v in zip(pidx, y)}
    assert all((tuple(r["prompt_token_ids"]), r["output_len"]) in pairs for r in recs)
    arr = [r["arrival_s"] for r in recs]
    assert arr[0] == 0 and np.all(np.diff(arr) >= 0)
    with pytest.raises(ValueError, match="workload_output_scale"):
        evaluate.write_heldout_workload(te, path, 5.0, output_scale=2.0)
    # the rescaled checkpoint serves lengths x scale; bucket probabilities unchanged
    scaled = LengthPredictor.load(rescale_checkpoint(work, str(tmp_path / "s"), 0.25))
    a, b = LengthPredictor.load(work).predict(te.texts[:5]), scaled.predict(te.texts[:5])
    for f in ("mean", "median", "lower", "upper"):
        np.testing.assert_allclose(getattr(b, f), getattr(a, f) * 0.25, rtol=1e-5)
    np.testing.assert_allclose(b.bucket_probs, a.bucket_probs, rtol=1e-6)


def test_cv_splits_test_every_prompt_exactly_once():
    ds = data.LengthDataset([[i, i + 1, i % 7] for i in range(300)],
                            [np.array([5.0]) for _ in range(300)], [None] * 300, ["x"] * 300)
    splits = evaluate.cv_splits(ds, 5, (0.7, 0.1, 0.2), seed=3)
    everything = {tuple(p) for p in ds.prompts}
    tested = []
    for tr, va, te in splits:
        k = [{tuple(p) for p in s.prompts} for s in (tr, va, te)]
        # oracle: set algebra - the three sides are disjoint and together hold every prompt
        assert not (k[0] & k[1] or k[0] & k[2] or k[1] & k[2])
        assert k[0] | k[1] | k[2] == everything
        assert 0.05 < len(k[1]) / (len(k[0]) + len(k[1])) < 0.25   # ~1/8 = 0.1/(0.7+0.1)
        tested += [tuple(p) for p in te.prompts]
    assert sorted(tested) == sorted(everything)   # each prompt in exactly one test fold
    with pytest.raises(ValueError, match="cv_folds"):
        evaluate.cv_splits(ds, 1)


def test_train_on_val_and_cross_validation(tmp_path):
    c = small_config(tmp_path, n=240)
    c.train.num_epochs = 30
    c.train.ensemble_size = 2
    c.data.train_on_val = True
    with pytest.raises(ValueError, match="train.keep"):   # epochs picked on trained-on data
        train.train_and_evaluate(c, str(tmp_path / "w"))
    c.train.keep = "last"
    cv = evaluate.cross_validate(c, 2)
    tok = data.tokenizer_for(c.tokenizer)
    ds, _ = train.load_served_data(c, tok)
    rows = cv["per_fold"]
    assert sum(r["num_test"] for r in rows) == len(ds)
    assert all(r["num_train"] + r["num_val"] + r["num_test"] == len(ds) for r in rows)
    for key in ("mae", "kendall_tau"):
        vals = [r[key] for r in rows]
        assert np.isclose(cv["summary"][key]["mean"], np.mean(vals))
        assert np.isclose(cv["summary"][key]["std"], np.std(vals, ddof=1))
    # the synthetic lengths are set by the prompt's template: trained on train + validation
    # for a fixed number of epochs, each fold still beats its training median by far
    assert all(r["mae"] < 0.75 * r["constant_mae"] and r["kendall_tau"] > 0.5 for r in rows)
    assert all(0.5 < r["coverage80"] < 0.98 for r in rows)   # calibrated out of bag alone
    assert "cross-validation" in evaluate.format_cv_table(cv)


def test_keep_last_runs_every_epoch_up_to_stop_epoch(tmp_path):
    c = small_config(tmp_path, n=80)
    c.train.ensemble_size = 2
    c.train.num_epochs = 6
    c.train.keep = "last"
    tok = data.tokenizer_for(c.tokenizer)
    tr, _, _, _ = train.build_datasets(c, tok)
    args = (train.feature_spec(c), train.model_spec(c), c.train)
    c.train.stop_epoch = 3   # no validation to stop on: exactly epochs 1..3 run
    _, info = train.train_ensemble(tr, None, *args)
    assert info["epochs_run"] == 3 and len(info["history"]) == 3 and info["best_val"] is None
    c.train.stop_epoch = 7
    with pytest.raises(ValueError, match="stop_epoch"):
        train.train_ensemble(tr, None, *args)


def test_rows_by_source_against_numpy_and_split_from(trained, tmp_path):
    c, _, work = trained
    p = LengthPredictor.load(work)
    tok = data.tokenizer_for(c.tokenizer)
    recs = data.synthetic_records(60, tok, seed=3)
    srcs = ["castillo/Alpaca", "castillo/ShareGPT", "castillo/Mbpp"]
    ds = data.LengthDataset([r["prompt_token_ids"] for r in recs],
                            [np.array([r["output_len"], r["output_len"] + 4.0]) for r in recs],
                            [r["prompt_text"] for r in recs], [srcs[i % 3] for i in range(60)])
    by = evaluate.rows_by_source(p, ds, ds)
    # oracle: |median - each sample| averaged with numpy over the rows of each part
    med = p.predict(ds.prompts, ds.texts).median
    for name, members in [(s, {s}) for s in srcs] + [("[castillo chat]", set(srcs[:2]))]:
        err = [abs(med[i] - y) for i, s in enumerate(ds.sources) if s in members
               for y in ds.lengths[i]]
        assert by[name]["mae"] == pytest.approx(np.mean(err), rel=1e-5), name
        assert by[name]["num_prompts"] == sum(s in members for s in ds.sources)
    assert "[castillo code]" not in by          # one code source: nothing to group
    # split_from: the checkpoint scored on another checkpoint's split (here its own, so the
    # figures must equal a plain evaluation's) and written to eval_on_<dir>.json
    plain = evaluate.run_evaluation(work, latency_batch_size=4, latency_repeats=1)
    other = evaluate.run_evaluation(work, latency_batch_size=4, latency_repeats=1,
                                    split_from=work)
    assert other["results_file"].endswith("eval_on_work.json")
    assert os.path.isfile(other["results_file"]) and plain["results_file"].endswith("eval.json")
    assert other["rows"]["ensemble"]["mae"] == plain["rows"]["ensemble"]["mae"]
    assert other["by_source"] == plain["by_source"]
