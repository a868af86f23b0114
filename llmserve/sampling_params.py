"""SamplingParams: how one request's tokens are chosen and when it stops. Pure Python.

Every field is checked against the type it becomes inside the jitted step (the runner packs
ids and counts as int32, seeds as uint32, temperature and top_p as float32), so a value that
passes here cannot overflow or turn non-finite inside a step, where it would fail the whole
batch rather than its own request.
"""
from __future__ import annotations

import dataclasses
import math
import numbers

MAX_TOP_LOGPROBS = 20    # the K the runner computes on device (a static shape)
INT32_MAX = 2**31 - 1
UINT32_LIMIT = 2**32
FLOAT32_MAX = 3.4028234663852886e38


def is_int(v) -> bool:
    """An integer (numpy's included) that is not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_real(v) -> bool:
    """A real number (numpy's included) that is not a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def finite32(v) -> bool:
    """A real number that stays finite as float32."""
    try:
        return is_real(v) and math.isfinite(v) and abs(float(v)) <= FLOAT32_MAX
    except OverflowError:        # an int too large for a float
        return False


def short_repr(value, limit: int = 60) -> str:
    """repr for an error message: cut when long, and never the ValueError Python raises for
    an int over its 4,300-digit str() limit."""
    try:
        shown = repr(value)
    except ValueError:
        if is_int(value):
            return f"an int of about {int(abs(value).bit_length() * 0.30103)} digits"
        return f"a {type(value).__name__} holding such an int"
    if len(shown) > limit:
        shown = shown[:limit - 20] + f"... ({len(shown)} characters)"
    return shown


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
            raise ValueError(f"SamplingParams.{field} must be {expected}, got "
                             f"{short_repr(value)}")

        def int_in(field, lo, hi, expected):
            v = getattr(self, field)
            if not is_int(v) or not lo <= v <= hi:
                bad(field, expected, v)
            object.__setattr__(self, field, int(v))

        pl = self.prompt_logprobs
        if pl is not None:
            int_in("prompt_logprobs", 0, MAX_TOP_LOGPROBS,
                   f"None or an int in [0, {MAX_TOP_LOGPROBS}]")
        least = 0 if pl is not None else 1
        int_in("max_tokens", least, INT32_MAX,
               "an int in [1, 2**31) (0 only with prompt_logprobs set)")
        if not finite32(self.temperature) or not self.temperature >= 0:
            bad("temperature", "a finite float >= 0 (float32 range)", self.temperature)
        if not finite32(self.top_p) or not 0 < self.top_p <= 1:
            bad("top_p", "a float in (0, 1]", self.top_p)
        int_in("top_k", -1, INT32_MAX, "an int in [-1, 2**31) (-1 or 0 disables top-k)")
        if self.seed is not None:
            int_in("seed", 0, UINT32_LIMIT - 1, "None or an int in [0, 2**32)")
        try:
            stops = tuple(self.stop_token_ids)
        except TypeError:
            bad("stop_token_ids", "a sequence of token ids (ints in [0, 2**31))",
                self.stop_token_ids)
        for i, t in enumerate(stops):
            if not is_int(t) or not 0 <= t <= INT32_MAX:
                bad(f"stop_token_ids[{i}]", "a token id (an int in [0, 2**31))", t)
        object.__setattr__(self, "stop_token_ids", tuple(map(int, stops)))
        for field in ("ignore_eos", "logprobs"):
            if not isinstance(getattr(self, field), bool):
                bad(field, "a bool", getattr(self, field))
        int_in("top_logprobs", 0, MAX_TOP_LOGPROBS, f"an int in [0, {MAX_TOP_LOGPROBS}]")
        if self.top_logprobs:
            object.__setattr__(self, "logprobs", True)
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "top_p", float(self.top_p))
