"""Tokenizers: a checkpoint's Hugging Face tokenizer.json, a GGUF file's vocabulary, a
byte-level fallback, or ids only; and the chat template that goes with them.

All implement the same small protocol (`Tokenizer`). `load_tokenizer(path_or_None, cfg)`
picks one:
  * the checkpoint directory has tokenizer.json   -> HFTokenizer (HF `tokenizers` library,
    imported only when such a tokenizer is built)
  * a GGUF file with a byte-level BPE vocabulary (tokenizer.ggml.model 'gpt2') -> HFTokenizer
    built from its tokens, merges and token types (llmserve/gguf_tokenizer.py), as
    transformers' GGUF tokenizer builds it
  * a preset (no directory) whose vocabulary holds the 259 byte-level ids, or a checkpoint
    whose vocabulary is exactly those 259 (e.g. one written by loader.save_hf_checkpoint from
    a dummy preset) -> ByteTokenizer: bytes 0-255, <bos> 256, <eos> 257, <pad> 258
  * otherwise -> TokenIdsOnly: encode() raises, asking for token ids; decode() writes the
    ids as text. (A real checkpoint without tokenizer.json gets no byte fallback: its ids
    0-255 are not bytes, and silently wrong text is worse than an error.)
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from llmserve.model.config import BYTE_BOS, BYTE_EOS, BYTE_VOCAB_SIZE, ModelConfig

BYTE_PAD = 258


@runtime_checkable
class Tokenizer(Protocol):
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0-255; <bos> 256, <eos> 257, <pad> 258."""

    chat_template = None

    bos_token_id = BYTE_BOS
    eos_token_ids = (BYTE_EOS,)
    pad_token_id = BYTE_PAD
    vocab_size = BYTE_VOCAB_SIZE

    def __init__(self, add_bos: bool = True):
        self.add_bos = add_bos

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        ids = list(text.encode("utf-8"))
        return [BYTE_BOS] + ids if self.add_bos else ids

    def decode(self, ids: Sequence[int]) -> str:
        """Special and out-of-range ids are dropped; invalid UTF-8 becomes U+FFFD."""
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer()"


class TokenIdsOnly:
    """For a checkpoint without tokenizer.json whose vocabulary cannot hold byte ids."""

    chat_template = None

    def __init__(self, cfg: ModelConfig, path: str | None = None, reason: str | None = None):
        self.vocab_size = cfg.vocab_size
        self.bos_token_id = cfg.bos_token_id
        self.eos_token_ids = tuple(cfg.eos_token_ids)
        if reason:
            self._where = reason
        elif path:
            self._where = (f"checkpoint {path!r} has no tokenizer.json (and its vocabulary of "
                           f"{cfg.vocab_size} is not the {BYTE_VOCAB_SIZE}-id byte-level one)")
        else:
            self._where = (f"this model's vocabulary ({cfg.vocab_size}) is smaller than the "
                           f"byte-level tokenizer's ({BYTE_VOCAB_SIZE})")

    def encode(self, text: str) -> list[int]:
        raise ValueError(f"cannot encode text: {self._where}; pass prompts as lists of token "
                         "ids instead")

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(str(int(i)) for i in ids)

    def __repr__(self) -> str:
        return f"TokenIdsOnly(vocab_size={self.vocab_size})"


class UnsupportedTokenizer(ValueError):
    """A GGUF vocabulary of a kind this module cannot build: the model still runs on ids."""


