"""Router policies against hand-computed choices on small states."""
import pytest

from llmserve.cluster.router import (
    POLICIES,
    LoadView,
    ReplicaState,
    RouteRequest,
    make_policy,
    prefix_block_hashes,
)
from llmserve.core.request import Request
from llmserve.core.scheduler import Scheduler, SchedulerConfig
from llmserve.core.sched_output import RunnerOutput
from llmserve.sampling_params import SamplingParams


def req(rid="r", ids=(1, 2, 3), max_tokens=8, pred=None):
    return RouteRequest(rid, list(ids), max_tokens, pred)


def states(**cols):
    """states(outstanding_tokens=[5, 2, 3], alive=[1, 0, 1]) -> ReplicaStates 0..n-1."""
    n = len(next(iter(cols.values())))
    return [ReplicaState(i, **{k: v[i] for k, v in cols.items()}) for i in range(n)]


def test_registry_has_every_policy_and_unknown_names_fail():
    assert set(POLICIES) == {"round_robin", "random", "least_requests", "least_tokens",
                             "power_of_two", "kv_aware", "prefix_aware", "predicted_work"}
    with pytest.raises(ValueError, match="router.policy.*least_tokens.*'fastest'"):
        make_policy("fastest")
    with pytest.raises(ValueError, match="imbalance_abz"):
        make_policy("prefix_aware", imbalance_abz=3)
    with pytest.raises(ValueError, match="imbalance_rel"):
        make_policy("prefix_aware", imbalance_rel=0.5)


def test_round_robin_cycles_and_skips_dead():
    p = make_policy("round_robin")
    s = states(alive=[True, False, True])
    assert [p.choose(req(), s) for _ in range(5)] == [0, 2, 0, 2, 0]


def test_random_only_alive_and_covers_them():
    p = make_policy("random", seed=3)
    s = states(alive=[False, True, True, False, True])
    picks = [p.choose(req(), s) for _ in range(300)]
    assert set(picks) == {1, 2, 4}


def test_least_requests_counts_running_plus_waiting_ties_lowest():
    p = make_policy("least_requests")
    assert p.choose(req(), states(num_running=[3, 0, 1], num_waiting=[1, 2, 0])) == 2
    assert p.choose(req(), states(num_running=[2, 1, 1], num_waiting=[0, 1, 1])) == 0
    assert p.choose(req(), states(num_running=[0, 1, 1], num_waiting=[0, 1, 1],
                                  alive=[False, True, True])) == 1


def test_least_tokens_and_dead():
    p = make_policy("least_tokens")
    assert p.choose(req(), states(outstanding_tokens=[500, 100, 300])) == 1
    assert p.choose(req(), states(outstanding_tokens=[500, 100, 300],
                                  alive=[True, False, True])) == 2


def test_kv_aware_most_free_blocks():
    p = make_policy("kv_aware")
    s = states(free_kv_blocks=[10, 50, 30], total_kv_blocks=[100, 100, 100])
    assert p.choose(req(), s) == 1
    s[1].alive = False
    assert p.choose(req(), s) == 2


def test_predicted_work_least_predicted():
    p = make_policy("predicted_work")
    s = states(predicted_work=[100.0, 20.5, 40.0], outstanding_tokens=[0, 900, 0])
    assert p.choose(req(), s) == 1
    # Prompt tokens still to prefill count too: 20.5 + 30 > 40 + 0.
    s = states(predicted_work=[100.0, 20.5, 40.0], prefill_tokens=[0, 30, 0])
    assert p.choose(req(), s) == 2


def test_power_of_two():
    # Two alive replicas: both are drawn, the lighter always wins.
    p = make_policy("power_of_two", seed=1)
    s = states(outstanding_tokens=[9, 100, 4], alive=[True, False, True])
    assert {p.choose(req(), s) for _ in range(50)} == {2}
    # Three: the heaviest loses every pair, the lightest wins the 2 pairs of 3 it is in.
    s = states(outstanding_tokens=[30, 10, 20])
    picks = [p.choose(req(), s) for _ in range(3000)]
    assert 0 not in picks
    assert abs(picks.count(1) / len(picks) - 2 / 3) < 0.04


