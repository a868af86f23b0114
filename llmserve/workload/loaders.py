"""Workload loaders: Azure trace CSV, ShareGPT / Alpaca / Dolly / CASTILLO JSON, our JSONL logs.

Every error names the file, the line and the field; a file that is not UTF-8 names the line of
the first bad byte; a length beyond MAX_TOKENS (no model's context) is rejected, not served.
A workload section names its file as a registered dataset (`workload.dataset`, see
llmserve.data) or as an explicit `workload.path`: `workload_path`. Text datasets have no
arrival times: they come back with arrival_s = 0 and get arrivals from `synthetic` (see
`load_workload`).
Text is turned into token ids by `tokenizer.encode` (default: the byte-level tokenizer of the
dummy models, so lengths are in bytes; pass a checkpoint's tokenizer for real token counts).
"""
from __future__ import annotations

import csv
import datetime
import io
import itertools
import json
import os

import numpy as np

from llmserve.workload import WorkloadRequest

# CASTILLO marks a generation that hit its 15,000-token cap with 15001: not a real length.
CASTILLO_CAP = 15001
KINDS = ("azure_csv", "sharegpt", "alpaca", "castillo", "jsonl")
# Longer than any model's context (and than int32 token counts can sum to in a batch): a
# ContextTokens of 10^12 is a corrupt row, not a request.
MAX_TOKENS = 10_000_000


def _err(path, line, field, msg) -> ValueError:
    where = f"{path}, line {line}" if line is not None else str(path)
    return ValueError(f"{where}: field {field!r}: {msg}")


def _check_file(path: str) -> None:
    if not os.path.isfile(path):
        raise ValueError(f"workload file {path!r} does not exist")


def read_text(path: str) -> str:
    """The file as UTF-8 text; a ValueError naming the file and the line of the first byte
    that does not decode."""
    _check_file(path)
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path}, line {line}: not UTF-8 text (byte {raw[e.start]:#04x} at "
                         f"offset {e.start}); save the file as UTF-8") from None


def _int_field(path, line, field, raw, lo=0, hi=MAX_TOKENS) -> int:
    if isinstance(raw, str) and raw.isdigit() and len(raw) > len(str(hi)):  # int() refuses
        raise _err(path, line, field, f"a {len(raw)}-digit value is more than {hi:,} "  # 4,300+
                   "tokens, longer than any model's context: a corrupt row")  # digits itself
    try:
        v = int(raw)
    except (TypeError, ValueError, OverflowError):
        raise _err(path, line, field, f"expected an int, got {raw!r:.60}") from None
    if isinstance(raw, bool) or v < lo or (isinstance(raw, float) and raw != v):
        raise _err(path, line, field, f"expected an int >= {lo}, got {raw!r:.60}")
    if v > hi:
        raise _err(path, line, field, f"{v:,} is more than {hi:,} tokens, longer than any "
                   "model's context: a corrupt row")
    return v


def workload_path(w: dict) -> str:
    """The file of a workload section: `path` when set (an explicit override), else the
    registered dataset `dataset` in the data directory (llmserve.data; a missing one is an
    error that names the fetch command). The dataset's format must be what `kind` reads."""
    from llmserve.data import registry
    kind, path, name = w.get("kind", ""), w.get("path") or "", w.get("dataset") or ""
    if path:
        _check_file(path)
        return path
    if kind == "jsonl":
        raise ValueError("workload.kind='jsonl' reads an llmserve trace log: set workload.path")
    if not name:
        raise ValueError(f"workload.kind={kind!r} reads a file: set workload.dataset to a "
                         f"dataset name (one of {', '.join(registry.DATASETS)}) or "
                         "workload.path to a file")
    if name not in registry.DATASETS:
        raise ValueError(f"workload.dataset={name!r} is not a known dataset: one of "
                         f"{', '.join(registry.DATASETS)}")
    fmt = registry.DATASETS[name].format
    reads = {"azure_resampled": "azure_csv"}.get(kind, kind)
    if reads in KINDS and reads != fmt:
        raise ValueError(f"workload.dataset={name!r} is {fmt} data, but workload.kind={kind!r}"
                         f" reads {reads}: set workload.kind={fmt}")
    return registry.dataset_path(name)


# ---- Azure LLM inference trace ---------------------------------------------------------------
def load_azure_csv(path: str, limit: int | None = None) -> list[WorkloadRequest]:
    """`TIMESTAMP,ContextTokens,GeneratedTokens`; arrivals relative to the first row."""
    _check_file(path)
    out: list[WorkloadRequest] = []
    t0 = None
    with io.StringIO(read_text(path), newline="") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        want = ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]
        if header is None or [h.strip() for h in header] != want:
            raise _err(path, 1, "header", f"expected {','.join(want)}, got {header!r}")
        for line, row in enumerate(rows, start=2):
            if limit is not None and len(out) >= limit:
                break
            if not row:
                continue
            if len(row) != 3:
                raise _err(path, line, "row", f"expected 3 fields, got {len(row)}")
            try:
                # Python parses at most 6 fractional digits; the trace has 7.
                ts = datetime.datetime.fromisoformat(row[0].strip()[:26]).timestamp()
            except ValueError:
                raise _err(path, line, "TIMESTAMP",
                           f"expected 'YYYY-MM-DD HH:MM:SS.ffffff', got {row[0]!r}") from None
            if t0 is None:
                t0 = ts
            arrival = ts - t0
            if out and arrival < out[-1].arrival_s:
                raise _err(path, line, "TIMESTAMP", "rows must be sorted by time")
            p = _int_field(path, line, "ContextTokens", row[1].strip(), lo=1)
            o = _int_field(path, line, "GeneratedTokens", row[2].strip(), lo=1)
            out.append(WorkloadRequest(arrival, p, o))
    return out


