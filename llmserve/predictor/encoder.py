"""A pretrained BERT-family sentence encoder (e.g. all-MiniLM-L6-v2) from a local Hugging Face
directory, in Flax: an optional input to the length predictor.

    enc = SentenceEncoder.load("/path/to/model", max_tokens=256)
    emb = enc.embed(["Write an essay on owls.", ...])        # [N, hidden] float32

The directory holds config.json (a BertModel), model.safetensors, vocab.txt and optionally
tokenizer_config.json, modules.json, 1_Pooling/config.json and sentence_bert_config.json
(sentence-transformers). The tokenizer is BERT's (basic tokenization, then greedy WordPiece)
written in Python; the weights are read with the project's own safetensors reader, so neither
torch nor transformers is needed. The sentence embedding is the masked mean of the last hidden
states, L2-normalised when modules.json lists a Normalize module.
"""
from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_ACTS = {"gelu": lambda x: nn.gelu(x, approximate=False),
         "gelu_new": lambda x: nn.gelu(x, approximate=True),
         "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
         "relu": nn.relu}
_LENGTH_BUCKETS = (16, 32, 64, 128, 256, 512)
_ROWS = 16                  # prompts per forward call (the last call is padded to it)
_MAX_WORD_CHARS = 100       # longer words become [UNK] (BERT's WordPiece rule)


# ---- tokenizer ---------------------------------------------------------------------------------
def _is_whitespace(c: str) -> bool:
    return c in " \t\n\r" or unicodedata.category(c) == "Zs"


def _is_control(c: str) -> bool:
    return c not in "\t\n\r" and unicodedata.category(c).startswith("C")


def _is_punctuation(c: str) -> bool:
    cp = ord(c)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True  # all non-letter/number ASCII, e.g. ^ $ ` which Unicode does not call P
    return unicodedata.category(c).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or
            0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or
            0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


