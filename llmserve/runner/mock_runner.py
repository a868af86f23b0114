"""A runner whose outputs can be worked out by hand: token = f(seed, output index)."""
from __future__ import annotations

from llmserve.core.sched_output import RunnerOutput, SchedulerOutput


def mock_token(seed: int, token_index: int, vocab_size: int) -> int:
    return (seed * 1_000_003 + token_index * 7919 + 17) % vocab_size


def mock_prompt_logprob(position: int) -> float:
    """The mock logprob of the prompt token after `position`: distinct per position."""
    return -(position + 1) / 1024


class MockRunner:
    def __init__(self, vocab_size: int = 1000, step_time_s: float = 0.0):
        self.vocab_size = vocab_size
        self.step_time_s = step_time_s
        self.steps: list[SchedulerOutput] = []

    def execute(self, sched_out: SchedulerOutput) -> RunnerOutput:
        self.steps.append(sched_out)
        sampled = {s.req_id: mock_token(s.sampling[3], s.token_index, self.vocab_size)
                   for s in sched_out.scheduled if s.sample}
        # Alternatives, when asked: the chosen token first (with its logprob, 0.0), then the
        # next ids at -1, -2, ...: sorted and consistent with the chosen token, not a
        # distribution.
        tops = {s.req_id: [((sampled[s.req_id] + j) % self.vocab_size, -float(j))
                           for j in range(s.sampling[4])]
                for s in sched_out.scheduled
                if s.sample and len(s.sampling) > 4 and s.sampling[4]}
        return RunnerOutput(sampled, {k: 0.0 for k in sampled}, self.step_time_s, tops,
                            self._prompt_logprobs(sched_out))

    def _prompt_logprobs(self, sched_out: SchedulerOutput) -> dict:
        """Prompt logprobs as the JaxRunner reports them, each a function of its position
        (mock_prompt_logprob), alternatives k ids after the target at -1, -2, ..."""
        out = {}
        for s in sched_out.scheduled:
            k, prompt, count = s.prompt_logprob_rows()
            p0 = s.start_pos
            if count > 0:
                alts = None if not k else [
                    [((prompt[p + 1] + j) % self.vocab_size, -float(j + 1)) for j in range(k)]
                    for p in range(p0, p0 + count)]
                out[s.req_id] = (p0, [mock_prompt_logprob(p) for p in range(p0, p0 + count)],
                                 alts)
        return out
