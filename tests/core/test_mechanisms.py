"""Each mechanism against numbers worked out by hand: static padding, prefix cache, queues,
KV reservation, predictors."""
import math

import numpy as np
import pytest
from sched_helpers import assert_finished_correctly, drive, make_req

from llmserve.core.block_manager import BlockManager
from llmserve.core.predictors import create_predictor, parse_predictor_spec
from llmserve.core.request_queue import create_request_queue
from llmserve.core.scheduler import SchedulerConfig, create_scheduler


# ---- static batching ----------------------------------------------------------------------
def test_static_batch_padding_is_counted_and_charged_by_hand():
    cfg = SchedulerConfig.for_policy("static", max_num_seqs=8, max_num_batched_tokens=128,
                                     block_size=4, num_kv_blocks=100, max_model_len=128,
                                     static_batch_size=3)
    sched = create_scheduler(cfg)
    a, b, c = make_req(0, 4, 2), make_req(1, 6, 5), make_req(2, 10, 3)
    late = make_req(3, 5, 1, arrival=1.0)
    outs = drive(sched, [a, b, c, late])
    # Step 1: the three prompts padded to 10 -> 6 + 4 + 0 padding rows, all in one step.
    assert [len(s.token_ids) for s in outs[0].scheduled] == [4, 6, 10]
    assert [s.num_padding_tokens for s in outs[0].scheduled] == [6, 4, 0]
    # KV reserved for prompt + max_tokens at once: ceil(6/4), ceil(11/4), ceil(13/4) blocks.
    assert [len(s.block_ids) for s in outs[0].scheduled] == [2, 3, 4]
    # Decode in lock step until b (5 tokens) ends: 4 decode steps. a ends after decode 1,
    # c after decode 2; each then costs one padding row per step: 0 + 1 + 2 + 2 = 5.
    decode = outs[1:5]
    assert [o.num_padding_tokens for o in decode] == [0, 1, 2, 2]
    assert all(len(o.scheduled) == 3 for o in decode)      # finished members keep their slot
    pad_rows = [s for o in decode for s in o.scheduled if s.num_padding_tokens]
    assert all(s.token_ids == [] and not s.sample for s in pad_rows)
    # Nothing joins mid-batch: the late request runs only after the batch.
    assert all("3" not in [s.req_id for s in o.scheduled] for o in outs[:5])
    assert [s.req_id for s in outs[5].scheduled] == ["3"]
    assert sched.stats.num_padding_tokens == 6 + 4 + 5
    total = sched.stats.num_padding_tokens + sched.stats.num_scheduled_tokens
    assert sched.stats.padding_waste == pytest.approx(15 / total)
    assert_finished_correctly([a, b, c, late])
    sched.block_manager.check_all_free()


def test_static_padded_prefill_respects_the_budget_and_timeout():
    cfg = SchedulerConfig.for_policy("static", max_num_seqs=8, max_num_batched_tokens=32,
                                     block_size=4, num_kv_blocks=100, max_model_len=32,
                                     static_batch_size=4, static_batch_timeout_s=5.0)
    sched = create_scheduler(cfg)
    reqs = [make_req(i, 12 - i, 3) for i in range(3)]
    outs = drive(sched, reqs)
    # Only 3 of 4 waiting: the batch waits for the 5 s timeout (empty steps until then).
    first = next(i for i, o in enumerate(outs) if not o.is_empty)
    assert first == 5
    # Padded length 12: two prompts (24 slots) fit the 32-token budget per step.
    assert [len(s.token_ids) + s.num_padding_tokens for s in outs[first].scheduled] == [12, 12]
    assert [len(s.token_ids) + s.num_padding_tokens for s in outs[first + 1].scheduled] == [12]
    assert_finished_correctly(reqs)


