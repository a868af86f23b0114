"""A `tokenizers.Tokenizer` from a GGUF file's vocabulary, as transformers' GGUF loader builds it.

A GGUF carries no tokenizer.json: it stores the tokens, the BPE merges and a type per token
(llama.cpp's: 1 normal, 3 control, 4 user-defined, ...) under `tokenizer.ggml.*`. For a
byte-level BPE vocabulary (`tokenizer.ggml.model` 'gpt2': GPT-2, SmolLM, Llama-3, Qwen2) that
is a BPE model over the GPT-2 byte alphabet with a ByteLevel pre-tokenizer and decoder; control
tokens become special added tokens (matched whole, skipped on decode), user-defined ones plain
added tokens. `tokenizer.ggml.pre` names the split regex the merges were learned with; those
transformers knows are used, others get GPT-2's (which ByteLevel applies by itself).
"""
from __future__ import annotations

import functools

CONTROL, USER_DEFINED = 3, 4

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZER_SPLITS = {
    "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT, "dbrx": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT,
}


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the alphabet byte-level vocabularies use)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build_byte_level_bpe(meta: dict):
    """tokenizers.Tokenizer from gguf_loader.tokenizer_metadata(path) of a 'gpt2' vocabulary."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    where = meta["path"]
    spelling = bytes_to_unicode()
    alphabet = set(spelling.values())
    # A token written outside the byte alphabet (a raw special string) is respelled in it.
    tokens = [t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8"))
              for t in meta["tokens"]]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError(f"{where}: tokenizer.ggml.tokens has duplicate tokens")
    if not meta["merges"]:
        raise ValueError(f"{where}: a byte-level BPE vocabulary needs tokenizer.ggml.merges, "
                         "which is missing or empty")
    merges = []
    for k, m in enumerate(meta["merges"]):
        pair = tuple(m.split(" "))
        if len(pair) != 2 or pair[0] not in vocab or pair[1] not in vocab:
            raise ValueError(f"{where}: tokenizer.ggml.merges[{k}] = {m!r} is not two "
                             "vocabulary tokens separated by a space")
        merges.append(pair)
    try:
        tok = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None,
                            continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    except Exception as e:
        raise ValueError(f"{where}: the GGUF vocabulary and merges do not form a BPE model: "
                         f"{e}") from None
    split = PRE_TOKENIZER_SPLITS.get(meta.get("pre") or "")
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    types = meta.get("token_type") or ()
    # A "control" token outside the byte alphabet is a llama.cpp mislabel (transformers skips
    # it too): it is not a token of this vocabulary's spelling.
    control = [AddedToken(t, normalized=False, special=True)
               for t, ty in zip(meta["tokens"], types) if ty == CONTROL and set(t) <= alphabet]
    if control:
        tok.add_special_tokens(control)
    user = [AddedToken(t, normalized=False, special=False)
            for t, ty in zip(meta["tokens"], types) if ty == USER_DEFINED and t in vocab]
    if user:
        tok.add_tokens(user)
    return tok
