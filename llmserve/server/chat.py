"""Chat templates for the server: the model's own (a GGUF file's tokenizer.chat_template, or
the checkpoint's tokenizer_config.json chat_template), else a plain default for models without
one (the dummy presets). Rendering lives in llmserve.tokenizer (LLM.chat uses it too)."""
from __future__ import annotations

import json
import os

from llmserve.tokenizer import (  # noqa: F401  (re-exported: the server's names for these)
    DEFAULT_CHAT_TEMPLATE,
    ChatTemplate,
    ChatTemplateError,
    chat_template_for,
    encode_chat,
    named_chat_template,
)


def read_chat_template(checkpoint_dir: str | None) -> str:
    """The checkpoint directory's template, or the default. A template list (named templates)
    yields the one named "default"."""
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
    return named_chat_template(tpl, fn) or DEFAULT_CHAT_TEMPLATE


def load_chat_template(checkpoint_dir: str | None, tokenizer) -> ChatTemplate:
    """The tokenizer's own template (a GGUF carries it), else the checkpoint directory's."""
    own = getattr(tokenizer, "chat_template", None)
    return chat_template_for(tokenizer, own or read_chat_template(checkpoint_dir))
