"""Drivers and oracles shared by the scheduler tests (mock runner, hand-computable tokens)."""
from __future__ import annotations

import collections

from llmserve.core.request import Request, RequestStatus
from llmserve.runner.mock_runner import MockRunner, mock_token
from llmserve.sampling_params import SamplingParams

VOCAB = 1000


def make_req(i, prompt, max_tokens, arrival=0.0, stop=(), seed=None):
    if isinstance(prompt, int):
        prompt = list(range(1, prompt + 1))
    sp = SamplingParams(max_tokens=max_tokens, ignore_eos=True, stop_token_ids=tuple(stop),
                        seed=i if seed is None else seed)
    return Request(str(i), prompt, sp, arrival_time=arrival)


def expected_output(req):
    """What MockRunner makes a request say, worked out by hand: token k = f(seed, k), cut at
    max_tokens, the first stop token (included) or max_model_len."""
    out = []
    seed = req.sampling_tuple[3]
    for k in range(req.sampling_params.max_tokens):
        t = mock_token(seed, k, VOCAB)
        out.append(t)
        if t in req.sampling_params.stop_token_ids:
            break
    return out


def kv_tokens_oracle(sched):
    """Token slots holding KV, counting each physical block once: independent of the
    scheduler's incremental counter."""
    bs = sched.config.block_size
    filled = collections.defaultdict(int)
    for blocks, computed in sched_owner_progress(sched):
        for j, b in enumerate(blocks):
            filled[b] = max(filled[b], min(bs, max(0, computed - j * bs)))
    return sum(filled.values())


def sched_owner_progress(sched):
    owners = getattr(sched, "batch", None)
    if owners is None:
        owners = sched.running
    return [(r.block_ids, r.num_computed_tokens) for r in owners]


def check_step(sched, out):
    cfg = sched.config
    assert out.num_scheduled_tokens + out.num_padding_tokens <= cfg.max_num_batched_tokens
    assert out.num_scheduled_tokens == sum(len(s.token_ids) for s in out.scheduled)
    assert out.num_padding_tokens == sum(s.num_padding_tokens for s in out.scheduled)
    assert len(out.scheduled) <= cfg.max_num_seqs
    assert len(sched.running) <= cfg.max_num_seqs
    ids = [s.req_id for s in out.scheduled]
    assert len(ids) == len(set(ids)), "a request scheduled twice in one step"
    for s in out.scheduled:
        assert len(s.token_ids) + s.num_padding_tokens > 0
        # Every real token has a slot in the block table.
        assert s.start_pos + len(s.token_ids) <= len(s.block_ids) * cfg.block_size
        if s.num_padding_tokens and cfg.batching != "static":
            raise AssertionError("padding outside static batching")
    if cfg.batching == "static":
        assert len(sched.batch) <= cfg.static_batch_limit
    sched.check_invariants()


def drive(sched, reqs, runner=None, check=True, abort_at=None, max_steps=50_000):
    """Run to the end on a virtual clock (now = step index). reqs arrive at their
    arrival_time; abort_at: {request_id: step}. Returns the per-step outputs."""
    runner = runner or MockRunner(VOCAB)
    pending = sorted(reqs, key=lambda r: r.arrival_time)
    abort_at = dict(abort_at or {})
    i = 0
    now = 0.0
    outs = []
    for step in range(max_steps):
        while i < len(pending) and pending[i].arrival_time <= now:
            sched.add_request(pending[i])
            i += 1
        for rid, s in list(abort_at.items()):
            if s <= step:
                sched.abort(rid, now)
                del abort_at[rid]
        if i == len(pending) and not sched.has_unfinished():
            return outs
        out = sched.schedule(now)
        if check:
            check_step(sched, out)
        res = runner.execute(out)
        runner.steps.clear()
        now += 1.0
        sched.update_from_output(out, res, now)
        if check:
            sched.check_invariants()
            used = sched.step_records[-1].kv_tokens_used if sched.step_records else 0
            if not out.is_empty:
                assert used == kv_tokens_oracle(sched)
        outs.append(out)
    raise AssertionError("scheduler did not drain")


def assert_finished_correctly(reqs, aborted=()):
    for r in reqs:
        exp = expected_output(r)
        if r.request_id in aborted and r.status == RequestStatus.FINISHED_ABORTED:
            assert r.output_token_ids == exp[:len(r.output_token_ids)]
            continue
        assert r.is_finished and r.status != RequestStatus.FINISHED_ABORTED, r
        assert r.output_token_ids == exp, r
        assert r.block_ids == []
