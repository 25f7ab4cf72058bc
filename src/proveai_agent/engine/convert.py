"""Converts a BERT sentence-embedding checkpoint (safetensors) to a GGUF for llama.cpp.

Only the `gguf`, `safetensors` and `numpy` packages are used: no torch, no transformers.
The output is llama.cpp's `bert` architecture with mean pooling and non-causal
attention, weight matrices in float16 and everything llama.cpp adds or normalises by
(biases, norms, position and segment embeddings) in float32. The vocabulary is the
checkpoint's WordPiece `vocab.txt` in llama.cpp's form: a word-initial piece carries a
leading U+2581 ("▁"), a `##` continuation loses its `##`, the special tokens stay as
they are and are marked as control tokens.

The same input always gives the same bytes, so the result's sha256 can be recorded in a
manifest and checked after every conversion. `check_against_reference` compares the
GGUF's embeddings with the numpy forward pass of `reference.py`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

# Below this cosine between the GGUF's and the reference embedding, a conversion is refused.
MIN_COSINE = 0.99

# llama.cpp's pooling types (LLAMA_POOLING_TYPE_*) that a sentence-transformers pooling
# config can ask for.
_POOLING = {"pooling_mode_mean_tokens": 1, "pooling_mode_cls_token": 2}

# Tensor names of a BertModel checkpoint and the names llama.cpp's `bert` loader expects.
_EMBEDDING_TENSORS = {
    "embeddings.word_embeddings.weight": "token_embd.weight",
    "embeddings.position_embeddings.weight": "position_embd.weight",
    "embeddings.token_type_embeddings.weight": "token_types.weight",
    "embeddings.LayerNorm.weight": "token_embd_norm.weight",
    "embeddings.LayerNorm.bias": "token_embd_norm.bias",
}
_LAYER_TENSORS = {
    "attention.self.query": "attn_q",
    "attention.self.key": "attn_k",
    "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output",
    "attention.output.LayerNorm": "attn_output_norm",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
    "output.LayerNorm": "layer_output_norm",
}
_LAYER_NAME = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)")
_SKIPPED = re.compile(r"embeddings\.position_ids|pooler\..*|cls\..*")

# The BERT normaliser's lowercasing switch (the gguf package has no constant for it).
_LOWERCASE_KEY = "tokenizer.ggml.normalizer.lowercase"

# Kept in float32 although two-dimensional: llama.cpp adds them to float32 activations.
_FLOAT32_MATRICES = {"position_embd.weight", "token_types.weight"}


class ConversionError(Exception):
    """The checkpoint cannot be converted, or the GGUF does not embed like the original."""


def gguf_name(name: str) -> str | None:
    """The GGUF tensor name for a checkpoint tensor, None for one llama.cpp does not use."""
    name = name.removeprefix("bert.")
    if name in _EMBEDDING_TENSORS:
        return _EMBEDDING_TENSORS[name]
    if _SKIPPED.fullmatch(name):
        return None
    match = _LAYER_NAME.fullmatch(name)
    if match is None or match.group(2) not in _LAYER_TENSORS:
        raise ConversionError(f"unexpected tensor in the checkpoint: {name}")
    layer, part, kind = match.groups()
    return f"blk.{layer}.{_LAYER_TENSORS[part]}.{kind}"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConversionError(f"missing {path.name} in {path.parent}") from None


def _pooling_type(model_dir: Path) -> int:
    pooling = _read_json(model_dir / "1_Pooling" / "config.json")
    modes = [mode for mode, on in pooling.items() if mode.startswith("pooling_mode") and on]
    if len(modes) != 1 or modes[0] not in _POOLING:
        raise ConversionError(f"unsupported pooling in 1_Pooling/config.json: {modes}")
    return _POOLING[modes[0]]


def _vocabulary(model_dir: Path) -> tuple[list[str], list[int], dict[str, int]]:
    """Token texts in llama.cpp's form, their token types, and the special tokens' ids."""
    import gguf

    vocab = (model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    ids = {token: i for i, token in enumerate(vocab)}
    specials = _read_json(model_dir / "special_tokens_map.json")
    special_ids: dict[str, int] = {}
    for role, token in specials.items():
        text = token["content"] if isinstance(token, dict) else token
        if text not in ids:
            raise ConversionError(f"special token {text} ({role}) is not in vocab.txt")
        special_ids[role] = ids[text]

    control = set(special_ids.values())
    texts: list[str] = []
    types: list[int] = []
    for i, token in enumerate(vocab):
        if i in control:
            texts.append(token)
            types.append(gguf.TokenType.CONTROL)
        elif token.startswith("##"):
            texts.append(token[2:])
            types.append(gguf.TokenType.NORMAL)
        else:
            texts.append("\u2581" + token)
            types.append(gguf.TokenType.NORMAL)
    return texts, types, special_ids


def _tensors(model_dir: Path) -> Iterator[tuple[str, np.ndarray]]:
    """GGUF name and array of every tensor llama.cpp uses, in the checkpoint's order."""
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), framework="np") as checkpoint:
        for name in sorted(checkpoint.keys()):
            target = gguf_name(name)
            if target is None:
                continue
            array = checkpoint.get_tensor(name)
            if array.ndim == 2 and target not in _FLOAT32_MATRICES:
                yield target, array.astype(np.float16)
            else:
                yield target, array.astype(np.float32)


