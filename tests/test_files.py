"""Watched files: a content change is one change, with hashes before and after."""

from __future__ import annotations

import asyncio
import hashlib
import time

from agentfix import READ_KEY

ORIGINAL = "You are a support assistant.\nAnswer from the context.\nCite the chunk ids.\n"
EDITED = (
    "You are a support assistant.\nAnswer briefly from the context.\nCite the ids.\nBe kind.\n"
)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def changes(agent, http, expected: int, timeout_s: float = 10) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        async with http.get(f"{agent.url}/api/changes", headers={"X-API-Key": READ_KEY}) as r:
            items = (await r.json())["items"]
        if len(items) >= expected or time.monotonic() > deadline:
            return items
        await asyncio.sleep(0.1)


async def watching(agent_factory, tmp_path):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "answer.txt").write_text(ORIGINAL)
    agent = await agent_factory(watch_files=[{"path": str(prompts), "service": "rag-api"}])
    await asyncio.wait_for(agent.file_watcher.ready.wait(), 10)
    await asyncio.sleep(0.5)  # the watcher is live once its first poll has run
    return agent, prompts


async def test_a_burst_of_writes_to_one_file_is_one_change(agent_factory, http, tmp_path):
    agent, prompts = await watching(agent_factory, tmp_path)
    target = prompts / "answer.txt"
    for text in ("draft 1\n", "draft 2\n", ORIGINAL + "x\n", EDITED):
        target.write_text(text)
        await asyncio.sleep(0.02)
    (change,) = await changes(agent, http, 1)
    await asyncio.sleep(1.0)
    assert len(await changes(agent, http, 2, timeout_s=0)) == 1
    assert (change["kind"], change["service"]) == ("file", "rag-api")
    assert change["before"] == sha(ORIGINAL)
    assert change["after"] == sha(EDITED)
    assert change["source"].endswith("prompts/answer.txt")
    # By hand: lines 2 and 3 replaced and one added: 3 added, 2 removed; the first four
    # changed lines are quoted in diff order.
    assert change["summary"] == (
        "answer.txt: 5 lines changed (+3 -2): -Answer from the context. | -Cite the chunk ids."
        " | +Answer briefly from the context. | +Cite the ids."
    )


async def test_a_write_that_keeps_the_content_records_nothing(agent_factory, http, tmp_path):
    agent, prompts = await watching(agent_factory, tmp_path)
    (prompts / "answer.txt").write_text(ORIGINAL)
    await asyncio.sleep(1.5)
    assert await changes(agent, http, 1, timeout_s=0) == []


async def test_created_and_deleted_files_are_changes(agent_factory, http, tmp_path):
    agent, prompts = await watching(agent_factory, tmp_path)
    (prompts / "index.json").write_text('{"version": 7}')
    (created,) = await changes(agent, http, 1)
    assert created["summary"] == "index.json created (14 bytes)"
    assert "before" not in created and created["after"] == sha('{"version": 7}')
    (prompts / "answer.txt").unlink()
    items = await changes(agent, http, 2)
    assert items[1]["summary"] == "answer.txt deleted"
    assert items[1]["before"] == sha(ORIGINAL) and "after" not in items[1]
