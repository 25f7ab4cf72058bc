"""The case list's rows read by SQLite out of stored case documents, on a real database."""

from __future__ import annotations

import pytest

from proveai_agent.cases.service import summary
from proveai_agent.store import db
from proveai_agent.store.cases import CaseStore


def case_doc(title: str, service: str, **fields: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "title": title,
        "state": "DETECTED",
        "severity": "medium",
        "service": service,
        "trigger": "manual",
        "opened_at": "2026-12-03T10:00:00Z",
        "updated_at": "2026-12-03T10:05:00Z",
        "signals": [],
        "hypotheses": [],
        "snapshot": {"traces": [{"spans": ["x" * 5000]}]},
    }
    doc.update(fields)
    return doc


@pytest.fixture
async def cases(tmp_path):
    path = tmp_path / "proveai.db"
    writer = await db.connect(path)
    await db.migrate(writer)
    reader = await db.connect(path)
    store = CaseStore(writer, reader)
    docs = [
        case_doc("slow answers", "rag-api"),
        case_doc(
            "errors after deploy",
            "rag-api",
            failure_class="ERROR_SPIKE",
            advisory=True,
            signals=[{"key": "a"}, {"key": "b"}, {"key": "c"}],
            hypotheses=[{"confidence": 0.4}, {"confidence": 0.75}, {"confidence": None}],
        ),
        case_doc("empty answers", "search", state="RESOLVED", hypotheses=[{"id": "h"}]),
    ]
    for doc in docs:
        await store.insert(doc, 1_796_000_000.0)
    yield store
    await reader.close()
    await writer.close()


async def test_summaries_hold_the_fields_of_the_case_list(cases):
    items, total = await cases.summaries()

    assert total == 3
    assert items == [
        {
            "id": "CASE-3",
            "title": "empty answers",
            "state": "RESOLVED",
            "severity": "medium",
            "advisory": False,
            "service": "search",
            "trigger": "manual",
            "failure_class": None,
            "opened_at": "2026-12-03T10:00:00Z",
            "updated_at": "2026-12-03T10:05:00Z",
            "signals": 0,
            "top_confidence": 0.0,
        },
        {
            "id": "CASE-2",
            "title": "errors after deploy",
            "state": "DETECTED",
            "severity": "medium",
            "advisory": True,
            "service": "rag-api",
            "trigger": "manual",
            "failure_class": "ERROR_SPIKE",
            "opened_at": "2026-12-03T10:00:00Z",
            "updated_at": "2026-12-03T10:05:00Z",
            "signals": 3,
            "top_confidence": 0.75,
        },
        {
            "id": "CASE-1",
            "title": "slow answers",
            "state": "DETECTED",
            "severity": "medium",
            "advisory": False,
            "service": "rag-api",
            "trigger": "manual",
            "failure_class": None,
            "opened_at": "2026-12-03T10:00:00Z",
            "updated_at": "2026-12-03T10:05:00Z",
            "signals": 0,
            "top_confidence": None,
        },
    ]


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"state": "open"},
        {"state": "RESOLVED"},
        {"failure_class": "ERROR_SPIKE"},
        {"service": "rag-api"},
        {"text": "answers"},
        {"limit": 1, "before": 3},
    ],
)
async def test_summaries_are_the_summaries_of_the_listed_documents(cases, filters):
    docs, total = await cases.list(**filters)
    items, summary_total = await cases.summaries(**filters)

    assert summary_total == total
    assert items == [summary(doc) for doc in docs]