def test_static_length_bins_group_by_predicted_length():
    cfg = SchedulerConfig.for_policy("static", max_num_seqs=8, max_num_batched_tokens=128,
                                     block_size=4, num_kv_blocks=200, max_model_len=128,
                                     static_batch_size=2, queue_policy="length_bins",
                                     length_bins=(10,), predictor="oracle")
    sched = create_scheduler(cfg)
    reqs = [make_req(0, 5, 3), make_req(1, 5, 40), make_req(2, 5, 4), make_req(3, 5, 50)]
    outs = drive(sched, reqs)
    batches = [sorted(s.req_id for s in o.scheduled) for o in outs
               if o.scheduled and o.scheduled[0].start_pos == 0]
    assert batches == [["0", "2"], ["1", "3"]]   # short with short, long with long
    assert_finished_correctly(reqs)


# ---- prefix caching -----------------------------------------------------------------------
def test_prefix_hit_shares_blocks_and_skips_compute():
    cfg = SchedulerConfig.for_policy("chunked", max_num_seqs=4, max_num_batched_tokens=64,
                                     block_size=4, num_kv_blocks=64, max_model_len=128,
                                     enable_prefix_caching=True)
    sched = create_scheduler(cfg)
    shared = list(range(100, 112))                     # 3 full blocks
    a = make_req(0, shared + [1, 2], 5)
    b = make_req(1, shared + [3], 5, arrival=1.0)
    outs = drive(sched, [a, b])
    b_first = next(s for o in outs for s in o.scheduled if s.req_id == "1")
    # 12 shared tokens cached: b starts at position 12 and computes only its last token.
    assert b_first.start_pos == 12 and b_first.token_ids == [3]
    assert b_first.block_ids[:3] == next(s for s in outs[0].scheduled).block_ids[:3]
    assert b.num_cached_tokens == 12
    assert sched.block_manager.num_hit_tokens == 12
    assert sched.block_manager.hit_rate == pytest.approx(12 / (14 + 13))
    assert_finished_correctly([a, b])
    sched.block_manager.check_all_free()


def test_fully_cached_prompt_still_computes_its_last_token():
    bm = BlockManager(16, 4, enable_prefix_caching=True)
    a = make_req(0, list(range(8)), 4)
    assert bm.allocate_slots(a, 8)
    a.num_computed_tokens = 8
    bm.cache_full_blocks(a)
    b = make_req(1, list(range(8)), 4)                 # exactly 2 blocks, both cached
    hits = bm.match_prefix(b)
    assert hits == a.block_ids[:1]                     # the block with the last token is not
    assert bm.allocate_slots(b, 4, hit_blocks=hits)
    assert b.num_computed_tokens == 4 and b.block_ids[0] == a.block_ids[0]
    assert bm.ref_counts[a.block_ids[0]] == 2 and bm.num_shared_refs == 1
    bm.check_owners([a.block_ids, b.block_ids])


def test_grow_allocates_the_blocks_worked_out_by_hand():
    bm = BlockManager(4, 4, enable_prefix_caching=True)
    a = make_req(0, list(range(6)), 4)
    assert bm.grow(a, 5) and len(a.block_ids) == 2          # ceil(5 / 4)
    a.num_computed_tokens = 5
    assert bm.grow(a, 3) and len(a.block_ids) == 2          # 8 tokens still fit in 2
    assert bm.grow(a, 4) and len(a.block_ids) == 3          # 9 tokens: a third block
    b = make_req(1, list(range(8)), 4)
    assert not bm.grow(b, 8)                                # 2 needed, 1 free: no change
    assert b.block_ids == [] and bm.num_free_blocks == 1
    assert bm.grow(b, 4) and bm.num_free_blocks == 0
    bm.check_owners([a.block_ids, b.block_ids])
    freed = b.block_ids[0]
    bm.free(b)
    c = make_req(2, list(range(4)), 4)
    assert bm.grow(c, 4) and c.block_ids == [freed] and bm.ref_counts[freed] == 1
    bm.check_owners([a.block_ids, c.block_ids])


