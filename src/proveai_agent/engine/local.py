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
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
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
    on_demand: list[OnDemand] = field(default_factory=list)
    """The models opened when first needed, for the owner to close when idle."""


class OnDemand:
    """A model opened at its first use and closed once it has not been used for `idle_s`.

    The two local models are most of the agent's memory (the reasoning model about
    170 MiB, the embedding model about 90 MiB) and are used only when a case is analysed
    or the knowledge base learns; between incidents they need not be held. Opening the
    small models takes well under a second, which an analysis can afford.

    Args:
        opener: opens the model (blocking); called again after each close.
        idle_s: how long unused before `close_if_idle` closes it.
        clock: monotonic seconds; replaceable so a test need not wait.
    """

    def __init__(
        self,
        opener: Callable[[], Any],
        idle_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._opener = opener
        self.idle_s = idle_s
        self.clock = clock
        self._lock = threading.Lock()
        self._model: Any = None
        self._busy = 0
        self._used = -math.inf
        self.opened = 0
        """How many times the model was opened."""

    @property
    def is_open(self) -> bool:
        return self._model is not None

    def _call(self, method: str, *args: Any) -> Any:
        with self._lock:
            if self._model is None:
                self._model = self._opener()
                self.opened += 1
            model = self._model
            self._busy += 1
        try:
            return getattr(model, method)(*args)
        finally:
            with self._lock:
                self._busy -= 1
                self._used = self.clock()

    def complete_json(self, *args: Any) -> Any:
        return self._call("complete_json", *args)

    def embed(self, texts: list[str]) -> Any:
        return self._call("embed", texts)

    def close_if_idle(self) -> bool:
        """Close the model when it is open, not in use and unused for `idle_s`; True when
        it was closed (blocking: run it in a thread)."""
        with self._lock:
            if self._model is None or self._busy or self.clock() - self._used < self.idle_s:
                return False
            model, self._model = self._model, None
        model.close()
        logger.info("model closed after %.0f s unused", self.idle_s)
        return True

    def close(self) -> None:
        with self._lock:
            model, self._model = self._model, None
        if model is not None:
            model.close()


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
            if config.model_idle_s > 0:
                # Opened when first needed: a model that cannot be opened then is an
                # analysis without the model, which the engine already goes on from.
                loaded_model = OnDemand(
                    partial(_open, role, path, manifest, config), config.model_idle_s
                )
                loaded.on_demand.append(loaded_model)
            else:
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
