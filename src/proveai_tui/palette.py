"""The few styles the console's words carry; colour only repeats what the words already say.

The colours are light enough to stay readable as greys when NO_COLOR turns them monochrome.
"""

ALARM = "bold #ff6e6e"
WARN = "bold #ffd75f"
GOOD = "#5fd75f"
ACCENT = "#5fd7ff"
MUTED = "dim"

SEVERITY = {
    "critical": "bold reverse #ff6e6e",
    "high": ALARM,
    "medium": "#ffd75f",
    "low": MUTED,
}

SPAN_STATUS = {"ERROR": ALARM, "ok": GOOD, "unset": MUTED}
