"""`proveai-agent report`: the compliance report's figures, computed by hand."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from proveai_agent.cases.service import new_case, rfc3339
from proveai_agent.report import percentile
from proveai_agent.spans import Span

DAY = 1_796_169_600.0  # 2026-12-02 00:00 UTC


def entry(i: int, at: float, service: str, score: float | None = None) -> Span:
    span = Span(
        trace_id=f"{i:032x}",
        span_id=f"{i:016x}",
        parent_span_id=None,
        service=service,
        name="POST /query",
        kind="SPAN_KIND_SERVER",
        status="STATUS_CODE_OK",
        status_message="",
        start_ns=int(at * 1e9),
        end_ns=int((at + 0.5) * 1e9),
    )
    if score is not None:
        span.scores = {"relevance": score}
    return span


def report(data_dir: Path, since: str, until: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "proveai_agent", "report", "--from", since, "--to", until]
    return subprocess.run(
        [*command, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_the_report_counts_requests_scores_incidents_and_remediation(agent) -> None:
    # Three requests of rag-api with relevance 0.8, 0.9 and 1.0 (mean 0.9) and one of
    # chat-api on the day; one request the day before, outside the period.
    spans = [entry(1, DAY + 100, "rag-api", 0.8), entry(2, DAY + 200, "rag-api", 0.9)]
    spans += [entry(3, DAY + 300, "rag-api", 1.0), entry(4, DAY + 400, "chat-api")]
    spans.append(entry(5, DAY - 100, "rag-api", 0.1))
    await agent.span_store.write(spans, [])
    # Three cases resolved after 600, 1200 and 3000 s: mean 1600 s = 26.7 min; p50 the
    # middle, 20.0 min; p90 at rank 0.9 × 2 = 1.8: 1200 + 0.8 × 1800 = 2640 s = 44.0 min.
    for number, (failure_class, ttr) in enumerate(
        [("AGENT_LOOP", 600), ("AGENT_LOOP", 1200), ("RETRIEVAL_DRIFT", 3000)], start=1
    ):
        opened = DAY + 1000 * number
        doc = new_case(
            title=f"case {number}",
            service="rag-api",
            at=rfc3339(opened),
            trigger="trace_pattern",
            severity="high",
            snapshot={},
            actor="agent",
        )
        doc["failure_class"] = failure_class
        doc["state"] = "RESOLVED"
        doc["resolution"] = {
            "root_cause": "planner-prompt-changed",
            "fix_applied": "restore the prompt",
            "verified_at": rfc3339(opened + ttr),
            "time_to_remediate_s": ttr,
        }
        await agent.case_store.insert(doc, opened)
    head = await agent.audit.store.append("ana", "case.note", "CASE-1", {"text": "done"})

    done = await asyncio.to_thread(report, agent.config.data_dir, "2026-12-02", "2026-12-03")
    assert done.returncode == 0, done.stderr
    text = done.stdout

    assert "| rag-api | 3 |" in text and "| chat-api | 1 |" in text and "| all | 4 |" in text
    assert "| rag-api | relevance | 0.900 | 3 |" in text
    assert "| AGENT_LOOP | 2 |" in text and "| RETRIEVAL_DRIFT | 1 |" in text
    assert (
        "Fixes verified: 3. Time to remediate: mean 26.7 min, p50 20.0 min, p90 44.0 min."
        in (text)
    )
    assert f"hash `{head['hash']}`" in text
    # Without --config the report names the default listen address.
    assert "| agent API and OTLP/HTTP (listens) | http://127.0.0.1:8470 |" in text


def test_percentiles_interpolate_between_ranks() -> None:
    assert percentile([600, 1200, 3000], 50) == 1200
    assert percentile([600, 1200, 3000], 90) == 2640
    assert percentile([5.0], 90) == 5.0


def test_a_bad_period_or_no_database_is_refused(tmp_path: Path) -> None:
    backwards = report(tmp_path, "2026-12-03", "2026-12-02")
    assert backwards.returncode == 2 and "--to must come after --from" in backwards.stderr
    garbage = report(tmp_path, "yesterday", "2026-12-02")
    assert garbage.returncode == 2 and "Invalid isoformat" in garbage.stderr
    empty = report(tmp_path / "none", "2026-12-01", "2026-12-02")
    assert empty.returncode == 2 and "no database" in empty.stderr
