"""Length datasets: prompts (token ids) with every observed output length of each prompt.

Sources: our JSONL trace logs, CASTILLO JSON (10 sampled lengths per prompt; 15001 marks a
run that hit the generation cap and is dropped), Dolly/Alpaca JSON (the response's length
under the configured tokenizer), ShareGPT JSON (first human turn -> first reply). Identical
prompts are grouped, and the train/validation/test split is by prompt (a hash of its token
ids), so the same prompt never lands on two sides. A source is a registered dataset's name
(llmserve.data: the file comes from the data directory, a missing one is an error naming the
fetch command) or an explicit `KIND:PATH_GLOB`. Synthetic data exists only for tests and
demos (`synthetic_records`, config `data.synthetic`); it never stands in for a missing file.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
from collections.abc import Sequence

import numpy as np

CASTILLO_CAP = 15001


@dataclasses.dataclass
class LengthDataset:
    prompts: list[list[int]]            # token ids per prompt
    lengths: list[np.ndarray]           # observed output lengths per prompt (>= 1 each)
    texts: list[str | None]
    sources: list[str]

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def num_samples(self) -> int:
        return int(sum(len(x) for x in self.lengths))

    def subset(self, idx) -> LengthDataset:
        idx = list(idx)
        return LengthDataset([self.prompts[i] for i in idx], [self.lengths[i] for i in idx],
                             [self.texts[i] for i in idx], [self.sources[i] for i in idx])

    def padded_lengths(self) -> tuple[np.ndarray, np.ndarray]:
        """-> (lengths [N, S] float32, mask [N, S]) with S the most samples of any prompt."""
        s = max((len(x) for x in self.lengths), default=1)
        out = np.ones((len(self), s), np.float32)
        mask = np.zeros((len(self), s), np.float32)
        for i, x in enumerate(self.lengths):
            out[i, :len(x)] = x
            mask[i, :len(x)] = 1
        return out, mask

    def per_sample(self) -> tuple[np.ndarray, np.ndarray]:
        """-> (prompt index, length) of every sample."""
        idx = np.concatenate([np.full(len(x), i) for i, x in enumerate(self.lengths)])
        return idx.astype(np.int64), np.concatenate(self.lengths).astype(np.float64)


def concat(datasets: Sequence[LengthDataset]) -> LengthDataset:
    out = LengthDataset([], [], [], [])
    for d in datasets:
        out.prompts += d.prompts
        out.lengths += d.lengths
        out.texts += d.texts
        out.sources += d.sources
    return out


def tokenizer_for(model: str):
    """The serving model's tokenizer (a preset name, checkpoint dir, .gguf file or packaged
    model name; no weights loaded)."""
    from llmserve.model.config import get_preset
    from llmserve.model.gguf_loader import resolve_checkpoint
    from llmserve.tokenizer import load_tokenizer
    path = resolve_checkpoint(model)
    if path is not None:
        from llmserve.model import loader
        return load_tokenizer(path, loader.load_config(path))
    return load_tokenizer(None, get_preset(model))


def _group(items, source: str) -> LengthDataset:
    """items: (ids, text, [lengths]) -> one entry per distinct prompt."""
    by_key: dict[tuple, int] = {}
    ds = LengthDataset([], [], [], [])
    for ids, text, lens in items:
        lens = [int(x) for x in lens]
        if not ids or not lens:
            continue
        key = tuple(ids)
        if key in by_key:
            i = by_key[key]
            ds.lengths[i] = np.concatenate([ds.lengths[i], np.asarray(lens, np.float32)])
            continue
        by_key[key] = len(ds)
        ds.prompts.append(list(ids))
        ds.lengths.append(np.asarray(lens, np.float32))
        ds.texts.append(text)
        ds.sources.append(source)
    return ds


def _load_json_list(path: str) -> list:
    from llmserve.workload.loaders import read_text
    if not os.path.isfile(path):
        raise ValueError(f"data file {path!r} does not exist")
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def _field(rec, key, path, i, kind):
    if not isinstance(rec, dict) or key not in rec or not isinstance(rec[key], kind):
        raise ValueError(f"{path}, record {i}: field {key!r} missing or not "
                         f"{getattr(kind, '__name__', kind)}")
    return rec[key]


def from_trace_log(path: str, finish_reasons: Sequence[str] = ("stop",),
                   skip_bad_lines: bool = False) -> LengthDataset:
    """Requests that ended for one of `finish_reasons` (a `length` stop only bounds the
    true length, so it is left out by default)."""
    from llmserve.workload.trace_log import read_trace_log
    recs = read_trace_log(path, skip_bad_lines=skip_bad_lines)
    items = [(r["prompt_token_ids"], r["prompt_text"], [r["output_len"]]) for r in recs
             if r["finish_reason"] in finish_reasons and r["output_len"] >= 1]
    return _group(items, "trace_log")


def from_castillo(path: str, tokenizer, cap: int = CASTILLO_CAP) -> LengthDataset:
    data = _load_json_list(path)
    items = []
    for i, rec in enumerate(data):
        text = _field(rec, "prompt_text", path, i, str)
        sizes = _field(rec, "output_sizes", path, i, list)
        lens = [int(s) for s in sizes if int(s) < cap and int(s) >= 1]
        items.append((tokenizer.encode(text), text, lens))
    name = data[0].get("dataset", "castillo") if data and isinstance(data[0], dict) else "castillo"
    return _group(items, f"castillo/{name}")


def _response_len(tokenizer, text: str) -> int:
    ids = tokenizer.encode(text)
    if ids and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id:
        ids = ids[1:]
    return len(ids)


def from_instruct_json(path: str, tokenizer) -> LengthDataset:
    """Dolly ({instruction, context, response}) or Alpaca ({instruction, input, output})."""
    data = _load_json_list(path)
    items = []
    for i, rec in enumerate(data):
        inst = _field(rec, "instruction", path, i, str)
        extra = rec.get("context", rec.get("input", "")) or ""
        resp_key = "response" if "response" in rec else "output"
        resp = _field(rec, resp_key, path, i, str)
        text = f"{inst}\nContext: {extra}" if extra else inst
        items.append((tokenizer.encode(text), text, [_response_len(tokenizer, resp)]))
    return _group(items, os.path.basename(path))


def from_sharegpt(path: str, tokenizer) -> LengthDataset:
    data = _load_json_list(path)
    items = []
    for i, rec in enumerate(data):
        turns = _field(rec, "conversations", path, i, list)
        human = next((t for t in turns if isinstance(t, dict) and t.get("from") == "human"), None)
        if human is None:
            continue
        after = turns[turns.index(human) + 1:]
        reply = next((t for t in after if isinstance(t, dict) and t.get("from") == "gpt"), None)
        if reply is None:
            continue
        text = str(human.get("value", ""))
        out_len = _response_len(tokenizer, str(reply["value"]))
        items.append((tokenizer.encode(text), text, [out_len]))
    return _group(items, os.path.basename(path))


# registry format -> the loader kind below
_KIND_OF_FORMAT = {"castillo": "castillo", "alpaca": "instruct", "sharegpt": "sharegpt"}


def source_files(spec: str) -> list[tuple[str, str]]:
    """A source spec -> [(kind, path)]: a dataset or group name (llmserve.data) or
    `kind:path_or_glob`. A missing dataset or an unmatched glob is a ValueError."""
    from llmserve.data import registry
    kind, sep, pattern = spec.partition(":")
    if not sep:
        out = []
        for f in registry.resolve(spec):
            if f.format not in _KIND_OF_FORMAT:
                raise ValueError(f"data source {spec!r}: dataset {f.name!r} is {f.format} "
                                 "data, with no prompt text to learn lengths from")
            out.append((_KIND_OF_FORMAT[f.format], registry.dataset_path(f.name)))
        return out
    paths = sorted(glob.glob(os.path.expanduser(pattern)))
    if not paths:
        raise ValueError(f"data source {spec!r}: no file matches {pattern!r}")
    return [(kind, p) for p in paths]


def load_sources(specs: Sequence[str], tokenizer) -> LengthDataset:
    """Specs: dataset names (castillo, alpaca/dolly = instruct, sharegpt formats) or
    `kind:path_or_glob` with kind castillo | instruct | sharegpt | trace_log."""
    loaders = {"castillo": lambda p: from_castillo(p, tokenizer),
               "instruct": lambda p: from_instruct_json(p, tokenizer),
               "sharegpt": lambda p: from_sharegpt(p, tokenizer),
               "trace_log": from_trace_log}
    parts = []
    for spec in specs:
        kind, sep, _ = spec.partition(":")
        if sep and kind not in loaders:
            raise ValueError(f"data source {spec!r} must be a dataset name or KIND:PATH with "
                             f"KIND one of {sorted(loaders)}")
        parts += [loaders[k](p) for k, p in source_files(spec)]
    return concat(parts)


def split_by_prompt(ds: LengthDataset, fractions: Sequence[float], seed: int = 0
                    ) -> list[LengthDataset]:
    """Deterministic split by a hash of each prompt's token ids: fractions sum to 1."""
    if abs(sum(fractions) - 1) > 1e-6 or any(f < 0 for f in fractions):
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {list(fractions)}")
    edges = np.cumsum(fractions)[:-1]
    sides: list[list[int]] = [[] for _ in fractions]
    for i, ids in enumerate(ds.prompts):
        h = hashlib.sha1(f"{seed}:".encode() + np.asarray(ids, np.int64).tobytes()).digest()
        u = int.from_bytes(h[:8], "little") / 2**64
        sides[int(np.searchsorted(edges, u, side="right"))].append(i)
    return [ds.subset(s) for s in sides]


# ---- synthetic data: lengths that depend on the prompt ------------------------------------
_TASKS = (("Answer yes or no: is {} a {}?", 4, 0.3),
          ("Name one {} related to {}.", 12, 0.4),
          ("Summarize the history of {} in the {} in a paragraph.", 120, 0.3),
          ("Write a detailed essay on {} and {} with examples.", 700, 0.25),
          ("List ten facts about {} for a {} audience.", 260, 0.3))
_WORDS = ("rivers", "jazz", "physics", "tea", "bridges", "chess", "owls", "glass", "markets",
          "poetry", "volcanoes", "trains", "coral", "bread", "satellites", "maps")


def synthetic_records(n: int, tokenizer, seed: int = 0) -> list[dict]:
    """Trace records whose output length is set by the prompt's task (log-normal noise)."""
    from llmserve.workload.trace_log import make_record
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        tpl, median, spread = _TASKS[rng.integers(len(_TASKS))]
        text = tpl.format(*rng.choice(_WORDS, 2, replace=False))
        length = max(1, round(float(median * np.exp(spread * rng.standard_normal()))))
        out.append(make_record(f"syn-{i}", tokenizer.encode(text), length, prompt_text=text,
                               finish_reason="stop", arrival_s=float(i)))
    return out