def test_hash_collision_is_caught_by_the_token_check():
    bm = BlockManager(16, 4, enable_prefix_caching=True)
    a = make_req(0, [1, 2, 3, 4, 5], 4)
    assert bm.allocate_slots(a, 5)
    a.num_computed_tokens = 5
    bm.cache_full_blocks(a)
    b = make_req(1, [9, 9, 9, 9, 5], 4)
    # Forge a collision: b's first-block hash now points at a's block.
    h_b = bm._hash_blocks(b, 1)[0]
    bm._cached[h_b] = a.block_ids[0]
    assert bm.match_prefix(b) == []


def test_cached_free_blocks_are_reused_then_evicted_lru():
    bm = BlockManager(4, 4, enable_prefix_caching=True)
    reqs = []
    for i in range(2):
        r = make_req(i, [10 * i + k for k in range(5)], 3)
        assert bm.allocate_slots(r, 5)
        r.num_computed_tokens = 5
        bm.cache_full_blocks(r)
        reqs.append(r)
    first_blocks = [r.block_ids[0] for r in reqs]
    for r in reqs:
        bm.free(r)
    bm.check_all_free()
    assert bm.num_cached_free_blocks == 2
    # A hit revives a cached free block.
    again = make_req(5, [0, 1, 2, 3, 99], 3)
    hits = bm.match_prefix(again)
    assert hits == [first_blocks[0]]
    assert bm.allocate_slots(again, 1, hit_blocks=hits)
    assert bm.num_cached_free_blocks == 1
    # Pool: 4 blocks; `again` owns 2 (the hit + 1 fresh), 1 cached free, 1 plain free.
    # Needing 2 takes the plain one, then evicts the cached one.
    other = make_req(6, list(range(200, 208)), 1)
    assert bm.allocate_slots(other, 8)
    assert bm.num_evictions == 1 and first_blocks[1] in other.block_ids
    assert bm.match_prefix(make_req(7, [10, 11, 12, 13, 0], 1)) == []


# ---- queues and reservations --------------------------------------------------------------
def test_shortest_first_with_aging_orders_by_predicted_length_minus_aging():
    q = create_request_queue("shortest_first", aging_rate=2.0)
    reqs = []
    for i, (pred, arr) in enumerate([(30, 0.0), (10, 5.0), (20, 1.0), (12, 6.0)]):
        r = make_req(i, 3, 50, arrival=arr)
        r.predicted_num_output_tokens = pred
        q.add(r)
        reqs.append(r)
    # keys pred + 2 * arrival: 30, 20, 22, 24 -> order 1, 2, 3, 0
    assert [q.pop(10.0).request_id for _ in range(4)] == ["1", "2", "3", "0"]
    assert q.peek(10.0) is None and len(q) == 0


def test_preempted_request_goes_back_in_front_and_aborts_are_lazy():
    q = create_request_queue("fcfs")
    a, b, c = (make_req(i, 3, 5) for i in range(3))
    q.add(a)
    q.add(b)
    q.add_front(c)
    q.remove(a)
    a.status = a.status.FINISHED_ABORTED
    assert len(q) == 2
    assert [q.pop(0.0) for _ in range(2)] == [c, b]


def test_reserve_modes_allocate_up_front():
    for mode, expect in (("paged", 3), ("reserve_max", 13), ("reserve_predicted", 6)):
        cfg = SchedulerConfig.for_policy("chunked", max_num_seqs=4, max_num_batched_tokens=64,
                                         block_size=4, num_kv_blocks=64, max_model_len=128,
                                         kv_allocation=mode, predictor="constant:12")
        sched = create_scheduler(cfg)
        r = make_req(0, 10, 40)
        sched.add_request(r)
        out = sched.schedule(0.0)
        # paged: ceil(10/4); reserve_max: ceil(50/4); reserve_predicted: ceil((10+12)/4)
        assert len(out.scheduled[0].block_ids) == expect, mode
        assert sched.stats.num_steps == 1


