"""Reference sentence embeddings of a BERT model, in numpy, to check a converted GGUF against.

The forward pass reads the same safetensors as the converter but shares no code with it
or with llama.cpp: token, position and segment embeddings, a layer norm, then per layer
self-attention and a GELU feed-forward block, each followed by a residual add and a layer
norm; the sentence embedding is the mean of the token states, L2-normalised. This is how
sentence-transformers computes all-MiniLM-L6-v2's embeddings, so agreement with it means
the GGUF embeds as the original model does.

The tokenizer is WordPiece over `vocab.txt` for lowercase ASCII text only: lowercase,
split on whitespace and punctuation, greedy longest match with `##` continuations,
`[UNK]` for a word that does not decompose. Accents, Chinese characters and control
characters, which the full BERT normaliser handles, are not.
"""

from __future__ import annotations

import json
import math
import string
from pathlib import Path

import numpy as np

# Fixed lowercase ASCII sentences that both the reference and the GGUF embed.
REFERENCE_SENTENCES = (
    "the retrieval step returned documents about a different product.",
    "latency of the chat completion doubled after the deploy.",
    "the agent called the same tool twelve times in a row.",
    "answers cite sources that do not exist.",
)

_PUNCTUATION = set(string.punctuation)


class WordPiece:
    """The minimal BERT tokenizer described in the module docstring."""

    def __init__(self, vocab: list[str], max_chars_per_word: int = 100) -> None:
        self.vocab = vocab
        self.ids = {token: i for i, token in enumerate(vocab)}
        self.max_chars_per_word = max_chars_per_word
        self.cls_id = self.ids["[CLS]"]
        self.sep_id = self.ids["[SEP]"]
        self.unk_id = self.ids["[UNK]"]

    @classmethod
    def from_dir(cls, model_dir: Path) -> WordPiece:
        """The tokenizer of the model in `model_dir` (its `vocab.txt`)."""
        text = (model_dir / "vocab.txt").read_text(encoding="utf-8")
        return cls(text.splitlines())

    def words(self, text: str) -> list[str]:
        """Lowercased words, each punctuation character a word of its own."""
        words: list[str] = []
        for chunk in text.lower().split():
            current = ""
            for char in chunk:
                if char in _PUNCTUATION:
                    if current:
                        words.append(current)
                    words.append(char)
                    current = ""
                else:
                    current += char
            if current:
                words.append(current)
        return words

    def word_ids(self, word: str) -> list[int]:
        """Greedy longest-match-first pieces of one word, or `[UNK]`."""
        if len(word) > self.max_chars_per_word:
            return [self.unk_id]
        pieces: list[int] = []
        start = 0
        while start < len(word):
            end = len(word)
            found = None
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.ids:
                    found = self.ids[piece]
                    break
                end -= 1
            if found is None:
                return [self.unk_id]
            pieces.append(found)
            start = end
        return pieces

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` between `[CLS]` and `[SEP]`, as BERT sees a single sentence."""
        ids = [self.cls_id]
        for word in self.words(text):
            ids.extend(self.word_ids(word))
        ids.append(self.sep_id)
        return ids


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


_erf = np.vectorize(math.erf, otypes=[np.float64])


def _gelu(x: np.ndarray) -> np.ndarray:
    """The exact GELU that BERT's `hidden_act = "gelu"` names, x·Φ(x)."""
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


class BertReference:
    """Sentence embeddings of a BERT checkpoint directory (config.json, safetensors, vocab)."""

    def __init__(self, model_dir: Path) -> None:
        from safetensors.numpy import load_file

        self.config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        tensors = load_file(str(model_dir / "model.safetensors"))
        self.weights = {
            name.removeprefix("bert."): value.astype(np.float64)
            for name, value in tensors.items()
            if value.dtype.kind == "f"
        }
        self.tokenizer = WordPiece.from_dir(model_dir)
        self.eps = float(self.config.get("layer_norm_eps", 1e-12))
        self.n_head = int(self.config["num_attention_heads"])
        self.n_layer = int(self.config["num_hidden_layers"])

    @property
    def dim(self) -> int:
        """Width of the embeddings (hidden_size)."""
        return int(self.config["hidden_size"])

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        return x @ self.weights[name + ".weight"].T + self.weights[name + ".bias"]

    def _norm(self, x: np.ndarray, name: str) -> np.ndarray:
        return _layer_norm(
            x, self.weights[name + ".weight"], self.weights[name + ".bias"], self.eps
        )

    def _attention(self, x: np.ndarray, prefix: str) -> np.ndarray:
        n, width = x.shape
        head = width // self.n_head

        def heads(name: str) -> np.ndarray:
            return self._linear(x, f"{prefix}.attention.self.{name}").reshape(
                n, self.n_head, head
            )

        q, k, v = heads("query"), heads("key"), heads("value")
        scores = np.einsum("ihd,jhd->hij", q, k) / math.sqrt(head)
        scores -= scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        context = np.einsum("hij,jhd->ihd", probs, v).reshape(n, width)
        return self._linear(context, f"{prefix}.attention.output.dense")

    def hidden_states(self, ids: list[int]) -> np.ndarray:
        """The last layer's token states, shape (len(ids), dim)."""
        w = self.weights
        positions = np.arange(len(ids))
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][positions]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = self._norm(x, "embeddings.LayerNorm")
        for layer in range(self.n_layer):
            prefix = f"encoder.layer.{layer}"
            x = self._norm(
                x + self._attention(x, prefix), f"{prefix}.attention.output.LayerNorm"
            )
            inner = _gelu(self._linear(x, f"{prefix}.intermediate.dense"))
            x = self._norm(
                x + self._linear(inner, f"{prefix}.output.dense"), f"{prefix}.output.LayerNorm"
            )
        return x

    def embed(self, text: str) -> np.ndarray:
        """Mean-pooled, L2-normalised embedding of one sentence, float32."""
        pooled = self.hidden_states(self.tokenizer.encode(text)).mean(axis=0)
        return (pooled / np.linalg.norm(pooled)).astype(np.float32)
