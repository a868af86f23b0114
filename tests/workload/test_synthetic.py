"""Synthetic generators against their distributions' closed-form moments."""
import os

import numpy as np
import pytest

from llmserve.workload import summarize, synthetic

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data")


def test_seeded_and_reproducible():
    a = synthetic.synthetic_workload(50, 2.0, seed=7)
    b = synthetic.synthetic_workload(50, 2.0, seed=7)
    c = synthetic.synthetic_workload(50, 2.0, seed=8)
    assert a == b and a != c


def test_poisson_rate_and_gamma_cv():
    rng = np.random.default_rng(0)
    t = synthetic.poisson_arrivals(200_000, 4.0, rng)
    gaps = np.diff(t)
    assert t[0] == 0 and (gaps >= 0).all()
    assert gaps.mean() == pytest.approx(0.25, rel=0.01)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.02)
    g = np.diff(synthetic.gamma_arrivals(200_000, 4.0, 3.0, rng))
    assert g.mean() == pytest.approx(0.25, rel=0.03)
    assert g.std() / g.mean() == pytest.approx(3.0, rel=0.05)


def test_high_variance_mix():
    rng = np.random.default_rng(1)
    p, o = synthetic.sample_lengths("high_variance", 50_000, rng, prompt_len=(10, 20),
                                    short_output=(2, 8), long_output=(100, 400), short_frac=0.6)
    assert p.min() >= 10 and p.max() <= 20
    short = o <= 8
    assert short.mean() == pytest.approx(0.6, abs=0.01)
    assert o[~short].min() >= 100 and o[~short].max() <= 400
    # log-uniform: the long outputs' log is uniform on [log 100, log 400]
    assert np.log(o[~short]).mean() == pytest.approx(np.log(200), abs=0.01)


def test_azure_lognormal_moments():
    rng = np.random.default_rng(2)
    p, o = synthetic.sample_lengths("azure_lognormal", 100_000, rng)
    assert np.log(o).mean() == pytest.approx(synthetic.AZURE_CONV_LOG_OUTPUT[0], abs=0.02)
    assert np.log(p).std() == pytest.approx(synthetic.AZURE_CONV_LOG_PROMPT[1], abs=0.02)
    assert o.max() <= 1000 and o.min() >= 7


@pytest.mark.skipif(not os.path.isfile(os.path.join(DATA, "azure_conv_2023.csv")),
                    reason="shared data not present")
def test_azure_constants_match_the_trace():
    from llmserve.workload.loaders import load_azure_csv
    reqs = load_azure_csv(os.path.join(DATA, "azure_conv_2023.csv"))
    lp = np.log([r.prompt_len for r in reqs])
    lo = np.log([r.output_len for r in reqs])
    assert (lp.mean(), lp.std()) == pytest.approx(synthetic.AZURE_CONV_LOG_PROMPT, abs=1e-3)
    assert (lo.mean(), lo.std()) == pytest.approx(synthetic.AZURE_CONV_LOG_OUTPUT, abs=1e-3)


def test_shared_prefixes():
    reqs = synthetic.synthetic_workload(40, 1.0, lengths="fixed", fixed_prompt_len=5,
                                        num_prefixes=3, prefix_len=8, vocab_size=50, seed=3)
    heads = {tuple(r.prompt_token_ids[:8]) for r in reqs}
    assert len(heads) == 3
    assert all(r.prompt_len == 13 == len(r.prompt_token_ids) for r in reqs)
    assert all(0 <= t < 50 for r in reqs for t in r.prompt_token_ids)


def test_max_model_len_and_summary():
    reqs = synthetic.synthetic_workload(200, 5.0, lengths="fixed", fixed_prompt_len=90,
                                        fixed_output_len=50, max_model_len=100)
    assert all(r.prompt_len + r.output_len <= 100 for r in reqs)
    s = summarize(reqs)
    assert s["num_requests"] == 200 and s["output_len_cv"] == 0.0
    assert s["rate_rps"] == pytest.approx(5.0, rel=0.2)


@pytest.mark.parametrize("kw,field", [({"rate": 0}, "rate"), ({"arrival": "x"}, "arrival"),
                                      ({"lengths": "x"}, "lengths"),
                                      ({"arrival": "gamma", "burstiness_cv": 0}, "burstiness_cv")])
def test_bad_parameters(kw, field):
    args = {"num_requests": 5, "rate": 1.0} | kw
    with pytest.raises(ValueError, match=field):
        synthetic.synthetic_workload(**args)