# ---- JSON datasets -----------------------------------------------------------------------------
def _json_records(path: str):
    """Yield (record, line) for each element of a top-level JSON array, so errors name lines."""
    text = read_text(path)
    dec = json.JSONDecoder()
    n = len(text)

    def skip_ws(i):
        while i < n and text[i] in " \t\r\n":
            i += 1
        return i

    def line_of(i):
        return text.count("\n", 0, i) + 1

    i = skip_ws(0)
    if i >= n or text[i] != "[":
        raise _err(path, line_of(i), "<root>", "expected a JSON array of records")
    i = skip_ws(i + 1)
    if i < n and text[i] == "]":
        return
    last_line, last_i = 1, 0
    while True:
        try:
            obj, end = dec.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise _err(path, e.lineno, "<json>", f"does not parse: {e.msg}") from None
        last_line += text.count("\n", last_i, i)    # incremental: no quadratic recount
        last_i = i
        yield obj, last_line
        i = skip_ws(end)
        if i < n and text[i] == ",":
            i = skip_ws(i + 1)
            continue
        if i < n and text[i] == "]":
            return
        raise _err(path, line_of(i), "<json>", "expected ',' or ']' between records")


def _str_field(path, line, rec, field, required=True) -> str:
    if not isinstance(rec, dict):
        raise _err(path, line, "<record>", f"expected a JSON object, got {type(rec).__name__}")
    v = rec.get(field)
    if v is None and not required:
        return ""
    if not isinstance(v, str):
        raise _err(path, line, field, f"expected a string, got {v!r:.60}")
    return v


def _encoder(tokenizer):
    """-> (encode prompt, count output tokens): an output carries no BOS."""
    if tokenizer is None:
        from llmserve.tokenizer import ByteTokenizer
        tokenizer = ByteTokenizer()
    bos = tokenizer.bos_token_id if getattr(tokenizer, "add_bos", False) else None

    def out_len(text):
        ids = tokenizer.encode(text)
        return len(ids) - (1 if ids and bos is not None and ids[0] == bos else 0)
    return tokenizer.encode, out_len


def load_sharegpt(path: str, tokenizer=None, limit: int | None = None) -> list[WorkloadRequest]:
    """`[{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}]}]`.

    Each record gives one request: its first human turn and the reply that follows (as the
    vLLM serving benchmark samples ShareGPT). Records without such a pair are skipped.
    """
    enc, out_len = _encoder(tokenizer)
    out = []
    for rec, line in _json_records(path):
        if limit is not None and len(out) >= limit:
            break
        if not isinstance(rec, dict):
            raise _err(path, line, "<record>", "expected a JSON object")
        conv = rec.get("conversations")
        if not isinstance(conv, list):
            raise _err(path, line, "conversations", f"expected a list of turns, got {conv!r:.60}")
        for j, turn in enumerate(conv):
            if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) \
                    or turn.get("from") not in ("human", "gpt", "user", "assistant", "system"):
                raise _err(path, line, f"conversations[{j}]",
                           "expected {'from': 'human'|'gpt', 'value': str}")
        pair = next(((a["value"], b["value"]) for a, b in itertools.pairwise(conv)
                     if a["from"] in ("human", "user") and b["from"] in ("gpt", "assistant")),
                    None)
        if pair is None:
            continue
        ids = enc(pair[0])
        n_out = out_len(pair[1])
        if not ids or n_out < 1:
            continue
        out.append(WorkloadRequest(0.0, len(ids), n_out, ids, pair[0]))
    return out


