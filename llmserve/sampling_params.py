"""SamplingParams: how one request's tokens are chosen and when it stops. Pure Python."""
from __future__ import annotations

import dataclasses

MAX_TOP_LOGPROBS = 20    # the K the runner computes on device (a static shape)


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0     # 0 = greedy
    top_p: float = 1.0           # in (0, 1]; 1 disables
    top_k: int = -1              # -1 or 0 disables; otherwise keep the k most likely tokens
    seed: int | None = None      # None: derived from the engine seed and the request's index
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: bool = False       # return the log-probability of each chosen token
    # Also return the top_logprobs most likely tokens at each step (0..MAX_TOP_LOGPROBS, 0 =
    # none); asking for them implies logprobs.
    top_logprobs: int = 0
    # Logprobs of the prompt's own tokens (vLLM's prompt_logprobs): None = off; 0 = the
    # logprob of each prompt token given the tokens before it; k > 0 = also the k most likely
    # tokens at each prompt position (k <= MAX_TOP_LOGPROBS). max_tokens may then be 0: the
    # request ends after its prefill, with no output token.
    prompt_logprobs: int | None = None

    def __post_init__(self):
        def bad(field, expected, value):
            raise ValueError(f"SamplingParams.{field} must be {expected}, got {value!r}")
        pl = self.prompt_logprobs
        if pl is not None and (isinstance(pl, bool) or not isinstance(pl, int)
                               or not 0 <= pl <= MAX_TOP_LOGPROBS):
            bad("prompt_logprobs", f"None or an int in [0, {MAX_TOP_LOGPROBS}]", pl)
        least = 0 if pl is not None else 1
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) \
                or self.max_tokens < least:
            bad("max_tokens", "an int >= 1 (0 only with prompt_logprobs set)", self.max_tokens)
        if not isinstance(self.temperature, (int, float)) or not self.temperature >= 0:
            bad("temperature", "a float >= 0", self.temperature)
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            bad("top_p", "a float in (0, 1]", self.top_p)
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < -1:
            bad("top_k", "an int >= -1 (-1 or 0 disables top-k)", self.top_k)
        if self.seed is not None and (not isinstance(self.seed, int) or not 0 <= self.seed < 2**32):
            bad("seed", "None or an int in [0, 2**32)", self.seed)
        try:
            stops = tuple(self.stop_token_ids)
        except TypeError:
            bad("stop_token_ids", "a sequence of non-negative ints", self.stop_token_ids)
        if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in stops):
            bad("stop_token_ids", "a sequence of non-negative ints", self.stop_token_ids)
        object.__setattr__(self, "stop_token_ids", stops)
        for field in ("ignore_eos", "logprobs"):
            if not isinstance(getattr(self, field), bool):
                bad(field, "a bool", getattr(self, field))
        tl = self.top_logprobs
        if isinstance(tl, bool) or not isinstance(tl, int) or not 0 <= tl <= MAX_TOP_LOGPROBS:
            bad("top_logprobs", f"an int in [0, {MAX_TOP_LOGPROBS}]", tl)
        if tl:
            object.__setattr__(self, "logprobs", True)
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "top_p", float(self.top_p))
