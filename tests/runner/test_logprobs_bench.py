"""The logprob cost benchmark runs end to end on a small batch (no timing is asserted): every
variant produces the tokens it should, and the step mode times each variant once."""
from llmserve.runner import logprobs_bench as B


def test_bench_runs_every_variant():
    llm, prompts = B.setup("tiny", 2, 16, 3, 64)
    rows = B.run(llm, prompts, 3, repeats=1)
    assert [r["variant"] for r in rows] == list(B.VARIANTS)
    out = {r["variant"]: r["output_tokens"] for r in rows}
    assert out["prompt_logprobs=1, max_tokens=0"] == 0
    assert all(v == 6 for k, v in out.items() if "max_tokens=0" not in k)
    steps = B.step_times(llm, prompts, 1)
    assert [(r["step"].split(",")[1], r["variant"]) for r in steps] == [
        (" 2 seqs", "none"), (" 2 seqs", "top_logprobs"), (" 2 seqs", "prompt_logprobs=0"),
        (" 2 seqs", "prompt_logprobs=20"), (" 2 seqs", "none"), (" 2 seqs", "top_logprobs")]
    assert all(r["ms"] > 0 for r in steps)
