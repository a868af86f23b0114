"""Output-length predictors: what the length-predictive scheduler knows about a request.

The scheduler calls `predict(requests)` once per step on the requests that arrived since the
last step (a batch), and writes the results to `predicted_num_output_tokens` and
`predicted_spread` before they enter the waiting queue. Specs (`create_predictor`):
  "none"                      no predictor
  "oracle"                    the true length
  "noisy_oracle:REL[:SEED]"   the true length x exp(sigma z), sigma = log(1 + REL), z ~ N(0, 1)
                              drawn per request id (so the same request gets the same error
                              under every policy)
  "constant:N"                N for everyone
  "checkpoint:DIR"            a trained ensemble (llmserve.predictor.serve, imported lazily)
The true length is `request.true_num_output_tokens` when the workload knows it (trace replay,
simulator), else `sampling_params.max_tokens`, which is exact for ignore_eos requests.
Predictions are clipped to [1, cap]: cap is the client's `max_tokens`, except when the workload
forced the length (`true_num_output_tokens` set: a trace replay sets max_tokens to the true length
to make the request stop there), where clipping at max_tokens would hand every predictor the
true length as an upper bound; there the cap is what the model allows, max_model_len - prompt.
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Protocol

from llmserve.core.request import Request

PREDICTOR_KINDS = ("none", "oracle", "noisy_oracle", "constant", "checkpoint")
PREDICTOR_SPEC_HELP = ("'none', 'oracle', 'noisy_oracle:REL_ERROR[:SEED]', 'constant:N' or "
                       "'checkpoint:DIR'")


class LengthPredictorProtocol(Protocol):
    def predict(self, requests: Sequence[Request]) -> tuple[Sequence[float], Sequence[float]]:
        """-> (mean, spread) in output tokens, one of each per request."""


def true_length(req: Request) -> int:
    t = req.true_num_output_tokens
    return req.sampling_params.max_tokens if t is None else t


class OraclePredictor:
    def predict(self, requests):
        return [float(true_length(r)) for r in requests], [0.0] * len(requests)


class ConstantPredictor:
    def __init__(self, value: float):
        self.value = float(value)

    def predict(self, requests):
        return [self.value] * len(requests), [0.0] * len(requests)


def _std_normal(seed: int, key: str) -> float:
    """A standard normal draw that depends only on (seed, key): Box-Muller on two hashes."""
    h1 = zlib.crc32(f"{seed}/{key}/a".encode())
    h2 = zlib.crc32(f"{seed}/{key}/b".encode())
    u1 = (h1 + 0.5) / 2**32
    u2 = (h2 + 0.5) / 2**32
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


class NoisyOraclePredictor:
    """True length with multiplicative log-normal error: one sigma is a factor (1 + rel_error)."""

    def __init__(self, rel_error: float, seed: int = 0):
        if not rel_error >= 0:
            raise ValueError(f"noisy_oracle rel_error must be >= 0, got {rel_error!r}")
        self.rel_error = float(rel_error)
        self.seed = int(seed)
        self.sigma = math.log1p(self.rel_error)

    def predict(self, requests):
        means = [true_length(r) * math.exp(self.sigma * _std_normal(self.seed, r.request_id))
                 for r in requests]
        return means, [m * self.rel_error for m in means]


class CheckpointPredictor:
    """Adapter over a trained llmserve.predictor checkpoint (jax imported only here)."""

    def __init__(self, path: str):
        from llmserve.predictor.serve import LengthPredictor
        self.model = LengthPredictor.load(path)

    def predict(self, requests):
        out = self.model.predict([r.prompt_token_ids for r in requests])
        spread = (out.upper - out.lower) / 2.0
        return [float(x) for x in out.mean], [float(x) for x in spread]


def parse_predictor_spec(spec: str) -> tuple[str, tuple]:
    """Validate a spec -> (kind, args). Raises ValueError naming the knob and the forms."""
    def bad(why=""):
        raise ValueError(f"predictor must be one of {PREDICTOR_SPEC_HELP}, got {spec!r}{why}")
    if not isinstance(spec, str):
        bad()
    kind, _, rest = spec.partition(":")
    parts = rest.split(":") if rest else []
    if kind in ("none", "oracle"):
        if parts:
            bad(f" ({kind} takes no argument)")
        return kind, ()
    if kind == "noisy_oracle":
        if not 1 <= len(parts) <= 2:
            bad(" (noisy_oracle needs REL_ERROR and optionally SEED)")
        try:
            rel = float(parts[0])
            seed = int(parts[1]) if len(parts) == 2 else 0
        except ValueError:
            bad(" (REL_ERROR must be a float, SEED an int)")
        if not rel >= 0:
            bad(" (REL_ERROR must be >= 0)")
        return kind, (rel, seed)
    if kind == "constant":
        try:
            value = float(rest)
        except ValueError:
            bad(" (N must be a number)")
        if not value > 0:
            bad(" (N must be > 0)")
        return kind, (value,)
    if kind == "checkpoint":
        if not rest:
            bad(" (checkpoint needs a directory)")
        return kind, (rest,)
    bad()


def create_predictor(spec: str) -> LengthPredictorProtocol | None:
    kind, args = parse_predictor_spec(spec)
    if kind == "none":
        return None
    if kind == "oracle":
        return OraclePredictor()
    if kind == "noisy_oracle":
        return NoisyOraclePredictor(*args)
    if kind == "constant":
        return ConstantPredictor(*args)
    return CheckpointPredictor(*args)


def _cap(r: Request, max_model_len: int | None) -> float:
    if r.true_num_output_tokens is None or max_model_len is None:
        return float(r.sampling_params.max_tokens)
    return float(max(max_model_len - r.num_prompt_tokens, 1))


def apply_predictions(predictor: LengthPredictorProtocol, requests: list[Request],
                      max_model_len: int | None = None) -> None:
    """One batched call; results clipped to [1, cap] (see the module doc) and written to the
    requests."""
    means, spreads = predictor.predict(requests)
    if len(means) != len(requests) or len(spreads) != len(requests):
        raise ValueError(f"predictor returned {len(means)} means and {len(spreads)} spreads "
                         f"for {len(requests)} requests")
    for r, m, s in zip(requests, means, spreads):
        cap = _cap(r, max_model_len)
        m = float(m)
        if not math.isfinite(m):
            m = cap
        r.predicted_num_output_tokens = min(max(m, 1.0), cap)
        r.predicted_spread = float(s)
