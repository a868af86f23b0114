"""Bandits on stationary synthetic problems (known best arm), the capacity oracle against brute
force, and the energy model against hand computation."""
import itertools

import numpy as np
import pytest

from llmserve.cluster.bandit import Thompson, best_assignment, make_bandit
from llmserve.cluster.energy import EnergyMeter, PowerProfile, power_profile


def _play(name, means, horizon, seed, contexts=None):
    """Bernoulli arms; returns pseudo-regret after each round and the arms pulled."""
    means = np.atleast_2d(means)
    b = make_bandit(name, means.shape[1], means.shape[0], seed=seed)
    rng = np.random.default_rng(100 + seed)
    regret, arms, r = [], [], 0.0
    for t in range(horizon):
        c = 0 if contexts is None else contexts[t]
        a = b.select(c)
        b.update(c, a, float(rng.random() < means[c, a]))
        r += means[c].max() - means[c, a]
        regret.append(r)
        arms.append(a)
    return np.array(regret), np.array(arms)


@pytest.mark.parametrize("name", ["ucb", "ucb_tuned", "thompson"])
def test_converges_to_best_arm_with_sublinear_regret(name):
    means = [0.35, 0.6, 0.5]         # arm 1 is best, gap 0.1 to the runner-up
    T = 4000
    runs = [_play(name, means, T, s) for s in range(3)]
    reg = np.mean([r for r, _ in runs], axis=0)
    # Sublinear: the regret of the last three quarters is smaller than that of the first
    # quarter times 3 (linear regret would make them equal), and the average regret per round
    # falls well below that of uniform play (0.117).
    q = T // 4
    assert reg[-1] - reg[q - 1] < 1.5 * reg[q - 1]
    assert reg[-1] / T < 0.03
    last = np.concatenate([a[-q:] for _, a in runs])
    assert (last == 1).mean() > 0.9


@pytest.mark.parametrize("name", ["ucb", "ucb_tuned", "thompson"])
def test_contextual_best_arm_per_context(name):
    means = [[0.8, 0.4], [0.3, 0.7]]    # the best arm flips with the context
    ctx = np.random.default_rng(5).integers(0, 2, 3000)
    _, arms = _play(name, means, 3000, seed=1, contexts=ctx)
    tail_c, tail_a = ctx[-1000:], arms[-1000:]
    assert (tail_a[tail_c == 0] == 0).mean() > 0.9
    assert (tail_a[tail_c == 1] == 1).mean() > 0.9


def test_thompson_posterior_counts_trials():
    b = Thompson(2, 1, seed=0)
    for _ in range(50):
        b.update(0, 0, 1.0)
        b.update(0, 1, 0.0)
    assert b.alpha[0, 0] == 51 and b.beta[0, 0] == 1
    assert b.alpha[0, 1] == 1 and b.beta[0, 1] == 51


def _brute(scores, cap):
    n, k = scores.shape
    best = -np.inf
    for a in itertools.product(range(k), repeat=n):
        if all(sum(x == arm for x in a) <= c for arm, c in cap.items()):
            best = max(best, sum(scores[i, a[i]] for i in range(n)))
    return best


def test_capacity_oracle_matches_brute_force_for_two_arms():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 8))
        scores = rng.random((n, 2))
        cap = {0: int(rng.integers(0, n + 1))}
        choice = best_assignment(scores, cap)
        assert sum(c == 0 for c in choice) <= cap[0]
        got = sum(scores[i, c] for i, c in enumerate(choice))
        assert got == pytest.approx(_brute(scores, cap))


def test_select_batch_respects_capacity():
    b = make_bandit("ucb", 2, 1)
    for _ in range(20):
        b.update(0, 0, 1.0)
        b.update(0, 1, 0.0)
    assert b.select_batch([0] * 6, {0: 2}).count(0) == 2
    assert b.select_batch([0] * 6).count(0) == 6


def test_bandit_errors_name_the_field():
    with pytest.raises(ValueError, match="bandit must be one of"):
        make_bandit("epsilon")
    with pytest.raises(ValueError, match="exploration"):
        make_bandit("ucb", exploration=-1.0)
    with pytest.raises(ValueError, match="num_contexts"):
        make_bandit("ucb", num_contexts=0)
    b = make_bandit("thompson")
    with pytest.raises(ValueError, match="reward must be in"):
        b.update(0, 0, 1.5)
    with pytest.raises(ValueError, match="context"):
        b.select(3)
    with pytest.raises(ValueError, match="cannot place"):
        best_assignment(np.zeros((3, 2)), {0: 1, 1: 1})


# ---- energy model --------------------------------------------------------------------------------
def test_energy_of_a_device_by_hand():
    p = PowerProfile(busy_w=300.0, idle_w=50.0, idle_share=0.5, pue=1.2)
    # 4 s busy, 6 s idle of which half is charged: 1.2 * (300*4 + 50*0.5*6) = 1620 J
    assert p.energy_j(4.0, 10.0) == pytest.approx(1620.0)
    assert p.marginal_w == pytest.approx(1.2 * (300 - 25))


def test_energy_attribution_by_hand():
    m = EnergyMeter(PowerProfile(busy_w=100.0, idle_w=20.0))
    m.record_step(0.2, {"a": 3, "b": 1})      # a gets 0.15 s, b 0.05 s
    m.record_step(0.1, {"b": 1})              # b gets 0.1 s
    assert m.busy_s == pytest.approx(0.3)
    assert m.request_busy_s == pytest.approx({"a": 0.15, "b": 0.15})
    # Horizon 1 s: 100*0.3 + 20*0.7 = 44 J; idle 14 J split by busy share (half each).
    assert m.total_j(1.0) == pytest.approx(44.0)
    att = m.attribute(1.0)
    assert att["a"] == pytest.approx(100 * 0.15 + 7.0)
    assert att["b"] == pytest.approx(100 * 0.15 + 7.0)
    assert sum(att.values()) == pytest.approx(m.total_j(1.0))
    assert m.marginal_j("a") == pytest.approx(80 * 0.15)


@pytest.mark.parametrize("field,kw,match", [
    ("busy_w", dict(busy_w=-1.0, idle_w=0.0), "power.busy_w must be >= 0"),
    ("idle_w", dict(busy_w=10.0, idle_w=-2.0), "power.idle_w must be >= 0"),
    ("idle_w", dict(busy_w=10.0, idle_w=20.0), "idle_w .* must be <= power.busy_w"),
    ("idle_share", dict(busy_w=10.0, idle_w=1.0, idle_share=1.5), "idle_share"),
    ("pue", dict(busy_w=10.0, idle_w=1.0, pue=0.9), "pue"),
])
def test_power_errors_name_the_field(field, kw, match):
    with pytest.raises(ValueError, match=match):
        PowerProfile(**kw)


def test_power_profile_defaults_and_unknown():
    assert power_profile("h100-80gb", idle_share=0.0).idle_share == 0.0
    with pytest.raises(ValueError, match="no power profile"):
        power_profile("tpu-v9")
