"""Loaders: hand-written fixture files with hand-computed expectations; errors name file,
line and field; the real files in ../shared/data when present."""
import json
import os

import pytest

from llmserve.workload import loaders
from llmserve.workload.trace_log import make_record

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data")


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_azure_csv_arrivals_and_lengths(tmp_path):
    path = _write(tmp_path, "t.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                  "2023-11-16 18:15:46.6805900,374,44\n"
                  "2023-11-16 18:15:47.1805900,10,1\n"
                  "2023-11-16 18:16:46.6805900,5,7\n")
    reqs = loaders.load_azure_csv(path)
    assert [(r.prompt_len, r.output_len) for r in reqs] == [(374, 44), (10, 1), (5, 7)]
    assert [r.arrival_s for r in reqs] == pytest.approx([0.0, 0.5, 60.0])
    assert len(loaders.load_azure_csv(path, limit=2)) == 2


@pytest.mark.parametrize("row,line,field", [
    ("2023-11-16 18:15:47.0,abc,3", 3, "ContextTokens"),
    ("2023-11-16 18:15:47.0,3,-1", 3, "GeneratedTokens"),
    ("yesterday,3,3", 3, "TIMESTAMP"),
    ("2023-11-16 18:15:47.0,3", 3, "row"),
])
def test_azure_csv_errors_name_file_line_field(tmp_path, row, line, field):
    path = _write(tmp_path, "bad.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                  f"2023-11-16 18:15:46.0,1,1\n{row}\n")
    with pytest.raises(ValueError) as e:
        loaders.load_azure_csv(path)
    msg = str(e.value)
    assert path in msg and f"line {line}" in msg and repr(field) in msg


def test_azure_csv_bad_header(tmp_path):
    path = _write(tmp_path, "h.csv", "time,in,out\n")
    with pytest.raises(ValueError, match="line 1.*header"):
        loaders.load_azure_csv(path)


def test_missing_file():
    with pytest.raises(ValueError, match="does not exist"):
        loaders.load("azure_csv", "/nonexistent/x.csv")


def test_sharegpt_first_pair_byte_lengths(tmp_path):
    data = [{"id": "a", "conversations": [{"from": "human", "value": "hi"},
                                          {"from": "gpt", "value": "hello!"}]},
            {"id": "b", "conversations": [{"from": "gpt", "value": "orphan"}]},
            {"id": "c", "conversations": [{"from": "human", "value": "é?"},
                                          {"from": "gpt", "value": "ok"},
                                          {"from": "human", "value": "more"},
                                          {"from": "gpt", "value": "no"}]}]
    reqs = loaders.load_sharegpt(_write(tmp_path, "s.json", json.dumps(data, indent=1)))
    # Byte tokenizer: prompt = BOS + UTF-8 bytes; output = bytes (no BOS).
    assert [(r.prompt_len, r.output_len) for r in reqs] == [(3, 6), (4, 2)]
    assert reqs[0].prompt_token_ids == [256, ord("h"), ord("i")]
    assert reqs[1].prompt_text == "é?"


def test_json_errors_name_the_line(tmp_path):
    text = '[\n {"instruction": "a", "input": "", "output": "b"},\n {"instruction": "c",\n' \
           '  "input": "", "answer": "d"}\n]'
    path = _write(tmp_path, "a.json", text)
    with pytest.raises(ValueError) as e:
        loaders.load_alpaca(path)
    assert path in str(e.value) and "line 3" in str(e.value) and "'output'" in str(e.value)
    broken = _write(tmp_path, "b.json", '[\n {"instruction": "a",\n "output": }\n]')
    with pytest.raises(ValueError, match=r"line 3.*does not parse"):
        loaders.load_alpaca(broken)


def test_alpaca_and_dolly(tmp_path):
    alp = [{"instruction": "ab", "input": "cd", "output": "xyz"}]
    dol = [{"instruction": "ab", "context": "", "response": "wxyz", "category": "open_qa"}]
    a = loaders.load_alpaca(_write(tmp_path, "a.json", json.dumps(alp)))[0]
    d = loaders.load_alpaca(_write(tmp_path, "d.json", json.dumps(dol)))[0]
    assert (a.prompt_text, a.prompt_len, a.output_len) == ("ab\ncd", 6, 3)
    assert (d.prompt_text, d.prompt_len, d.output_len) == ("ab", 3, 4)


def test_castillo_drops_capped_samples(tmp_path):
    data = [{"prompt_text": "p1", "input_size": 40, "output_sizes": [15001, 7, 15001]},
            {"prompt_text": "p2", "input_size": 50, "output_sizes": [15001]},
            {"prompt_text": "p3", "input_size": 60, "output_sizes": [3, 5]}]
    reqs = loaders.load_castillo(_write(tmp_path, "c.json", json.dumps(data)), seed=3)
    assert [(r.prompt_len, r.prompt_text) for r in reqs] == [(40, "p1"), (60, "p3")]
    assert reqs[0].output_len == 7 and reqs[1].output_len in (3, 5)
    bad = [{"prompt_text": "p", "input_size": 4, "output_sizes": ["x"]}]
    with pytest.raises(ValueError, match="output_sizes"):
        loaders.load_castillo(_write(tmp_path, "bad.json", json.dumps(bad)))


def test_jsonl_trace_log(tmp_path):
    recs = [make_record("r1", [5, 6, 7], 4, arrival_s=10.5),
            make_record("r0", [1, 2], 9, prompt_text="ab", arrival_s=10.0)]
    path = tmp_path / "log.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    reqs = loaders.load_jsonl(str(path))
    assert [(r.arrival_s, r.prompt_token_ids, r.output_len) for r in reqs] == \
        [(0.0, [1, 2], 9), (0.5, [5, 6, 7], 4)]


def test_unknown_kind():
    with pytest.raises(ValueError, match="workload.kind"):
        loaders.load("parquet", "x")


@pytest.mark.skipif(not os.path.isfile(os.path.join(DATA, "azure_conv_2023.csv")),
                    reason="shared data not present")
def test_real_azure_trace():
    reqs = loaders.load_azure_csv(os.path.join(DATA, "azure_conv_2023.csv"))
    assert len(reqs) == 19366     # SOURCES.md
    assert reqs[-1].arrival_s == pytest.approx(3501.7, abs=0.1)


@pytest.mark.skipif(not os.path.isdir(DATA), reason="shared data not present")
@pytest.mark.parametrize("kind,name", [("sharegpt", "fastchat_dummy_conversation.json"),
                                       ("alpaca", "alpaca_data_cleaned_1000.json"),
                                       ("alpaca", "dolly15k_validate.json"),
                                       ("castillo", "castillo_llama31_8b_dolly_validate.json")])
def test_real_json_files_load(kind, name):
    reqs = loaders.load(kind, os.path.join(DATA, name), limit=200)
    assert len(reqs) == 200
    assert all(r.prompt_len >= 1 and r.output_len >= 1 for r in reqs)


# ---- absurd rows and undecodable files (issue 18) -----------------------------------------
@pytest.mark.parametrize("row,field", [("2023-11-16 18:15:47.0,1000000000000,3", "ContextTokens"),
                                       ("2023-11-16 18:15:47.0,3,10000001", "GeneratedTokens"),
                                       ("2023-11-16 18:15:47.0,9" + "9" * 5000 + ",3",
                                        "ContextTokens")])
def test_azure_csv_rejects_absurd_lengths_with_file_and_line(tmp_path, row, field):
    path = _write(tmp_path, "absurd.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                  f"2023-11-16 18:15:46.0,1,1\n{row}\n")
    with pytest.raises(ValueError) as e:
        loaders.load_azure_csv(path)
    msg = str(e.value)
    assert "absurd.csv, line 3" in msg and field in msg and "10,000,000" in msg
    assert len(msg) < 400      # a 5,000-digit value is cut, not echoed whole
    # the bound is 10,000,000 itself: one token less than it is accepted
    ok = _write(tmp_path, "ok.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                "2023-11-16 18:15:46.0,10000000,1\n")
    assert loaders.load_azure_csv(ok)[0].prompt_len == 10_000_000


def test_castillo_and_jsonl_reject_absurd_lengths(tmp_path):
    rec = {"prompt_text": "hi", "input_size": 5, "output_sizes": [3, 10**12]}
    path = _write(tmp_path, "c.json", json.dumps([rec]))
    with pytest.raises(ValueError, match=r"c.json, line 1: field 'output_sizes'.*10,000,000"):
        loaders.load_castillo(path)
    log = tmp_path / "t.jsonl"
    r = {**make_record("r", [1, 2], 3, arrival_s=0.0), "output_len": 10**12}
    log.write_text(json.dumps(make_record("a", [1], 3, arrival_s=0.0)) + "\n" + json.dumps(r)
                   + "\n")
    with pytest.raises(ValueError, match=r"t.jsonl, line 2.*'output_len'"):
        loaders.load_jsonl(str(log))


@pytest.mark.parametrize("name,kind", [("latin1.csv", "azure_csv"), ("latin1.json", "alpaca"),
                                       ("latin1.json", "castillo"), ("latin1.json", "sharegpt")])
def test_non_utf8_file_is_named_with_its_line(tmp_path, name, kind):
    if name.endswith(".csv"):
        body = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.0,1,1\n" \
               "2023-11-16 18:15:47.0,2,2 caf\xe9\n"
    else:
        body = '[\n {"instruction": "caf\xe9", "output": "x"}\n]\n'
    p = tmp_path / name
    p.write_bytes(body.encode("latin-1"))
    with pytest.raises(ValueError) as e:
        loaders.load(kind, str(p))
    assert not isinstance(e.value, UnicodeDecodeError)
    line = 3 if name.endswith(".csv") else 2
    assert f"{name}, line {line}: not UTF-8" in str(e.value) and "0xe9" in str(e.value)


def test_predictor_json_non_utf8_names_the_file(tmp_path):
    from llmserve.predictor import data
    p = tmp_path / "d.json"
    p.write_bytes('[{"prompt_text": "\xff", "output_sizes": [1]}]'.encode("latin-1"))
    with pytest.raises(ValueError, match="d.json, line 1: not UTF-8"):
        data.from_castillo(str(p), data.tokenizer_for("tiny"))


# ---- datasets by name ----------------------------------------------------------------------
def test_workload_path_by_dataset_name_and_explicit_override(tmp_path, monkeypatch):
    from llmserve.data import registry
    monkeypatch.setenv("LLMSERVE_DATA", str(tmp_path))
    w = {"kind": "azure_csv", "dataset": "azure_conv_2023", "path": ""}
    with pytest.raises(registry.DatasetMissing) as e:
        loaders.workload_path(w)
    assert ("'azure_conv_2023'" in str(e.value) and "python scripts/fetch_data.py "
            "--config=configs/data.py --config.names=azure_conv_2023" in str(e.value))
    (tmp_path / "azure_conv_2023.csv").write_text("x")      # the wrong size: a cut-off copy
    with pytest.raises(registry.DatasetMissing, match="1 bytes, expected 719,188"):
        loaders.workload_path(w)
    own = _write(tmp_path, "mine.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n")
    assert loaders.workload_path({**w, "path": own}) == own          # the override wins
    with pytest.raises(ValueError, match="is castillo data.*workload.kind=castillo"):
        loaders.workload_path({**w, "dataset": "castillo_llama31_8b_dolly_validate"})
    with pytest.raises(ValueError, match="not a known dataset"):
        loaders.workload_path({**w, "dataset": "azure_2099"})
    with pytest.raises(ValueError, match="workload.dataset"):
        loaders.workload_path({"kind": "azure_csv", "dataset": "", "path": ""})


@pytest.mark.skipif(not os.path.isdir(DATA), reason="shared data not present")
def test_benchmark_workload_by_dataset_name_reads_the_shared_copy(monkeypatch):
    from llmserve.bench import load_workload
    monkeypatch.setenv("LLMSERVE_DATA", DATA)
    reqs, base = load_workload({"workload": {"kind": "azure_csv", "dataset": "azure_conv_2023",
                                             "path": "", "num_requests": 50},
                                "engine": {"max_model_len": 8192}})
    assert len(reqs) == 50 and (reqs[0].prompt_len, reqs[0].output_len) == (374, 44)