def test_fragmentation_is_reserved_but_unused_over_reserved():
    cfg = SchedulerConfig.for_policy("chunked", max_num_seqs=4, max_num_batched_tokens=64,
                                     block_size=4, num_kv_blocks=64, max_model_len=128,
                                     kv_allocation="reserve_max")
    sched = create_scheduler(cfg)
    r = make_req(0, 10, 10)
    drive(sched, [r])
    rec = sched.step_records[0]
    # After step 1: 10 tokens computed in ceil(20/4) = 5 reserved blocks (20 slots).
    assert (rec.kv_blocks_used, rec.kv_tokens_used) == (5, 10)
    recs = sched.step_records
    used = sum(x.kv_tokens_used for x in recs)
    reserved = sum(x.kv_blocks_used * 4 for x in recs)
    assert sched.stats.kv_fragmentation == pytest.approx(1 - used / reserved)


# ---- predictors ---------------------------------------------------------------------------
def test_predictors_oracle_constant_noisy():
    reqs = [make_req(i, 3, 100) for i in range(2000)]
    reqs[0].true_num_output_tokens = 7
    mean, spread = create_predictor("oracle").predict(reqs[:2])
    assert list(mean) == [7, 100] and list(spread) == [0, 0]
    assert list(create_predictor("constant:128").predict(reqs[:2])[0]) == [128, 128]
    noisy = create_predictor("noisy_oracle:0.2:7")
    m1, _ = noisy.predict(reqs)
    m2, _ = create_predictor("noisy_oracle:0.2:7").predict(reqs[::-1])
    assert m1 == m2[::-1]                       # per request, not per call order
    log_err = np.log(np.array(m1[1:]) / 100.0)
    assert abs(log_err.mean()) < 0.02
    assert log_err.std() == pytest.approx(math.log(1.2), rel=0.08)
    assert create_predictor("none") is None


@pytest.mark.parametrize("spec", ["oracle:1", "noisy_oracle", "noisy_oracle:x", "constant:-1",
                                  "constant", "checkpoint:", "psychic"])
def test_bad_predictor_specs(spec):
    with pytest.raises(ValueError, match="predictor must be one of"):
        parse_predictor_spec(spec)


def test_predictor_is_called_once_per_step_on_new_arrivals():
    calls = []

    class Counting:
        def predict(self, requests):
            calls.append([r.request_id for r in requests])
            return [5.0] * len(requests), [1.0] * len(requests)

    cfg = SchedulerConfig.for_policy("predictive", max_num_seqs=4, max_num_batched_tokens=64,
                                     block_size=4, num_kv_blocks=64, max_model_len=128)
    sched = create_scheduler(cfg, predictor=Counting())
    reqs = [make_req(i, 3, 4, arrival=float(i // 2)) for i in range(6)]
    drive(sched, reqs)
    assert calls == [["0", "1"], ["2", "3"], ["4", "5"]]
    assert all(r.predicted_num_output_tokens == 4.0 for r in reqs)   # clipped to max_tokens


def test_forced_length_does_not_cap_predictions():
    """A trace replay forces each request's length by setting max_tokens to it; a predictor's
    output must then be capped by the model's limit, not by max_tokens (that would hand every
    predictor the true length as an upper bound)."""
    class Big:
        def predict(self, requests):
            return [1000.0] * len(requests), [0.0] * len(requests)

    cfg = SchedulerConfig.for_policy("predictive", max_num_seqs=4, max_num_batched_tokens=64,
                                     block_size=4, num_kv_blocks=64, max_model_len=128)
    sched = create_scheduler(cfg, predictor=Big())
    reqs = [make_req(i, 3, 4) for i in range(2)]
    reqs[1].true_num_output_tokens = 4     # forced, as replay does
    drive(sched, reqs)
    assert reqs[0].predicted_num_output_tokens == 4.0           # the client's own cap
    assert reqs[1].predicted_num_output_tokens == 128 - 3       # max_model_len - prompt
