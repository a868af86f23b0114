"""JSONL request log: one finished request per line; the output-length predictor's data.

Record fields: request_id, prompt_token_ids, prompt_text (null when the prompt came as ids),
prompt_len, output_len, finish_reason, arrival_s, ttft_s, e2e_s.

Appends are crash-safe: each record is one `os.write` of a whole line on an O_APPEND file
descriptor, so concurrent writers never interleave within a line, and a crash leaves at most
one partial last line. A writer opened on a file whose last line is partial first ends that
line, so the partial record stays one bad line instead of corrupting the next one. The
reader skips nothing silently: a bad line is a ValueError naming the file and line number,
unless `skip_bad_lines`, in which case the result counts them (`num_bad_lines`).
"""
from __future__ import annotations

import json
import math
import os

FIELDS = ("request_id", "prompt_token_ids", "prompt_text", "prompt_len", "output_len",
          "finish_reason", "arrival_s", "ttft_s", "e2e_s")
_NULLABLE = {"prompt_text", "ttft_s", "e2e_s", "finish_reason"}


class TraceLog(list):
    """The records (dicts) of a trace log, plus how many bad lines were skipped."""

    def __init__(self, records=(), num_bad_lines: int = 0, bad_lines: tuple[int, ...] = ()):
        super().__init__(records)
        self.num_bad_lines = num_bad_lines
        self.bad_lines = bad_lines


def make_record(request_id, prompt_token_ids, output_len, *, prompt_text=None,
                finish_reason=None, arrival_s=0.0, ttft_s=None, e2e_s=None) -> dict:
    ids = [int(t) for t in prompt_token_ids]
    rec = {"request_id": str(request_id), "prompt_token_ids": ids, "prompt_text": prompt_text,
               "prompt_len": len(ids), "output_len": int(output_len),
               "finish_reason": finish_reason,
               "arrival_s": float(arrival_s), "ttft_s": None if ttft_s is None else float(ttft_s),
               "e2e_s": None if e2e_s is None else float(e2e_s)}
    validate_record(rec)
    return rec


def record_from_output(out) -> dict:
    """A trace record from a finished llmserve.outputs.RequestOutput."""
    m = out.metrics
    return make_record(out.request_id, out.prompt_token_ids, m.num_output_tokens,
                       prompt_text=out.prompt, finish_reason=out.finish_reason,
                       arrival_s=m.arrival_time, ttft_s=m.ttft, e2e_s=m.e2e)


def record_from_request(req) -> dict:
    """A trace record from a finished core Request (read by attribute: no import of core)."""
    fr = req.finish_reason
    ttft = None if req.first_token_time is None else req.first_token_time - req.arrival_time
    e2e = None if req.finish_time is None else req.finish_time - req.arrival_time
    return make_record(req.request_id, req.prompt_token_ids, req.num_output_tokens,
                       prompt_text=req.prompt_text, finish_reason=None if fr is None else fr.value,
                       arrival_s=req.arrival_time, ttft_s=ttft, e2e_s=e2e)


_MAX_TOKENS = 10_000_000     # as loaders.MAX_TOKENS (which imports this module)


def validate_record(rec) -> None:
    """ValueError naming the first wrong field."""
    if not isinstance(rec, dict):
        raise ValueError(f"a trace record must be a JSON object, got {type(rec).__name__}")
    missing = [f for f in FIELDS if f not in rec]
    if missing:
        raise ValueError(f"trace record misses field(s) {missing}")
    ids = rec["prompt_token_ids"]
    if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool)
                                            and t >= 0 for t in ids):
        raise ValueError("trace record field 'prompt_token_ids' must be a list of ints >= 0")
    for f in ("prompt_len", "output_len"):
        v = rec[f]
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= _MAX_TOKENS:
            raise ValueError(f"trace record field {f!r} must be an int in [0, {_MAX_TOKENS:,}]"
                             f" (more is no model's context: a corrupt record), got {v!r:.40}")
    if rec["prompt_len"] != len(ids):
        raise ValueError(f"trace record field 'prompt_len' is {rec['prompt_len']} but "
                         f"prompt_token_ids has {len(ids)} ids")
    for f in ("arrival_s", "ttft_s", "e2e_s"):
        v = rec[f]
        if v is None and f in _NULLABLE:
            continue
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise ValueError(f"trace record field {f!r} must be a finite number, got {v!r}")
    for f in ("request_id", "prompt_text", "finish_reason"):
        v = rec[f]
        if not (isinstance(v, str) or (v is None and f in _NULLABLE)):
            raise ValueError(f"trace record field {f!r} must be a string, got {v!r}")


class TraceLogWriter:
    """Appends records to a JSONL file; each `write` is one whole, flushed line."""

    def __init__(self, path: str):
        self.path = os.fspath(path)
        parent = os.path.dirname(self.path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        size = os.fstat(self._fd).st_size
        if size:
            with open(self.path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    os.write(self._fd, b"\n")

    def write(self, record: dict) -> None:
        validate_record(record)
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
        data = line.encode("utf-8")
        written = os.write(self._fd, data)
        while written < len(data):  # a short write (rare: signals, full disk) continues
            written += os.write(self._fd, data[written:])

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def write_trace_log(path: str, records) -> None:
    with TraceLogWriter(path) as w:
        for r in records:
            w.write(r)


def read_trace_log(path: str, skip_bad_lines: bool = False) -> TraceLog:
    """All records of a JSONL trace log (blank lines are ignored)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"trace log {path!r} does not exist")
    records, bad = [], []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw.decode("utf-8"))
                validate_record(rec)
            except (ValueError, UnicodeDecodeError) as e:
                if not skip_bad_lines:
                    reason = (f"truncated last line: {e}" if not raw.endswith(b"\n") else str(e))
                    raise ValueError(f"{path}, line {lineno}: bad trace record ({reason}); "
                                     "pass skip_bad_lines=True to skip such lines") from None
                bad.append(lineno)
                continue
            records.append(rec)
    return TraceLog(records, len(bad), tuple(bad))
