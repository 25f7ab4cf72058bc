"""Loading the engine's models: a model that is not there yet is pending, then picked up."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from modelfix import tiny_manifest
from proveai_agent.config import EngineConfig
from proveai_agent.engine import local
from proveai_agent.engine.models import MODELS_DIR_ENV


def test_a_model_not_in_the_store_yet_is_pending_and_loads_once_it_is_there(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny_manifest(tmp_path / "models", tiny_gguf)
    monkeypatch.setenv(MODELS_DIR_ENV, str(tmp_path / "models"))
    store = tmp_path / "store"
    store.mkdir()
    config = EngineConfig(
        reasoning_model="auto", embedding_model=None, model_store=str(store), model_ctx=512
    )

    before = local.load(config)
    assert before.reasoner is None
    assert before.pending == {"reasoning"}
    assert "not set up" in (before.problems or {})["reasoning"]

    shutil.copyfile(tiny_gguf, store / tiny_gguf.name)
    after = local.load(config, before.pending)
    assert after.reasoner is not None
    assert after.pending == set()
    assert after.problems == {}


def test_a_wrong_checksum_is_not_pending(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny_manifest(tmp_path / "models", tiny_gguf)
    monkeypatch.setenv(MODELS_DIR_ENV, str(tmp_path / "models"))
    store = tmp_path / "store"
    store.mkdir()
    (store / tiny_gguf.name).write_bytes(b"not the model")
    config = EngineConfig(reasoning_model="tiny", embedding_model=None, model_store=str(store))

    loaded = local.load(config)
    assert loaded.reasoner is None
    assert loaded.pending == set()
    assert "reasoning" in (loaded.problems or {})
