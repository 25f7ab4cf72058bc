"""Fix verification: whether a suggestion's PromQL held for its window after the fix.

From `window_s` after verification started, each cycle asks the source for the worst value
of the query over the last `window_s` (`min_over_time` for `>`/`>=`, `max_over_time` for
`<`/`<=`, as a subquery at a one-second step, so that no sample falls between two
steps): when that worst value is on the right side of
the threshold the fix held. When it still has not after `deadline_factor` windows, the fix
failed. Without a source or a query nothing can be told and the case waits; a query the
source refuses fails the verification with the source's message.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from ..watch.promql import MetricsSource, SourceError, to_float

COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
STEP_S = 1


def worst_query(spec: dict[str, Any]) -> str:
    """The PromQL of the worst value of the verification query over its window."""
    over = "min_over_time" if spec["comparator"].startswith(">") else "max_over_time"
    return f"{over}(({spec['query']})[{int(spec['window_s'])}s:{STEP_S}s])"


async def judge(
    source: MetricsSource | None, spec: dict[str, Any], now: float, deadline_factor: float
) -> tuple[bool, str] | None:
    """(held, what was seen) once the verification can tell; None while it cannot yet."""
    query, comparator = spec.get("query"), spec.get("comparator")
    threshold, window = spec.get("threshold"), spec.get("window_s")
    started = float(spec.get("started_at") or now)
    if not query or comparator not in COMPARE or threshold is None or not window:
        if now >= started + deadline_factor * float(window or 300):
            return False, "no verification query: an engineer has to judge the fix"
        return None
    if source is None or now < started + float(window):
        return None
    promql = worst_query(spec)
    late = now >= started + deadline_factor * float(window)
    try:
        result = await source.query(promql, now)
    except SourceError as error:
        return (False, f"verification query failed: {error.message}") if late else None
    values = [to_float(item.get("value", [None, None])[1]) for item in result]
    found = [v for v in values if v is not None]
    if not found:
        return (False, f"{promql} returned no data") if late else None
    worst = min(found) if comparator.startswith(">") else max(found)
    if COMPARE[comparator](worst, float(threshold)):
        return (
            True,
            f"{query} stayed {comparator} {threshold:g} for {window}s (worst {worst:.4g})",
        )
    if late:
        return False, (
            f"{query} did not stay {comparator} {threshold:g} for {window}s within "
            f"{deadline_factor:g} windows (worst {worst:.4g})"
        )
    return None
