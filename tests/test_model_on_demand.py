"""The local models open when first needed and close again when unused for a while.

They are most of the agent's memory and are needed only while a case is analysed, so the
agent holds them between incidents only if told to (`model_idle_s = 0`).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from modelfix import tiny_manifest
from proveai_agent.config import EngineConfig
from proveai_agent.engine import local
from proveai_agent.engine.llm import InvalidOutput, ReasoningModel
from proveai_agent.engine.models import MODELS_DIR_ENV

CANDIDATES = ["model-version-changed", "prompt-template-changed"]


@pytest.fixture
def tiny_store(tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A model store holding the tiny GGUF under the manifest name "tiny"."""
    tiny_manifest(tmp_path / "models", tiny_gguf)
    monkeypatch.setenv(MODELS_DIR_ENV, str(tmp_path / "models"))
    store = tmp_path / "store"
    store.mkdir()
    (store / tiny_gguf.name).write_bytes(tiny_gguf.read_bytes())
    return store


def engine_config(store: Path, idle_s: float) -> EngineConfig:
    return EngineConfig(
        reasoning_model="tiny",
        embedding_model=None,
        model_store=str(store),
        model_ctx=512,
        model_idle_s=idle_s,
    )


def ask(reasoner: Any) -> None:
    """One question to the model. The tiny model never ends a free string (see modelfix),
    so its answer is refused as unfinished: what counts here is that it was asked."""
    with pytest.raises(InvalidOutput, match="unfinished"):
        reasoner.choose("p95 of POST /ask up 8x after a deploy", CANDIDATES, 30.0)


def test_the_model_opens_at_first_use_and_closes_after_its_idle_time(tiny_store: Path) -> None:
    loaded = local.load(engine_config(tiny_store, idle_s=60))
    assert loaded.reasoner is not None and loaded.problems == {}
    [model] = loaded.on_demand
    assert not model.is_open and model.opened == 0

    try:
        ask(loaded.reasoner)
        assert model.is_open and model.opened == 1
        used = time.monotonic()
        model.clock = lambda: used + 30  # half the idle time later
        assert model.close_if_idle() is False and model.is_open
        model.clock = lambda: used + 61
        assert model.close_if_idle() is True and not model.is_open

        # The next analysis opens it again.
        model.clock = time.monotonic
        ask(loaded.reasoner)
        assert model.opened == 2
    finally:
        model.close()


def test_with_no_idle_time_the_model_opens_at_load_and_stays(tiny_store: Path) -> None:
    loaded = local.load(engine_config(tiny_store, idle_s=0))
    assert loaded.on_demand == []
    assert isinstance(loaded.reasoner.model, ReasoningModel)
    try:
        ask(loaded.reasoner)
    finally:
        loaded.reasoner.model.close()


async def test_the_agent_closes_its_idle_model(agent_factory: Any, tiny_store: Path) -> None:
    agent = await agent_factory(engine=engine_config(tiny_store, idle_s=0.2))
    for _ in range(500):
        if agent.on_demand:
            break
        await asyncio.sleep(0.01)
    [model] = agent.on_demand
    assert agent.engine.reasoner is not None
    assert not model.is_open  # started without opening it: nothing was analysed

    await asyncio.to_thread(ask, agent.engine.reasoner)
    assert model.opened == 1
    for _ in range(500):  # the agent looks every 0.1 s; unused for 0.2 s it closes
        if not model.is_open:
            break
        await asyncio.sleep(0.01)
    assert not model.is_open and model.opened == 1


async def test_the_embedder_opened_to_seed_the_knowledge_base_is_closed_after(
    agent_factory: Any, model_store: dict[str, Path]
) -> None:
    config = EngineConfig(
        reasoning_model=None, embedding_model="all-minilm-l6-v2", model_idle_s=300
    )
    agent = await agent_factory(engine=config)
    for _ in range(1000):
        if agent.knowledge is not None and agent.on_demand and not agent.on_demand[0].is_open:
            break
        await asyncio.sleep(0.01)
    assert agent.knowledge is not None, agent.model_problems
    [model] = agent.on_demand
    # Opened once to embed the seeds of a new knowledge base, then closed at once rather
    # than after the idle time.
    assert model.opened == 1 and not model.is_open
    knowledge = agent.knowledge
    similar = await asyncio.to_thread(
        knowledge.similar, "p95 latency up after a model version change"
    )
    assert similar and model.opened == 2
