"""Hypothesis strategies for the issue-18 fuzzers: valid, boundary and hostile values for every
request field (huge ints, non-finite floats, wrong types, odd Unicode).

A request is drawn valid field by field, then (3 times in 4) one field is given a boundary or
hostile value: one bad value is what a step must survive, and a request with several would be
refused before it got there.
"""
from hypothesis import strategies as st

INT32 = 2**31
# Boundaries of the types values become in the step (int32 counts, uint32 seeds, float32)
# and of Python's own limits, plus plain wrong values.
# The overflow edges first: hypothesis draws a sampled_from's early entries most often.
BOUNDARY_INTS = [INT32, INT32 - 1, 2**32, 2**32 - 1, 2**63, -INT32, 10**30, -(2**63),
                 -(10**30), 0, 1, -1, 2]
HOSTILE_FLOATS = [float("inf"), float("nan"), float("-inf"), 1e39, 3.5e38, -1e39, 1e-45,
                  5e-324, -0.0, 1e308]
WRONG_TYPES = [None, True, False, "1", "", [], [1], {}, {"a": 1}, "\ud800"]
ODD_TEXT = ["", "\x00", "\ud800", "a\udfffb", "\U0001f600" * 3, "\u202e\u0301", "\ufeff",
            "x" * 40, "é", "\n\r\t", "null", "{}"]

odd_text = st.one_of(st.sampled_from(ODD_TEXT), st.text(max_size=12))
wrong_type = st.one_of(st.none(), st.booleans(), odd_text,
                       st.lists(st.integers(0, 5), max_size=3),
                       st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 3),
                                       max_size=2))
hostile_int = st.one_of(st.sampled_from(BOUNDARY_INTS), st.integers(-(10**20), 10**20),
                        st.floats(allow_nan=True), wrong_type)
hostile_real = st.one_of(st.sampled_from(HOSTILE_FLOATS), st.sampled_from(BOUNDARY_INTS),
                         st.floats(allow_nan=True), wrong_type)
hostile_bool = st.one_of(st.integers(-2, 2), wrong_type)


def token_ids(vocab: int = 259, valid: bool = True):
    tok = st.integers(0, vocab - 1) if valid else st.one_of(
        st.integers(0, vocab - 1), st.sampled_from(BOUNDARY_INTS), st.just(vocab))
    return st.lists(tok, min_size=0 if not valid else 1, max_size=10)


def request(required: dict, optional: dict, hostile: dict):
    """Valid required and optional fields; then maybe one field (or a key no schema has)
    given a hostile value."""
    base = st.fixed_dictionaries(required, optional=optional)
    names = sorted(hostile)

    def spoil(d):
        one = st.sampled_from(names).flatmap(lambda k: hostile[k].map(lambda v: {**d, k: v}))
        return st.one_of(st.just(d), one, one, one)
    return base.flatmap(spoil)


def _sampling():
    valid = {"max_tokens": st.integers(1, 6), "temperature": st.floats(0.0, 2.0),
             "top_p": st.floats(0.01, 1.0), "top_k": st.integers(-1, 300),
             "seed": st.integers(0, 2**32 - 1), "stop_token_ids": token_ids(),
             "ignore_eos": st.booleans()}
    hostile = {"max_tokens": hostile_int, "temperature": hostile_real, "top_p": hostile_real,
               "top_k": hostile_int, "seed": hostile_int,
               "stop_token_ids": st.one_of(token_ids(valid=False), wrong_type),
               "ignore_eos": hostile_bool}
    return valid, hostile


def _http_sampling():
    valid, hostile = _sampling()
    valid.update({"stop": st.one_of(st.text(min_size=1, max_size=4),
                                    st.lists(st.text(min_size=1, max_size=4), max_size=3)),
                  "stream": st.booleans(), "n": st.just(1), "user": st.text(max_size=8),
                  "presence_penalty": st.just(0.0), "frequency_penalty": st.just(0.0)})
    hostile.update({"stop": st.one_of(odd_text, st.lists(odd_text, max_size=10), wrong_type),
                    "stream": hostile_bool, "n": hostile_int, "user": st.one_of(odd_text,
                                                                                wrong_type),
                    "presence_penalty": hostile_real, "frequency_penalty": hostile_real,
                    "logit_bias": st.one_of(st.dictionaries(odd_text, hostile_real,
                                                            max_size=2), wrong_type),
                    "stream_options": st.one_of(st.fixed_dictionaries(
                        {}, optional={"include_usage": st.one_of(st.booleans(), wrong_type),
                                      "x": st.integers()}), wrong_type),
                    "unknown_field": st.integers()})
    return valid, hostile


def completion_bodies():
    valid, hostile = _http_sampling()
    valid.update({"logprobs": st.integers(0, 5), "echo": st.booleans()})
    hostile.update({"logprobs": hostile_int, "best_of": hostile_int, "echo": hostile_bool,
                    "suffix": odd_text, "model": odd_text,
                    "prompt": st.one_of(odd_text, token_ids(valid=False),
                                        st.lists(odd_text, max_size=2),
                                        st.lists(token_ids(valid=False), max_size=2),
                                        wrong_type)})
    prompt = st.one_of(st.text(min_size=1, max_size=10), token_ids(),
                       st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=1))
    return request({"model": st.just("tiny"), "prompt": prompt}, valid, hostile)


def chat_bodies():
    text = st.text(max_size=10)
    message = st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant", "developer"]),
         "content": st.one_of(text, st.none(), st.lists(st.fixed_dictionaries(
             {"type": st.just("text"), "text": text}), max_size=2))})
    bad_message = st.fixed_dictionaries(
        {"role": st.one_of(st.sampled_from(["user", "tool"]), odd_text),
         "content": st.one_of(odd_text, wrong_type, st.lists(st.fixed_dictionaries(
             {"type": st.one_of(st.just("text"), odd_text),
              "text": st.one_of(odd_text, wrong_type)}), max_size=2))},
        optional={"name": odd_text, "tool_calls": st.just([])})
    valid, hostile = _http_sampling()
    valid.update({"max_completion_tokens": st.integers(1, 6), "logprobs": st.booleans()})
    hostile.update({"max_completion_tokens": hostile_int, "logprobs": hostile_bool,
                    "top_logprobs": hostile_int, "model": odd_text,
                    "messages": st.one_of(st.lists(bad_message, max_size=3), wrong_type)})
    return request({"model": st.just("tiny"),
                    "messages": st.lists(message, min_size=1, max_size=3)}, valid, hostile)


def sampling_kwargs():
    """SamplingParams(**kw) arguments: every field, valid to hostile."""
    valid, hostile = _sampling()
    valid.update({"logprobs": st.booleans(), "top_logprobs": st.integers(0, 20),
                  "prompt_logprobs": st.one_of(st.none(), st.integers(0, 20))})
    hostile.update({"logprobs": hostile_bool, "top_logprobs": hostile_int,
                    "prompt_logprobs": hostile_int, "max_tokens": st.one_of(
                        hostile_int, st.just(0))})
    return request({}, valid, hostile)


def prompts():
    """LLM.generate's first argument: one prompt or a batch, valid to hostile."""
    return st.one_of(st.text(min_size=1, max_size=10), token_ids(),
                     st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=3),
                     odd_text, token_ids(valid=False), st.lists(odd_text, max_size=2),
                     st.lists(token_ids(valid=False), max_size=2), wrong_type)
