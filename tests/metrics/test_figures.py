"""llmserve.metrics.figures: the stored CDF quantiles, interval calibration, figures from JSON."""
import json
import os
import types
from statistics import NormalDist

import numpy as np
import pytest

from llmserve.metrics import figures, report


def test_latency_quantiles_match_numpy_and_skip_non_finite():
    x = np.array([3.0, 1.0, np.nan, 2.0, np.inf, 4.0])
    lq = figures.latency_quantiles({"p": {"ttft": x, "tpot": np.array([]), "e2e": x * 2}})
    assert lq["q"][0] == 0.0 and lq["q"][-1] == 1.0 and len(lq["q"]) == 201
    ttft = lq["policies"]["p"]["ttft"]
    assert ttft[0] == 1.0 and ttft[-1] == 4.0 and ttft[100] == 2.5   # min, max, median
    np.testing.assert_allclose(ttft, np.quantile([1.0, 2.0, 3.0, 4.0], lq["q"]))
    assert lq["policies"]["p"]["tpot"] is None
    lat, levels = figures.quantile_arrays(json.loads(json.dumps(lq)))
    assert lat["p"]["tpot"].size == 0 and lat["p"]["e2e"][-1] == 8.0
    # Drawn at their levels: from the minimum at 0 to the maximum at 1.
    xs, ys = report.cdf_points(lat["p"]["ttft"], levels)
    assert xs[0] == 1.0 and ys[0] == 0.0 and xs[-1] == 4.0 and ys[-1] == 1.0
    assert np.all(np.diff(xs) >= 0) and np.allclose(ys, lq["q"])


def test_cdf_points_of_raw_samples():
    x, y = report.cdf_points([3.0, np.nan, 1.0, 2.0])
    assert x.tolist() == [1.0, 2.0, 3.0] and np.allclose(y, [1 / 3, 2 / 3, 1.0])


def test_interval_coverage_hand_computed():
    # log-space errors of 0, 0.5, 1, 2 std: inside the 50% interval (z=0.674) only the first
    # two... no: 0.5 < 0.674, so 2 of 4; inside 80% (z=1.28): 3 of 4; inside 99% (2.58): all.
    mu, sd = np.zeros(4), np.ones(4)
    y = np.expm1(np.array([0.0, 0.5, -1.0, 2.0]))
    cov = figures.interval_coverage(mu, sd, y, [0.5, 0.8, 0.99])
    assert NormalDist().inv_cdf(0.75) > 0.5
    np.testing.assert_allclose(cov, [0.5, 0.75, 1.0])


def test_predictor_figures_write_pngs(tmp_path):
    pred = types.SimpleNamespace(median=np.array([10.0, 100.0]), lower=np.array([5.0, 50.0]),
                                 upper=np.array([20.0, 200.0]),
                                 log_mean=np.log1p([10.0, 100.0]), log_std=np.array([0.5, 0.5]))
    ds = types.SimpleNamespace(prompts=[[1], [2]],
                               per_sample=lambda: (np.array([0, 0, 1]), np.array([9, 30, 101])))
    predictor = types.SimpleNamespace(predict=lambda prompts: pred)
    out = figures.predictor_figures(predictor, ds, str(tmp_path), levels=(0.5, 0.9))
    assert os.path.getsize(out["predicted_vs_true"]) > 0 and os.path.getsize(out["calibration"])
    assert set(out["coverage"]) == {0.5, 0.9}


def _results():
    m = {"output_throughput_tok_s": 10.0, "ttft_p99_s": 0.1, "tpot_p99_s": 0.01,
         "busy_fraction": 1.0, "goodput_rps": 1.0}
    lat = {"static": {k: np.linspace(0.01, 1, 50) for k in figures.LATENCY_KEYS}}
    return {"config": {"slo": {"ttft_s": 2.0, "tpot_s": 0.1}, "model": {"preset": "tiny"}},
            "runner": "sim", "hardware": "h100-80gb", "policies": {"static": m},
            "rate_sweep": {"static": [dict(m, rate_rps=r) for r in (1, 2)]},
            "latency_quantiles": figures.latency_quantiles(lat)}