def test_no_alive_replica_is_an_error():
    for name in POLICIES:
        with pytest.raises(ValueError, match="alive"):
            make_policy(name).choose(req(ids=range(40)), states(alive=[False, False]))


def test_prefix_aware_longest_match_unless_imbalanced():
    bs = 4
    p = make_policy("prefix_aware", block_size=bs, imbalance_abs=100, imbalance_rel=2.0)
    a = list(range(100, 113))           # 13 tokens: (13 - 1) // 4 = 3 matchable blocks
    # Nothing recorded: least outstanding tokens.
    s = states(outstanding_tokens=[50, 10, 40])
    r = req("a", a)
    assert p.choose(r, s) == 1
    # Record: replica 2 was sent all of `a`, replica 0 only its first block.
    p.on_dispatch(req("x", a), 2)
    p.on_dispatch(req("y", a[:4] + [7, 7, 7, 7, 7]), 0)
    b = a[:12] + [1, 2, 3, 4, 5]        # shares 3 blocks with a
    assert p.choose(req("b", b), s) == 2          # 3-block match beats 1 and the lighter 1
    c = a[:4] + [9] * 9                  # shares only the first block: 0 and 2 hold it
    assert p.choose(req("c", c), s) == 2          # tie on depth: 2 has fewer tokens (40 < 50)
    # Imbalanced: 2 is more than 100 tokens and 2x above the least loaded (10).
    s = states(outstanding_tokens=[50, 10, 300])
    assert p.choose(req("b2", b), s) == 1
    # Above the absolute threshold but not 2x: affinity holds.
    s = states(outstanding_tokens=[500, 300, 550])
    assert p.choose(req("b3", b), s) == 2
    # Its replica dead: no usable match, least loaded alive.
    s = states(outstanding_tokens=[50, 10, 40], alive=[True, True, False])
    assert p.choose(req("b4", b), s) == 1
    assert p.num_affinity == 3 and p.num_balanced == 1


def test_prefix_aware_record_is_bounded_lru():
    p = make_policy("prefix_aware", block_size=4, capacity_blocks=2)
    a, b = list(range(9)), list(range(50, 59))     # 2 blocks each
    p.on_dispatch(req("a", a), 0)
    p.on_dispatch(req("b", b), 0)                  # evicts a's blocks
    s = states(outstanding_tokens=[10, 0])
    assert p.choose(req("a2", a), s) == 1           # no record of a any more
    assert p.choose(req("b2", b), s) == 0


def test_prefix_hashes_agree_with_a_replica_prefix_cache():
    """The router's hashes are the block manager's: after a replica computed a prompt, the
    blocks it can serve to a new prompt are exactly the router's matched prefix."""
    bs = 4
    sched = Scheduler(SchedulerConfig(block_size=bs, num_kv_blocks=64, max_num_batched_tokens=64,
                                      max_model_len=128, enable_prefix_caching=True))
    a = list(range(1, 23))
    sched.add_request(Request("a", a, SamplingParams(max_tokens=1), 0.0))
    out = sched.schedule(0.0)
    sched.update_from_output(out, RunnerOutput({"a": 5}), 0.1)
    b = a[:13] + [99] * 10
    rb = Request("b", b, SamplingParams(max_tokens=1), 0.0)
    hits = sched.block_manager.match_prefix(rb)
    p = make_policy("prefix_aware", block_size=bs)
    p.on_dispatch(req("a", a), 0)
    holders, depth = p._match(prefix_block_hashes(b, bs))
    assert holders == {0} and depth == len(hits) == 3
    assert prefix_block_hashes(a, bs) == sched.block_manager._hash_blocks(
        Request("a2", a, SamplingParams(max_tokens=1), 0.0), (len(a) - 1) // bs)


def test_load_view_round_trip():
    s = states(num_running=[1, 2], num_waiting=[3, 4], outstanding_tokens=[5, 6],
               free_kv_blocks=[7, 8], total_kv_blocks=[9, 10], predicted_work=[1.5, 2.5],
               alive=[True, False], prefill_tokens=[11, 12])
    assert LoadView.from_states(s).states() == s