class BertTokenizer:
    """BERT's tokenizer from vocab.txt: text -> [CLS] wordpieces [SEP] ids."""

    SPECIALS = ("[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]")

    def __init__(self, vocab: Sequence[str], do_lower_case: bool = True,
                 strip_accents: bool | None = None, tokenize_chinese_chars: bool = True):
        self.vocab = {t: i for i, t in enumerate(vocab)}
        missing = [t for t in ("[UNK]", "[SEP]", "[PAD]", "[CLS]") if t not in self.vocab]
        if missing:
            raise ValueError(f"vocab.txt lacks the special token(s) {missing}")
        self.do_lower_case = do_lower_case
        self.strip_accents = do_lower_case if strip_accents is None else strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.cls_id, self.sep_id = self.vocab["[CLS]"], self.vocab["[SEP]"]
        self.pad_id, self.unk_id = self.vocab["[PAD]"], self.vocab["[UNK]"]
        self._specials = [t for t in self.SPECIALS if t in self.vocab]

    @classmethod
    def from_dir(cls, path: str) -> BertTokenizer:
        vocab_path = os.path.join(path, "vocab.txt")
        if not os.path.isfile(vocab_path):
            raise ValueError(f"encoder directory {path!r} lacks vocab.txt (a BERT WordPiece "
                             "vocabulary, one token a line)")
        with open(vocab_path, encoding="utf-8") as f:
            vocab = [line.rstrip("\n") for line in f]
        cfg = _read_json(os.path.join(path, "tokenizer_config.json"), required=False) or {}
        cls_name = cfg.get("tokenizer_class")
        if cls_name and cls_name not in ("BertTokenizer", "BertTokenizerFast"):
            raise ValueError(f"{path}/tokenizer_config.json: tokenizer_class {cls_name!r} is not "
                             "supported (BertTokenizer or BertTokenizerFast)")
        return cls(vocab, do_lower_case=bool(cfg.get("do_lower_case", True)),
                   strip_accents=cfg.get("strip_accents"),
                   tokenize_chinese_chars=bool(cfg.get("tokenize_chinese_chars", True)))

    def _words(self, text: str) -> list[str]:
        """Basic tokenization: clean, split CJK characters, whitespace and punctuation."""
        chars = []
        for c in text:
            cp = ord(c)
            if cp == 0 or cp == 0xFFFD or _is_control(c):
                continue
            if _is_whitespace(c):
                chars.append(" ")
            elif self.tokenize_chinese_chars and _is_cjk(cp):
                chars.append(f" {c} ")
            else:
                chars.append(c)
        out = []
        for tok in unicodedata.normalize("NFC", "".join(chars)).split():
            if self.do_lower_case:
                tok = tok.lower()
            if self.strip_accents:
                tok = "".join(c for c in unicodedata.normalize("NFD", tok)
                              if unicodedata.category(c) != "Mn")
            word = []
            for c in tok:
                if _is_punctuation(c):
                    if word:
                        out.append("".join(word))
                        word = []
                    out.append(c)
                else:
                    word.append(c)
            if word:
                out.append("".join(word))
        return out

    def _wordpiece(self, word: str) -> list[int]:
        if len(word) > _MAX_WORD_CHARS:
            return [self.unk_id]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                sub = word[start:end] if start == 0 else "##" + word[start:end]
                if sub in self.vocab:
                    pieces.append(self.vocab[sub])
                    break
                end -= 1
            else:
                return [self.unk_id]  # one unknown piece makes the whole word unknown
            start = end
        return pieces

    def tokenize(self, text: str) -> list[int]:
        """-> wordpiece ids, without [CLS]/[SEP]; special-token strings in the text (e.g.
        "[SEP]") map to their ids, as transformers' tokenizers do."""
        parts = [text]
        for s in self._specials:
            parts = [q for p in parts for q in _split_keep(p, s)]
        ids = []
        for p in parts:
            if p in self._specials:
                ids.append(self.vocab[p])
            else:
                for w in self._words(p):
                    ids.extend(self._wordpiece(w))
        return ids

    def encode(self, text: str, max_length: int) -> list[int]:
        """[CLS] + wordpieces (cut to max_length - 2) + [SEP]."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        return [self.cls_id] + self.tokenize(text)[:max_length - 2] + [self.sep_id]


def _split_keep(text: str, sep: str) -> list[str]:
    if sep not in text or text == sep:
        return [text]
    out = []
    for i, piece in enumerate(text.split(sep)):
        if i:
            out.append(sep)
        if piece:
            out.append(piece)
    return out


# ---- model -------------------------------------------------------------------------------------
class BertEncoder(nn.Module):
    """BertModel without the pooler: embeddings + post-LayerNorm transformer layers."""
    vocab_size: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    max_positions: int
    type_vocab: int
    eps: float
    act: str

    @nn.compact
    def __call__(self, ids, mask):
        b, t = ids.shape
        x = (nn.Embed(self.vocab_size, self.hidden, name="word")(ids) +
             nn.Embed(self.max_positions, self.hidden, name="position")(jnp.arange(t))[None] +
             nn.Embed(self.type_vocab, self.hidden, name="token_type")(jnp.zeros_like(ids)))
        x = nn.LayerNorm(self.eps, name="emb_norm")(x)
        bias = jnp.where(mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)
        hd = self.hidden // self.heads
        act = _ACTS[self.act]
        for i in range(self.layers):
            def heads(name, x=x, i=i):
                return nn.Dense(self.hidden, name=f"l{i}_{name}")(x).reshape(b, t, self.heads, hd)
            q, k, v = heads("q"), heads("k"), heads("v")
            s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(hd) + bias
            a = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, -1), v).reshape(b, t, -1)
            x = nn.LayerNorm(self.eps, name=f"l{i}_attn_norm")(
                x + nn.Dense(self.hidden, name=f"l{i}_attn_out")(a))
            h = act(nn.Dense(self.intermediate, name=f"l{i}_ffn_in")(x))
            x = nn.LayerNorm(self.eps, name=f"l{i}_ffn_norm")(
                x + nn.Dense(self.hidden, name=f"l{i}_ffn_out")(h))
        return x


def _read_json(path: str, required: bool = True):
    if not os.path.isfile(path):
        if required:
            raise ValueError(f"encoder directory lacks {os.path.basename(path)} ({path})")
        return None
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None


def fingerprint(path: str) -> str:
    """sha256 of config.json, vocab.txt and the safetensors file's size: changes when the
    directory holds another model (a full hash of the weights would take seconds)."""
    h = hashlib.sha256()
    for name in ("config.json", "vocab.txt"):
        p = os.path.join(path, name)
        if not os.path.isfile(p):
            raise ValueError(f"encoder directory {path!r} lacks {name}")
        with open(p, "rb") as f:
            h.update(f.read())
    st = os.path.join(path, "model.safetensors")
    if not os.path.isfile(st):
        raise ValueError(f"encoder directory {path!r} lacks model.safetensors")
    h.update(str(os.path.getsize(st)).encode())
    return h.hexdigest()[:32]


def _config(path: str) -> dict:
    cfg = _read_json(os.path.join(path, "config.json"))
    where = f"{path}/config.json"
    if cfg.get("model_type", "bert") != "bert":
        raise ValueError(f"{where}: model_type {cfg.get('model_type')!r} is not supported "
                         "(only 'bert')")
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{where}: position_embedding_type "
                         f"{cfg['position_embedding_type']!r} is not supported (only 'absolute')")
    if cfg.get("hidden_act", "gelu") not in _ACTS:
        raise ValueError(f"{where}: hidden_act {cfg['hidden_act']!r} is not supported "
                         f"({sorted(_ACTS)})")
    need = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "intermediate_size", "max_position_embeddings")
    absent = [k for k in need if not isinstance(cfg.get(k), int)]
    if absent:
        raise ValueError(f"{where}: missing or non-integer field(s) {absent}")
    if cfg["hidden_size"] % cfg["num_attention_heads"]:
        raise ValueError(f"{where}: hidden_size {cfg['hidden_size']} is not a multiple of "
                         f"num_attention_heads {cfg['num_attention_heads']}")
    return cfg


def _params_from_safetensors(path: str, cfg: dict):
    from llmserve.model.loader import SafetensorsFile
    st = SafetensorsFile(os.path.join(path, "model.safetensors"))
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in st else ""

    def get(name):
        full = prefix + name
        if full not in st:
            raise ValueError(f"{path}/model.safetensors lacks tensor {full!r}")
        return np.asarray(st.get(full), np.float32)

    def dense(name):  # torch Linear keeps [out, in]
        return {"kernel": get(name + ".weight").T, "bias": get(name + ".bias")}

    def norm(name):
        return {"scale": get(name + ".weight"), "bias": get(name + ".bias")}

    p = {"word": {"embedding": get("embeddings.word_embeddings.weight")},
         "position": {"embedding": get("embeddings.position_embeddings.weight")},
         "token_type": {"embedding": get("embeddings.token_type_embeddings.weight")},
         "emb_norm": norm("embeddings.LayerNorm")}
    for i in range(cfg["num_hidden_layers"]):
        layer = f"encoder.layer.{i}."
        p[f"l{i}_q"] = dense(layer + "attention.self.query")
        p[f"l{i}_k"] = dense(layer + "attention.self.key")
        p[f"l{i}_v"] = dense(layer + "attention.self.value")
        p[f"l{i}_attn_out"] = dense(layer + "attention.output.dense")
        p[f"l{i}_attn_norm"] = norm(layer + "attention.output.LayerNorm")
        p[f"l{i}_ffn_in"] = dense(layer + "intermediate.dense")
        p[f"l{i}_ffn_out"] = dense(layer + "output.dense")
        p[f"l{i}_ffn_norm"] = norm(layer + "output.LayerNorm")
    want = (cfg["vocab_size"], cfg["hidden_size"])
    if p["word"]["embedding"].shape != want:
        raise ValueError(f"{path}/model.safetensors: word embeddings have shape "
                         f"{p['word']['embedding'].shape}, config.json says {want}")
    return jax.device_put(p)


class SentenceEncoder:
    """A BERT encoder + tokenizer + pooling from a local HF directory."""

    def __init__(self, path: str, max_tokens: int = 256):
        path = os.path.abspath(os.fspath(path))
        if not os.path.isdir(path):
            raise ValueError(f"encoder directory {path!r} does not exist")
        self.path = path
        cfg = _config(path)
        self.fingerprint = fingerprint(path)
        self.tokenizer = BertTokenizer.from_dir(path)
        modules = _read_json(os.path.join(path, "modules.json"), required=False) or []
        types = [m.get("type", "") for m in modules if isinstance(m, dict)]
        self.normalize = any(t.endswith("Normalize") for t in types)
        pool = _read_json(os.path.join(path, "1_Pooling", "config.json"), required=False)
        if pool is not None and not pool.get("pooling_mode_mean_tokens", False):
            modes = sorted(k for k, v in pool.items() if k.startswith("pooling_mode") and v)
            raise ValueError(f"{path}/1_Pooling/config.json: pooling {modes} is not supported "
                             "(only pooling_mode_mean_tokens)")
        st_cfg = _read_json(os.path.join(path, "sentence_bert_config.json"), required=False) or {}
        limit = min(cfg["max_position_embeddings"], int(st_cfg.get("max_seq_length", 1 << 30)))
        if max_tokens < 3:
            raise ValueError(f"features.encoder_max_tokens must be >= 3, got {max_tokens}")
        self.max_tokens = min(int(max_tokens), limit)
        self.dim = cfg["hidden_size"]
        self.module = BertEncoder(
            vocab_size=cfg["vocab_size"], hidden=cfg["hidden_size"],
            layers=cfg["num_hidden_layers"], heads=cfg["num_attention_heads"],
            intermediate=cfg["intermediate_size"], max_positions=cfg["max_position_embeddings"],
            type_vocab=cfg.get("type_vocab_size", 2), eps=float(cfg.get("layer_norm_eps", 1e-12)),
            act=cfg.get("hidden_act", "gelu"))
        self.params = _params_from_safetensors(path, cfg)
        self._forward = jax.jit(self._pooled)

    @classmethod
    def load(cls, path: str, max_tokens: int = 256) -> SentenceEncoder:
        return cls(path, max_tokens)

    def hidden_states(self, ids, mask):
        """[B, T] ids and mask -> [B, T, hidden] last hidden states."""
        return self.module.apply({"params": self.params}, jnp.asarray(ids), jnp.asarray(mask))

    def _pooled(self, params, ids, mask):
        h = self.module.apply({"params": params}, ids, mask)
        m = mask[..., None].astype(h.dtype)
        e = (h * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
        if self.normalize:
            e = e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
        return e

    def encode_ids(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.tokenizer.encode(t, self.max_tokens) for t in texts]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """-> [N, hidden] float32 sentence embeddings. Prompts are grouped by padded length
        (a few bucketed shapes) and run _ROWS at a time."""
        ids = self.encode_ids(texts)
        out = np.zeros((len(ids), self.dim), np.float32)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for s in range(0, len(order), _ROWS):
            rows = order[s:s + _ROWS]
            longest = len(ids[rows[-1]])
            t = min(next((b for b in _LENGTH_BUCKETS if b >= longest), longest),
                    self.max_tokens)  # longest <= max_tokens: encode cut it
            a = np.full((_ROWS, t), self.tokenizer.pad_id, np.int32)
            m = np.zeros((_ROWS, t), np.int32)
            for r, i in enumerate(rows):
                a[r, :len(ids[i])], m[r, :len(ids[i])] = ids[i], 1
            m[len(rows):, 0] = 1  # padding rows: one token, so their mean is defined
            out[rows] = np.asarray(self._forward(self.params, a, m))[:len(rows)]
        return out


class EmbeddingCache:
    """Sentence embeddings kept by (encoder fingerprint, max_tokens, text) in memory and, with
    `directory`, in one .npz file per encoder there (training computes each prompt once)."""

    def __init__(self, encoder: SentenceEncoder, directory: str = ""):
        self.encoder = encoder
        self.tag = f"{encoder.fingerprint}_{encoder.max_tokens}"
        self.file = os.path.join(directory, f"emb_{self.tag}.npz") if directory else ""
        self.rows: dict[str, np.ndarray] = {}
        if self.file and os.path.isfile(self.file):
            with np.load(self.file) as z:
                self.rows = dict(zip(z["keys"].tolist(), z["emb"]))

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        keys = [self.key(t) for t in texts]
        todo = sorted({k: t for k, t in zip(keys, texts) if k not in self.rows}.items())
        if todo:
            emb = self.encoder.embed([t for _, t in todo])
            self.rows.update(zip([k for k, _ in todo], emb))
            if self.file:
                os.makedirs(os.path.dirname(self.file), exist_ok=True)
                tmp = self.file + ".tmp.npz"
                np.savez(tmp, keys=np.array(list(self.rows)),
                         emb=np.stack(list(self.rows.values())))
                os.replace(tmp, self.file)
        if not keys:
            return np.zeros((0, self.encoder.dim), np.float32)
        return np.stack([self.rows[k] for k in keys]).astype(np.float32)