def load_alpaca(path: str, tokenizer=None, limit: int | None = None) -> list[WorkloadRequest]:
    """Alpaca `{instruction, input, output}` or Dolly `{instruction, context, response}`."""
    enc, out_len = _encoder(tokenizer)
    out = []
    for rec, line in _json_records(path):
        if limit is not None and len(out) >= limit:
            break
        instr = _str_field(path, line, rec, "instruction")
        ctx_key = "context" if "context" in rec else "input"
        ctx = _str_field(path, line, rec, ctx_key, required=False)
        ans_key = "response" if "response" in rec else "output"
        ans = _str_field(path, line, rec, ans_key)
        prompt = f"{instr}\n{ctx}" if ctx else instr
        ids = enc(prompt)
        n_out = out_len(ans)
        if n_out < 1:
            continue
        out.append(WorkloadRequest(0.0, len(ids), n_out, ids, prompt))
    return out


def load_castillo(path: str, tokenizer=None, limit: int | None = None,
                  seed: int = 0) -> list[WorkloadRequest]:
    """CASTILLO: `prompt_text`, `input_size` and `output_sizes` (10 sampled generations).

    One of the (non-capped) sampled lengths is drawn per prompt with `seed`, so the workload
    keeps the real per-prompt variability. Prompt length is the dataset's `input_size` (real
    Llama-3.1 tokens) unless a tokenizer is given.
    """
    rng = np.random.default_rng(seed)
    out = []
    for rec, line in _json_records(path):
        if limit is not None and len(out) >= limit:
            break
        text = _str_field(path, line, rec, "prompt_text")
        sizes = rec.get("output_sizes")
        if not isinstance(sizes, list) or not sizes:
            raise _err(path, line, "output_sizes", f"expected a non-empty list of ints, "
                       f"got {sizes!r:.60}")
        sizes = [_int_field(path, line, "output_sizes", s, lo=0) for s in sizes]
        ok = [s for s in sizes if 0 < s < CASTILLO_CAP]
        if not ok:
            continue
        n_out = int(ok[rng.integers(len(ok))])
        if tokenizer is not None:
            ids = tokenizer.encode(text)
            out.append(WorkloadRequest(0.0, len(ids), n_out, ids, text))
        else:
            p = _int_field(path, line, "input_size", rec.get("input_size"), lo=1)
            out.append(WorkloadRequest(0.0, p, n_out, None, text))
    return out


def load_jsonl(path: str, limit: int | None = None,
               skip_bad_lines: bool = False) -> list[WorkloadRequest]:
    """llmserve's own request logs (llmserve.workload.trace_log), arrivals from 0."""
    _check_file(path)
    from llmserve.workload.trace_log import read_trace_log
    recs = read_trace_log(path, skip_bad_lines=skip_bad_lines)
    out = []
    for r in recs:
        if limit is not None and len(out) >= limit:
            break
        if r["output_len"] < 1 or r["prompt_len"] < 1:
            continue
        out.append(WorkloadRequest(float(r["arrival_s"]), r["prompt_len"], r["output_len"],
                                   list(r["prompt_token_ids"]), r["prompt_text"]))
    out.sort(key=lambda w: w.arrival_s)
    if out:
        t0 = out[0].arrival_s
        for w in out:
            w.arrival_s -= t0
    return out


def load(kind: str, path: str, *, tokenizer=None, limit: int | None = None,
         seed: int = 0) -> list[WorkloadRequest]:
    """Dispatch on `kind` (one of KINDS)."""
    if kind == "azure_csv":
        return load_azure_csv(path, limit)
    if kind == "sharegpt":
        return load_sharegpt(path, tokenizer, limit)
    if kind == "alpaca":
        return load_alpaca(path, tokenizer, limit)
    if kind == "castillo":
        return load_castillo(path, tokenizer, limit, seed)
    if kind == "jsonl":
        return load_jsonl(path, limit)
    raise ValueError(f"workload.kind must be one of {KINDS} (or 'synthetic'), got {kind!r}")
