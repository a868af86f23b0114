"""Request validation, written once: the offline API (LLMEngine.add_request, LLM.generate), the
HTTP server (AsyncLLMEngine) and the Ray driver (RayRouter) all call validate_request, so each
rejects exactly what an engine would, before anything is queued.

Together with SamplingParams' own checks (every field against the int32/float32 it becomes in
the step) a request that passes cannot make a step fail on its values.
"""
from __future__ import annotations

import numpy as np

from llmserve.sampling_params import SamplingParams, short_repr


def _lone_surrogate(text: str) -> int | None:
    for i, ch in enumerate(text):
        if "\ud800" <= ch <= "\udfff":
            return i
    return None


def encode_prompt(tokenizer, text: str, field: str = "prompt") -> list[int]:
    """tokenizer.encode(text), with a message naming `field` for text that is not Unicode
    (a lone surrogate, which JSON's \\ud800 escapes can carry, has no UTF-8 form)."""
    i = _lone_surrogate(text)
    if i is not None:
        raise ValueError(f"{field} holds a lone surrogate U+{ord(text[i]):04X} at character "
                         f"{i}: not valid Unicode text (a surrogate must be half of a pair)")
    return tokenizer.encode(text) if text else []


def validate_request(prompt, sp, *, tokenizer, vocab_size: int,
                     max_model_len: int) -> tuple[list[int], str | None]:
    """-> (prompt token ids, prompt text or None). Raises ValueError naming the field."""
    if not isinstance(sp, SamplingParams):
        raise ValueError(f"sampling_params must be a SamplingParams, got {type(sp).__name__}")
    in_vocab = False        # the vocabulary check already done (numpy input)
    if isinstance(prompt, str):
        text = prompt
        ids = encode_prompt(tokenizer, prompt)
    elif isinstance(prompt, (list, tuple)):
        text = None
        ids = list(prompt)
        # Fast path (builtins run in C; a trace replay validates ~20M tokens); the loop
        # below only runs to find and name a bad token.
        if set(map(type, ids)) - {int}:
            for i, t in enumerate(ids):
                if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
                    raise ValueError(f"prompt token {i} must be an int, got {short_repr(t)}")
            ids = [int(t) for t in ids]
    elif isinstance(prompt, np.ndarray) and prompt.ndim == 1 and prompt.dtype.kind in "iu":
        # A trace replay's prompts: checked in numpy, not by three passes over a list
        # (~50 us per 1,000-token prompt, a tenth of a simulation's wall time).
        text = None
        in_vocab = bool(prompt.size) and prompt.min() >= 0 and prompt.max() < vocab_size
        ids = prompt.tolist()
    else:
        raise ValueError(f"prompt must be a string, a list of token ids or a 1-D integer "
                         f"numpy array, got {type(prompt).__name__}")
    if not ids:
        raise ValueError("prompt is empty: at least one token is required")
    if not in_vocab and (min(ids) < 0 or max(ids) >= vocab_size):
        for i, t in enumerate(ids):
            if not 0 <= t < vocab_size:
                raise ValueError(f"prompt token {i} is {short_repr(t)}, outside the "
                                 f"vocabulary [0, {vocab_size})")
    if len(ids) + sp.max_tokens > max_model_len:
        raise ValueError(f"prompt ({len(ids)} tokens) + max_tokens ({sp.max_tokens}) = "
                         f"{len(ids) + sp.max_tokens} exceeds max_model_len ({max_model_len})")
    return ids, text
