"""Fixtures that run a real agent in the test's event loop on a free loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proveai_agent.agent import Agent
from proveai_agent.config import Config

OPERATOR_KEY = "test-operator-key-0123456789"
READ_KEY = "test-read-key-0123456789"


def agent_config(data_dir: Path, **overrides: Any) -> Config:
    config = Config(
        listen="127.0.0.1:0",
        data_dir=data_dir,
        api_keys=f"{OPERATOR_KEY},{READ_KEY}:read",
        scrape_interval_s=3600,
        drift_warmup_s=0,
    )
    # Models are loaded only where a test asks for them.
    config.engine.reasoning_model = config.engine.embedding_model = None
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


@pytest.fixture
async def agent_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start agents with config overrides; every one is stopped at the end of the test."""
    started: list[Agent] = []

    async def start(**overrides: Any) -> Agent:
        data_dir = overrides.pop("data_dir", tmp_path / f"agent{len(started)}")
        agent = Agent(agent_config(data_dir, **overrides))
        await agent.start()
        started.append(agent)
        return agent

    yield start
    for agent in started:
        await agent.stop()


@pytest.fixture
async def agent(agent_factory: Callable[..., Any]) -> Agent:
    return await agent_factory()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
