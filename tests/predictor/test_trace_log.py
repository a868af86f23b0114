"""Trace log: records round-trip, bad lines are named or counted, crashes leave whole lines."""
import json
import os

import pytest
from engine_utils import engine

from llmserve.sampling_params import SamplingParams
from llmserve.workload.trace_log import (
    TraceLogWriter,
    make_record,
    read_trace_log,
    write_trace_log,
)


def _recs(n):
    return [make_record(f"r{i}", [1, 2, i], 5 + i, prompt_text=f"p{i}", finish_reason="stop",
                        arrival_s=0.5 * i, ttft_s=0.01, e2e_s=0.2) for i in range(n)]


def test_round_trip(tmp_path):
    path = tmp_path / "log.jsonl"
    write_trace_log(path, _recs(3))
    got = read_trace_log(path)
    assert got == _recs(3) and got.num_bad_lines == 0
    # one JSON object per line, nothing else
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(x)["prompt_len"] == 3 for x in lines)


def test_truncated_last_line_is_named_or_counted(tmp_path):
    path = tmp_path / "log.jsonl"
    write_trace_log(path, _recs(3))
    data = path.read_bytes()
    path.write_bytes(data[:-20])  # a crash in the middle of the third line
    with pytest.raises(ValueError, match=r"log\.jsonl, line 3.*truncated"):
        read_trace_log(path)
    got = read_trace_log(path, skip_bad_lines=True)
    assert [r["request_id"] for r in got] == ["r0", "r1"]
    assert got.num_bad_lines == 1 and got.bad_lines == (3,)
    # a writer reopening the crashed file starts on a fresh line: the next record is intact
    with TraceLogWriter(path) as w:
        w.write(_recs(5)[4])
    got = read_trace_log(path, skip_bad_lines=True)
    assert [r["request_id"] for r in got] == ["r0", "r1", "r4"] and got.num_bad_lines == 1


def test_bad_record_fields_name_the_line(tmp_path):
    path = tmp_path / "log.jsonl"
    good = json.dumps(_recs(1)[0])
    bad = dict(_recs(1)[0], prompt_len=7)  # disagrees with the ids
    path.write_text(good + "\n" + json.dumps(bad) + "\n" + "[1, 2]\n")
    with pytest.raises(ValueError, match=r"line 2.*prompt_len"):
        read_trace_log(path)
    got = read_trace_log(path, skip_bad_lines=True)
    assert len(got) == 1 and got.bad_lines == (2, 3)
    with pytest.raises(ValueError, match="does not exist"):
        read_trace_log(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="output_len"):
        make_record("x", [1], -1)


def test_engine_writes_one_record_per_finished_request(tmp_path):
    path = tmp_path / "engine.jsonl"
    eng = engine(trace_log=str(path))
    sps = [SamplingParams(max_tokens=n, ignore_eos=True, temperature=0.0) for n in (3, 7, 5)]
    ids = [eng.add_request(p, sp) for p, sp in zip(["hello", [1, 2, 3, 4], "abc"], sps)]
    victim = eng.add_request("to abort", SamplingParams(max_tokens=50, ignore_eos=True))
    eng.step()
    eng.abort(victim)
    while eng.has_unfinished():
        eng.step()
    recs = {r["request_id"]: r for r in read_trace_log(path)}
    assert set(recs) == set(ids) | {victim}
    for rid, n in zip(ids, (3, 7, 5)):
        r = recs[rid]
        assert r["output_len"] == n and r["finish_reason"] == "length"
        assert 0 <= r["ttft_s"] <= r["e2e_s"]
    assert recs[ids[0]]["prompt_text"] == "hello"
    assert recs[ids[0]]["prompt_token_ids"] == eng.tokenizer.encode("hello")
    assert recs[ids[1]]["prompt_text"] is None and recs[ids[1]]["prompt_len"] == 4
    assert recs[victim]["finish_reason"] == "abort"
    assert os.path.getsize(path) == len(path.read_bytes())