def test_doc_figures_from_json(tmp_path):
    res = tmp_path / "results"
    report.write_json(str(res / "demo.json"), _results())
    out = figures.make_doc_figures(str(res), str(tmp_path / "fig"))
    assert out["demo_latency_cdf.png"].endswith("demo_latency_cdf.png")
    assert out["demo_policies.png"].endswith("demo_policies.png")
    assert "missing" in out["sim_h100_rate_sweep.png"]
    for png in ("demo_latency_cdf.png", "demo_policies.png"):
        assert (tmp_path / "fig" / png).stat().st_size > 0
    with pytest.raises(ValueError, match="figure kind"):
        figures.draw(_results(), "nope", str(tmp_path / "x.png"))
    assert figures.draw({"config": {}}, "rate_sweep", str(tmp_path / "x.png")) is None


def test_every_doc_figure_has_its_json_and_a_recipe():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    fig_dir = os.path.join(root, "docs", "figures")
    pngs = {os.path.relpath(os.path.join(d, f), fig_dir) for d, _, fs in os.walk(fig_dir)
            for f in fs if f.endswith(".png")}
    assert pngs <= set(figures.DOC_FIGURES), (
        f"docs/figures has PNGs no recipe draws: {sorted(pngs - set(figures.DOC_FIGURES))}; "
        "add each to DOC_FIGURES in llmserve/metrics/figures.py with its JSON, copied by "
        "`python scripts/make_figures.py --collect=NAME=WORKDIR`")
    for png, (src, kind) in figures.DOC_FIGURES.items():
        assert kind in figures.BENCHMARK_FIGURES or kind.split(":")[0] in ("cluster",
                                                                         "edge_cloud"), png
        assert os.path.exists(os.path.join(root, "docs", "results", src)), (png, src)


def test_cluster_figures_from_json(tmp_path):
    series = {"round_robin/centralized": {"ttft": [0.1, 0.2], "tpot": [0.01, 0.02],
                                          "e2e": [1.0, 2.0], "t": [0.0, 0.5],
                                          "outstanding_first": [[1.0, 2.0], [3.0, 1.0]],
                                          "outstanding_min": [1.0, 1.0],
                                          "outstanding_median": [2.0, 1.5],
                                          "outstanding_max": [3.0, 2.0]}}
    res = json.loads(json.dumps({"num_replicas": 2, "series": series}))
    for what in ("cluster:replica_load", "cluster:latency_cdfs_centralized"):
        p = figures.draw(res, what, str(tmp_path / f"{what.split(':')[1]}.png"))
        assert p and os.path.getsize(p) > 0
    assert figures.draw(res, "cluster:latency_cdfs_distributed", str(tmp_path / "x.png")) is None


def test_slim_cluster_results_keeps_the_figures_data():
    rng = np.random.default_rng(0)
    ttft = rng.exponential(0.1, 5000)
    t = np.arange(4000) * 0.5
    load = rng.integers(0, 100, (3, 4000)).astype(float)
    res = {"num_replicas": 3, "series": {"p/centralized": {
        "ttft": ttft.tolist(), "tpot": [], "e2e": (ttft * 10).tolist(), "t": t.tolist(),
        "outstanding_first": load.tolist(), "outstanding_min": load.min(0).tolist(),
        "outstanding_median": np.median(load, 0).tolist(),
        "outstanding_max": load.max(0).tolist()}}}
    slim = figures.slim_cluster_results(res)
    s = slim["series"]["p/centralized"]
    np.testing.assert_allclose(s["ttft"], np.quantile(ttft, figures.QUANTILES))
    assert slim["slimmed"]["latency_q"] == figures.QUANTILES.tolist()
    assert s["tpot"] == []
    assert len(s["t"]) <= figures.MAX_LOAD_SAMPLES and s["t"][:2] == [0.0, 1.5]   # stride 3
    assert s["outstanding_max"] == load.max(0)[::3].tolist()
    assert len(s["outstanding_first"]) == 3 and len(s["outstanding_first"][0]) == len(s["t"])
    assert len(json.dumps(slim)) < len(json.dumps(res)) / 5
