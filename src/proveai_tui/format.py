"""How the console writes numbers, times and states, so that every screen says them alike.

Unknown values are written as "no data" (panels) or "—" (tables and lists), never as zero.
"""

from __future__ import annotations

import functools
import math
from datetime import UTC, datetime
from typing import Any

NO_DATA = "no data"
DASH = "—"

SEVERITY_RANK = {"critical": 0, "high": 1, "medium": 2, "low": 3}
CLOSED_STATES = frozenset({"RESOLVED", "CLOSED"})
STATUS_WORDS = {
    "STATUS_CODE_ERROR": "ERROR",
    "STATUS_CODE_OK": "ok",
    "STATUS_CODE_UNSET": "unset",
}


def mapping(value: Any) -> dict[str, Any]:
    """The value when it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def items(value: Any) -> list[Any]:
    """The value when it is a JSON array, else an empty one."""
    return value if isinstance(value, list) else []


def is_number(value: Any) -> bool:
    """True for a finite int or float (bools and NaN are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)


def rate(rps: Any, missing: str = NO_DATA) -> str:
    """A request rate: two decimals below 1 rps, one below 100, none above.

    The rule goes by the rounded value, zero included (0.00 rps), so that equal magnitudes
    always read alike; a rate above zero that would round to 0.00 reads "<0.01 rps".
    """
    if not is_number(rps):
        return missing
    if 0 < rps < 0.005:
        return "<0.01 rps"
    if round(rps, 2) < 1:
        return f"{rps:.2f} rps"
    if round(rps, 1) < 100:
        return f"{rps:.1f} rps"
    return f"{rps:.0f} rps"


def count(value: Any, missing: str = DASH) -> str:
    """A count that arrives as a float (calls over a window): 252, 1,204."""
    if not is_number(value):
        return missing
    return f"{round(value):,}"


def window(value: Any, missing: str = DASH) -> str:
    """A window length in seconds, in the largest whole unit: 45 s, 5 m, 2 h, 3 d."""
    if not is_number(value) or value < 0:
        return missing
    for size, unit in ((86_400, "d"), (3_600, "h"), (60, "m")):
        if value >= size and value % size == 0:
            return f"{int(value // size)} {unit}"
    return f"{value:g} s"


def percent(ratio: Any, missing: str = NO_DATA) -> str:
    """An error ratio as a percentage: 0.015 is 1.5 %."""
    if not is_number(ratio):
        return missing
    pct = ratio * 100
    if 0 < pct < 0.05:
        return "<0.1 %"
    if pct >= 100:
        return "100 %"
    return f"{pct:.1f} %"


def seconds(value: Any, missing: str = NO_DATA) -> str:
    """A latency or duration: 85 ms, 0.84 s, 12.3 s, 240 s."""
    if not is_number(value):
        return missing
    if round(value, 4) < 0.1:
        return f"{value * 1000:.0f} ms"
    if round(value, 2) < 10:
        return f"{value:.2f} s"
    if round(value, 1) < 100:
        return f"{value:.1f} s"
    return f"{value:.0f} s"


def span_duration(start_ns: Any, end_ns: Any) -> str:
    """The duration of a span from its nanosecond timestamps."""
    if not (is_number(start_ns) and is_number(end_ns)) or end_ns < start_ns:
        return DASH
    return seconds((end_ns - start_ns) / 1e9)


def number(value: Any) -> str:
    """An evidence value as written in a list: integers as they are, floats to 4 digits."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else DASH
    return str(value)


def tokens(input_tokens: Any, output_tokens: Any) -> str:
    """Token usage of a GenAI span, e.g. "812 in / 95 out tok"; empty when neither is known."""
    parts = []
    if is_number(input_tokens):
        parts.append(f"{int(input_tokens)} in")
    if is_number(output_tokens):
        parts.append(f"{int(output_tokens)} out")
    return " / ".join(parts) + " tok" if parts else ""


def parse_time(value: Any) -> datetime | None:
    """An API timestamp (RFC 3339, or epoch seconds) as an aware UTC datetime."""
    if is_number(value):
        return datetime.fromtimestamp(value, UTC)
    if not isinstance(value, str) or not value:
        return None
    return _parse_text(value)


@functools.lru_cache(maxsize=8192)
def _parse_text(value: str) -> datetime | None:
    """Cached: every live delivery brings the same few hundred timestamps again."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def clock(value: Any) -> str:
    """A timestamp for people: 2025-06-01 12:00:03 UTC."""
    parsed = parse_time(value)
    return parsed.strftime("%Y-%m-%d %H:%M:%S UTC") if parsed else DASH


def age(value: Any, now: datetime) -> str:
    """How long ago a timestamp was, coarsely: <1m, 12m, 3h05m, 4d."""
    parsed = parse_time(value)
    if parsed is None:
        return DASH
    elapsed = max(0, int((now - parsed).total_seconds()))
    if elapsed < 60:
        return "<1m"
    minutes = elapsed // 60
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d"


def severity(value: Any) -> str:
    """A severity as its word, lower case (critical, high, medium, low)."""
    return str(value).lower() if value else DASH


def state(value: Any) -> str:
    """A case state as the API names it (DETECTED, INVESTIGATING, ...)."""
    return str(value).upper() if value else DASH


def span_status(value: Any) -> str:
    """A span status as a word: ERROR, ok, unset."""
    if not value:
        return "unset"
    return STATUS_WORDS.get(str(value), str(value).removeprefix("STATUS_CODE_").lower())


def is_open(case: dict[str, Any]) -> bool:
    """True while a case still needs someone (not RESOLVED or CLOSED)."""
    return state(case.get("state")) not in CLOSED_STATES


def ellipsize(text: str, width: int) -> str:
    """Cut text to width characters, marking the cut with an ellipsis."""
    if width <= 0:
        return ""
    if len(text) <= width:
        return text
    return text[: width - 1] + "…"
