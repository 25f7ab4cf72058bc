"""The case list redraws a changed case's row alone, and what it draws stays true.

A live delivery usually changes one case. Drawing every visible row again for it is what
made a delivery cost as much as a whole screen; these tests count the lines the table
draws and read back what it shows after a full redraw.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from textual.app import App, ComposeResult

from proveai_tui.widgets.case_table import CaseTable

pytestmark = pytest.mark.console

SIZE = (80, 24)


def summary(number: int, state: str = "DETECTED") -> dict[str, Any]:
    return {
        "id": f"CASE-{number}",
        "severity": "high",
        "state": state,
        "failure_class": "ERROR_SPIKE",
        "service": "billing",
        # One a minute, newest the highest number: the table lists newest first.
        "opened_at": f"2026-12-03T10:{number:02d}:00Z",
        "top_confidence": None,
    }


class TableApp(App[None]):
    def compose(self) -> ComposeResult:
        yield CaseTable()


@contextmanager
def lines_drawn(table: CaseTable) -> Iterator[list[int]]:
    """The lines the table draws while the block runs, in order."""
    drawn: list[int] = []
    draw = table.render_line

    def counting(y: int) -> Any:
        drawn.append(y)
        return draw(y)

    table.render_line = counting  # type: ignore[method-assign]
    try:
        yield drawn
    finally:
        table.render_line = draw  # type: ignore[method-assign]


async def shown_and_cached(pilot: Any, table: CaseTable, cases: list[dict[str, Any]]) -> None:
    """Show cases, then draw the table once more: the caches then hold every visible row
    as it is now, which a change must not leave behind."""
    table.show_cases(cases)
    await pilot.pause()
    table.refresh()
    with lines_drawn(table) as drawn:
        for _ in range(50):  # on a busy machine the redraw may come a pause or two later
            await pilot.pause()
            if drawn:
                break
        for _ in range(50):  # then nothing more to draw
            drawn.clear()
            await pilot.pause()
            if not drawn:
                break


def line_text(table: CaseTable, y: int) -> str:
    return "".join(segment.text for segment in table.render_line(y))


def states_shown(table: CaseTable, rows: int) -> dict[str, str]:
    """Case id to the state word on its line, for the first `rows` rows under the header."""
    shown = {}
    for y in range(1, rows + 1):
        words = line_text(table, y).split()
        shown[words[0]] = words[2]  # case, severity, state, ...
    return shown


async def test_a_changed_case_redraws_its_row_alone() -> None:
    cases = [summary(n) for n in range(30)]
    app = TableApp()
    async with app.run_test(size=SIZE) as pilot:
        table = app.query_one(CaseTable)
        await shown_and_cached(pilot, table, cases)
        assert table.case_ids[:3] == ["CASE-29", "CASE-28", "CASE-27"]

        changed = [dict(case) for case in cases]
        changed[27]["state"] = "TRIAGED"  # CASE-27: the third row, line 3 below the header
        with lines_drawn(table) as drawn:
            table.show_cases(changed)
            await pilot.pause()
        assert set(drawn) == {3}
        assert "TRIAGED" in line_text(table, 3)

        # Scrolled away and back, every visible line is drawn afresh: no stale row.
        table.scroll_to(y=10, animate=False)
        await pilot.pause()
        table.scroll_to(y=0, animate=False)
        await pilot.pause()
        shown = states_shown(table, 15)
        assert shown["CASE-27"] == "TRIAGED"
        assert {state for case, state in shown.items() if case != "CASE-27"} == {"DETECTED"}


async def test_a_change_of_a_row_out_of_view_draws_nothing_now_and_shows_later() -> None:
    cases = [summary(n) for n in range(40)]
    app = TableApp()
    async with app.run_test(size=SIZE) as pilot:
        table = app.query_one(CaseTable)
        await shown_and_cached(pilot, table, cases)
        changed = [dict(case) for case in cases]
        # CASE-2: the 38th row, far below the screen; TRIAGED fits the state column as it
        # is (a wider word would widen the column and so redraw every row).
        changed[2]["state"] = "TRIAGED"
        with lines_drawn(table) as drawn:
            table.show_cases(changed)
            await pilot.pause()
        assert drawn == []

        await pilot.press("end")
        await pilot.pause()
        last = [line_text(table, y) for y in range(1, 24)]
        assert any(line.split()[:3] == ["CASE-2", "high", "TRIAGED"] for line in last)


async def test_without_the_caches_it_knows_a_change_still_shows() -> None:
    """Should the table keep its caches under other names, the change goes through
    `update_cell` and is drawn all the same."""
    cases = [summary(n) for n in range(5)]
    app = TableApp()
    async with app.run_test(size=SIZE) as pilot:
        table = app.query_one(CaseTable)
        await shown_and_cached(pilot, table, cases)
        line_cache = table._line_cache
        del table._line_cache
        try:
            changed = [dict(case) for case in cases]
            changed[4]["state"] = "TRIAGED"  # CASE-4: the first row
            table.show_cases(changed)
        finally:
            table._line_cache = line_cache
        await pilot.pause()
        assert states_shown(table, 5) == {
            "CASE-4": "TRIAGED",
            "CASE-3": "DETECTED",
            "CASE-2": "DETECTED",
            "CASE-1": "DETECTED",
            "CASE-0": "DETECTED",
        }