class HFTokenizer:
    """A checkpoint's tokenizer.json via the HF `tokenizers` library.

    tokenizer_config.json, when present, supplies bos_token/eos_token (strings or
    {"content": ...} objects) and add_bos_token; missing values fall back to the model config.
    The tokenizer.json post-processor adds special tokens as transformers would; with
    add_bos_token true a BOS is prepended if the post-processor did not add one.
    """

    def __init__(self, path: str, cfg: ModelConfig | None = None):
        try:
            from tokenizers import Tokenizer as _Tok
        except ImportError as e:  # pragma: no cover - tokenizers is a core dependency
            raise ImportError("reading tokenizer.json needs the `tokenizers` package "
                              "(pip install tokenizers)") from e
        self.path = os.fspath(path)
        fn = os.path.join(self.path, "tokenizer.json")
        try:
            self._tok = _Tok.from_file(fn)
        except Exception as e:
            raise ValueError(f"cannot read {fn}: {e}") from None
        tc: dict = {}
        tc_fn = os.path.join(self.path, "tokenizer_config.json")
        if os.path.isfile(tc_fn):
            try:
                with open(tc_fn) as f:
                    tc = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{tc_fn} is not valid JSON: {e}") from None

        def special(key: str) -> int | None:
            tok = tc.get(key)
            if isinstance(tok, dict):
                tok = tok.get("content")
            if not tok:
                return None
            tid = self._tok.token_to_id(tok)
            if tid is None:
                raise ValueError(f"{tc_fn}: {key} {tok!r} is not in the vocabulary of {fn}")
            return tid

        bos = special("bos_token")
        if bos is None and cfg is not None:
            bos = cfg.bos_token_id
        self.bos_token_id = bos
        eos = special("eos_token")
        eos_ids = [eos] if eos is not None else []
        if cfg is not None:  # the model may stop on several ids (e.g. Llama-3's <|eot_id|>)
            eos_ids += [i for i in cfg.eos_token_ids if i not in eos_ids]
        self.eos_token_ids = tuple(eos_ids)
        self.add_bos = bool(tc.get("add_bos_token", False))
        self.add_eos = False  # the tokenizer.json post-processor adds EOS where one is wanted
        self.chat_template = named_chat_template(tc.get("chat_template"), tc_fn)
        self._check_size(fn, cfg)

    @classmethod
    def from_gguf(cls, path: str, cfg: ModelConfig | None = None) -> HFTokenizer:
        """The tokenizer a GGUF file's metadata describes (byte-level BPE vocabularies), with
        BOS/EOS and add-BOS as transformers' GGUF tokenizer has them; `chat_template` from
        tokenizer.chat_template."""
        from llmserve.gguf_tokenizer import build_byte_level_bpe
        from llmserve.model.gguf_loader import tokenizer_metadata
        meta = tokenizer_metadata(path)
        if meta["model"] != "gpt2":
            raise UnsupportedTokenizer(
                f"{meta['path']}: tokenizer.ggml.model {meta['model']!r} is not supported "
                "(only 'gpt2', byte-level BPE)")
        self = cls.__new__(cls)
        self.path = meta["path"]
        self._tok = build_byte_level_bpe(meta)
        self.bos_token_id = meta["bos_id"]
        eos_ids = [meta["eos_id"]] if meta["eos_id"] is not None else []
        if cfg is not None:
            eos_ids += [i for i in cfg.eos_token_ids if i not in eos_ids]
        self.eos_token_ids = tuple(eos_ids)
        # llama.cpp (and transformers) add BOS to a byte-level vocabulary only when asked.
        self.add_bos = bool(meta["add_bos"])
        self.add_eos = bool(meta["add_eos"]) and meta["eos_id"] is not None
        self.chat_template = meta["chat_template"]
        self._check_size(self.path, cfg)
        return self

    def _check_size(self, where: str, cfg: ModelConfig | None) -> None:
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        if cfg is not None and self.vocab_size > cfg.vocab_size:
            raise ValueError(f"{where} has {self.vocab_size} tokens, more than the model's "
                             f"vocab_size {cfg.vocab_size}")

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        ids = self._tok.encode(text, add_special_tokens=True).ids
        if self.add_bos and self.bos_token_id is not None and (not ids or
                                                               ids[0] != self.bos_token_id):
            ids = [self.bos_token_id] + ids
        if self.add_eos and (not ids or ids[-1] != self.eos_token_ids[0]):
            ids = ids + [self.eos_token_ids[0]]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def __repr__(self) -> str:
        return f"HFTokenizer({self.path!r}, vocab_size={self.vocab_size})"


# Context tokens decode_continuation reads before the new ids: enough to settle a word
# boundary (and to complete a character split across tokens).
CONTEXT_TOKENS = 8


def decode_continuation(tokenizer, context: Sequence[int], ids: Sequence[int]) -> str:
    """The text `ids` add after `context` (the prompt, or the prompt and earlier output).

    A SentencePiece-style tokenizer (Llama-2, Mistral: a Metaspace decoder) drops the leading
    space of whatever it decodes first, so decode(output) alone loses the space between the
    prompt and the first output word (prompt + text != the decoded whole, unlike vLLM and
    transformers). Decoding the last CONTEXT_TOKENS context tokens with the ids and cutting
    off the context's own text keeps it. Falls back to decode(ids) when the context ends
    inside a character (its text is then not a prefix of the joint text). Byte-level and
    ids-only tokenizers decode each token on its own, so they take the plain path.
    """
    return decode_each_after(tokenizer, context, [ids])[0]


