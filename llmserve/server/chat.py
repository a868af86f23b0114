"""Chat templates: the checkpoint's `chat_template` from tokenizer_config.json, rendered with
jinja2 in a sandbox (as transformers does: a template is code shipped with a checkpoint), or a
plain default for models without one (the dummy presets)."""
from __future__ import annotations

import json
import os

# Role headers a byte-level dummy model can encode; the generation prompt ends with the
# assistant header so the model continues as the assistant.
DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


class ChatTemplateError(ValueError):
    """A template refused the conversation (e.g. roles that do not alternate)."""


def _raise(message):
    raise ChatTemplateError(message)


def read_chat_template(checkpoint_dir: str | None) -> str:
    """The checkpoint's template, or the default. A template list (named templates) yields
    the one named "default"."""
    if not checkpoint_dir:
        return DEFAULT_CHAT_TEMPLATE
    fn = os.path.join(checkpoint_dir, "tokenizer_config.json")
    if not os.path.isfile(fn):
        return DEFAULT_CHAT_TEMPLATE
    with open(fn) as f:
        try:
            tpl = json.load(f).get("chat_template")
        except json.JSONDecodeError as e:
            raise ValueError(f"{fn} is not valid JSON: {e}") from None
    if isinstance(tpl, list):
        named = {t.get("name"): t.get("template") for t in tpl if isinstance(t, dict)}
        tpl = named.get("default")
    if tpl is None:
        return DEFAULT_CHAT_TEMPLATE
    if not isinstance(tpl, str):
        raise ValueError(f"{fn}: chat_template must be a string, got {type(tpl).__name__}")
    return tpl


class ChatTemplate:
    def __init__(self, source: str, bos_token: str = "", eos_token: str = ""):
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
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


def _special_text(tokenizer, tid):
    if tid is None or not hasattr(tokenizer, "_tok"):
        return ""
    return tokenizer._tok.id_to_token(tid) or ""


def load_chat_template(checkpoint_dir: str | None, tokenizer) -> ChatTemplate:
    eos = tokenizer.eos_token_ids[0] if tokenizer.eos_token_ids else None
    return ChatTemplate(read_chat_template(checkpoint_dir),
                        _special_text(tokenizer, tokenizer.bos_token_id),
                        _special_text(tokenizer, eos))


def encode_chat(tokenizer, text: str) -> list[int]:
    """Templates usually write the BOS token themselves; the tokenizer may add another."""
    ids = tokenizer.encode(text)
    bos = tokenizer.bos_token_id
    if bos is not None and len(ids) >= 2 and ids[0] == ids[1] == bos:
        ids = ids[1:]
    return ids