def convert_bert(model_dir: Path, out_path: Path, name: str) -> None:
    """Write the GGUF of the sentence-transformers BERT checkpoint in `model_dir`.

    Args:
        model_dir: the checkpoint: config.json, model.safetensors, vocab.txt,
            special_tokens_map.json, tokenizer_config.json and 1_Pooling/config.json.
        out_path: the GGUF to write (overwritten).
        name: the model's name, written as general.name.
    """
    import gguf

    config = _read_json(model_dir / "config.json")
    if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu":
        raise ConversionError(
            f"not a BERT checkpoint with GELU: model_type={config.get('model_type')}, "
            f"hidden_act={config.get('hidden_act')}"
        )
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ConversionError("only absolute position embeddings are supported")
    lowercase = bool(_read_json(model_dir / "tokenizer_config.json").get("do_lower_case", True))
    texts, types, special_ids = _vocabulary(model_dir)
    if len(texts) != config["vocab_size"]:
        raise ConversionError(
            f"vocab.txt has {len(texts)} tokens, config {config['vocab_size']}"
        )

    writer = gguf.GGUFWriter(str(out_path), "bert")
    writer.add_name(name)
    writer.add_license("apache-2.0")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_layer_norm_eps(float(config["layer_norm_eps"]))
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType(_pooling_type(model_dir)))

    writer.add_tokenizer_model("bert")
    writer.add_token_list(texts)
    writer.add_token_types(types)
    writer.add_token_type_count(int(config.get("type_vocab_size", 2)))
    writer.add_bool(_LOWERCASE_KEY, lowercase)
    writer.add_bos_token_id(special_ids["cls_token"])
    writer.add_sep_token_id(special_ids["sep_token"])
    writer.add_unk_token_id(special_ids["unk_token"])
    writer.add_pad_token_id(special_ids["pad_token"])
    writer.add_mask_token_id(special_ids["mask_token"])
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_sep_token(True)

    count = 0
    for target, array in _tensors(model_dir):
        writer.add_tensor(target, array)
        count += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    logger.debug("wrote %s: %d tensors, %d tokens", out_path, count, len(texts))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors."""
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def check_against_reference(
    gguf_path: Path,
    model_dir: Path,
    sentences: tuple[str, ...] | None = None,
    min_cosine: float = MIN_COSINE,
) -> list[float]:
    """Cosine of the GGUF's embedding with the numpy reference, per sentence.

    Raises:
        ConversionError: when a sentence's token ids differ between llama.cpp and the
            reference tokenizer, or a cosine is below `min_cosine`; the message has every
            sentence's figure.
    """
    from .llm import Embedder
    from .reference import REFERENCE_SENTENCES, BertReference

    sentences = sentences or REFERENCE_SENTENCES
    reference = BertReference(model_dir)
    embedder = Embedder(gguf_path)
    try:
        mismatched = [
            s for s in sentences if embedder.tokenize(s) != reference.tokenizer.encode(s)
        ]
        vectors = embedder.embed(list(sentences))
    finally:
        embedder.close()
    if mismatched:
        raise ConversionError(f"llama.cpp tokenizes differently from vocab.txt: {mismatched}")

    cosines = [
        cosine(vector, reference.embed(s)) for vector, s in zip(vectors, sentences, strict=True)
    ]
    if min(cosines) < min_cosine:
        figures = ", ".join(f"{c:.4f}" for c in cosines)
        raise ConversionError(
            f"{gguf_path.name} embeds unlike the reference: cosines {figures} "
            f"(need ≥ {min_cosine})"
        )
    return cosines
