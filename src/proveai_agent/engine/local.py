"""Loads the engine's local models as configured: a reasoning model and an embedding model.

Each is a manifest name, a path to a GGUF a manifest lists, "auto" (the manifest of that
role whose file set-up put in the model store, if any) or None (not used). A model that
cannot be loaded (llama-cpp-python missing, file missing, checksum wrong) is left out with
the reason: the engine then ranks on evidence alone, or without the knowledge base.

A model that is only not there yet (llama-cpp-python not installed, the store not set up,
as while `./dev demo` builds the runtime in the background) is `pending`: the agent loads
it again later, and the engine uses it from then on without a restart.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import EngineConfig

logger = logging.getLogger(__name__)

AUTO = "auto"
ROLES = ("reasoning", "embedding")


@dataclass(slots=True)
class Loaded:
    """What loading gave: the models, and why one is missing."""

    reasoner: Any = None
    embedder: Any = None
    problems: dict[str, str] | None = None
    pending: set[str] = field(default_factory=set)
    """Roles whose model is not there yet but may appear: worth loading again later."""


class NamedEmbedder:
    """An embedder with the name of its model, which knowledge-base entries record."""

    def __init__(self, name: str, embedder: Any) -> None:
        self.name = name
        self._embedder = embedder

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self._embedder.embed(texts), dtype=np.float32)


def load(config: EngineConfig, roles: Iterable[str] = ROLES) -> Loaded:
    """Load what `config` names of `roles` (blocking: run it in a thread)."""
    problems: dict[str, str] = {}
    loaded = Loaded(problems=problems)
    store = Path(config.model_store).expanduser() if config.model_store else None
    # A package installed since the last look is found only with fresh finder caches.
    importlib.invalidate_caches()
    runtime = importlib.util.find_spec("llama_cpp") is not None
    for role in roles:
        wanted = config.reasoning_model if role == "reasoning" else config.embedding_model
        if not wanted:
            continue
        if not runtime:
            # Checked before the checksums, so that looking again costs next to nothing.
            problems[role] = "llama-cpp-python is not installed (yet: ./dev setup installs it)"
            loaded.pending.add(role)
            continue
        try:
            name, path, manifest = _resolve(wanted, role, store)
            if path is None:
                problems[role] = "not set up (run ./dev setup, or configure a GGUF)"
                loaded.pending.add(role)
                continue
            loaded_model = _open(role, path, manifest, config)
        except Exception as error:  # import, checksum, load: the engine goes on without
            problems[role] = str(error)[:300]
            logger.warning("%s model not loaded: %s", role, error)
            continue
        if role == "reasoning":
            from .reason import ModelReasoner

            loaded.reasoner = ModelReasoner(loaded_model)
        else:
            loaded.embedder = NamedEmbedder(name, loaded_model)
        logger.info("%s model loaded: %s", role, path)
    return loaded


def _resolve(wanted: str, role: str, store: Path | None) -> tuple[str, Path | None, Any]:
    from . import models

    if wanted == AUTO:
        for manifest in models.load_manifests().values():
            if manifest.role != role:
                continue
            try:
                return manifest.name, models.resolve(manifest.name, store), manifest
            except models.ModelMissing:
                continue
        return role, None, None
    manifest = models.find_manifest(wanted)
    return manifest.name, models.resolve(wanted, store), manifest


def _open(role: str, path: Path, manifest: Any, config: EngineConfig) -> Any:
    from .llm import Embedder, ReasoningModel

    if role == "embedding":
        return Embedder(path, threads=config.model_threads)
    n_ctx = min(config.model_ctx, int(manifest.context_length))
    return ReasoningModel(
        path,
        n_ctx=n_ctx,
        threads=config.model_threads,
        chat_format=manifest.chat_format or "chatml",
    )