def decode_each_after(tokenizer, context: Sequence[int], pieces) -> list[str]:
    """decode_continuation(tokenizer, context, ids) for each ids in pieces, the context
    decoded once (a position's logprob alternatives share it)."""
    if not isinstance(tokenizer, HFTokenizer) or not context:
        return [tokenizer.decode(ids) for ids in pieces]
    ctx = [int(t) for t in context[-CONTEXT_TOKENS:]]
    head = tokenizer.decode(ctx)
    if head.endswith("\ufffd"):
        return [tokenizer.decode(ids) for ids in pieces]
    out = []
    for ids in pieces:
        full = tokenizer.decode(ctx + [int(t) for t in ids])
        out.append(full[len(head):] if full.startswith(head) else tokenizer.decode(ids))
    return out


def load_tokenizer(path: str | None, cfg: ModelConfig):
    """The tokenizer for a model: see the module docstring for the choice."""
    if path is not None and os.path.isfile(os.fspath(path)):
        try:
            return HFTokenizer.from_gguf(path, cfg)
        except UnsupportedTokenizer as e:
            return TokenIdsOnly(cfg, reason=str(e))
    if path is not None and os.path.isfile(os.path.join(os.fspath(path), "tokenizer.json")):
        return HFTokenizer(path, cfg)
    if cfg.vocab_size == BYTE_VOCAB_SIZE or (path is None and cfg.vocab_size > BYTE_VOCAB_SIZE):
        return ByteTokenizer()
    return TokenIdsOnly(cfg, None if path is None else os.fspath(path))


# ---------------------------------------------------------------------------------------------
# chat templates (LLM.chat and the server's chat endpoint)
# ---------------------------------------------------------------------------------------------
# Role headers a byte-level dummy model can encode; the generation prompt ends with the
# assistant header so the model continues as the assistant.
DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def named_chat_template(tpl, where: str) -> str | None:
    """tokenizer_config.json's chat_template: a string, or a list of named ones ("default")."""
    if isinstance(tpl, list):
        tpl = {t.get("name"): t.get("template") for t in tpl if isinstance(t, dict)}.get("default")
    if tpl is not None and not isinstance(tpl, str):
        raise ValueError(f"{where}: chat_template must be a string, got {type(tpl).__name__}")
    return tpl


class ChatTemplateError(ValueError):
    """A template refused the conversation (e.g. roles that do not alternate)."""


def _raise(message):
    raise ChatTemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


class ChatTemplate:
    """A jinja2 chat template rendered in a sandbox with the environment transformers gives it
    (trim_blocks, lstrip_blocks, loop controls, raise_exception, tojson, strftime_now): a
    template is code shipped with a checkpoint."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = ""):
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: time.strftime(fmt)
        env.filters["tojson"] = _tojson
        self.source = source
        self.template = env.from_string(source)    # a syntax error fails at start, not later
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        from jinja2 import TemplateError
        try:
            return self.template.render(messages=messages,
                                        add_generation_prompt=add_generation_prompt,
                                        bos_token=self.bos_token, eos_token=self.eos_token)
        except ChatTemplateError:
            raise
        except TemplateError as e:
            raise ChatTemplateError(f"the chat template failed on these messages: {e}") from None


def _special_text(tokenizer, tid) -> str:
    if tid is None or not isinstance(tokenizer, HFTokenizer):
        return ""
    return tokenizer._tok.id_to_token(tid) or ""


def chat_template_for(tokenizer, source: str | None = None) -> ChatTemplate:
    """The model's chat template (`source`, else the tokenizer's own: a GGUF's
    tokenizer.chat_template or tokenizer_config.json's), else DEFAULT_CHAT_TEMPLATE."""
    source = source or getattr(tokenizer, "chat_template", None) or DEFAULT_CHAT_TEMPLATE
    eos = tokenizer.eos_token_ids[0] if tokenizer.eos_token_ids else None
    return ChatTemplate(source, _special_text(tokenizer, tokenizer.bos_token_id),
                        _special_text(tokenizer, eos))


def encode_chat(tokenizer, text: str) -> list[int]:
    """Templates usually write the BOS token themselves; the tokenizer may add another."""
    ids = tokenizer.encode(text)
    bos = tokenizer.bos_token_id
    if bos is not None and len(ids) >= 2 and ids[0] == ids[1] == bos:
        ids = ids[1:]
    return ids
