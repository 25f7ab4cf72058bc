"""Agent configuration: defaults, the TOML config file and command-line overrides."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, is_dataclass
from math import inf
from pathlib import Path
from typing import Any

from .ingest import redact
from .notify import NotifyConfig
from .tickets import TicketConfig

DEFAULT_DRIFT_KEYS = (
    "service.version",
    "gen_ai.request.model",
    "gen_ai.response.model",
    "gen_ai.prompt.name",
    "gen_ai.prompt.version",
    "gen_ai.prompt.template.version",
    "gen_ai.embeddings.model",
    "gen_ai.retrieval.index.version",
    "retrieval.index.version",
)
"""Attributes (span or resource) whose new values are recorded as changes of the service."""


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return Path(base) / "proveai"


@dataclass
class DetectorConfig:
    """Thresholds of the metric detectors; see watch/detectors.py for their meaning."""

    window_s: int = 60
    baseline_s: int = 1800
    baseline_step_s: int = 20
    min_baseline_points: int = 3
    min_rps: float = 0.05
    min_calls: int = 5
    latency_factor: float = 2.0
    latency_mad_k: float = 4.0
    latency_tail_mean_factor: float = 1.2
    latency_min_slow_calls: int = 3
    latency_min_shift: float = 0.1
    latency_shift_k: float = 4.0
    error_ratio_min: float = 0.05
    error_mad_k: float = 4.0
    error_min_errors: int = 3


@dataclass(slots=True)
class QualityConfig:
    """Thresholds of the quality detector.

    Args:
        window_s: the current window, seconds before `now`.
        baseline_s: how far back the baseline starts, seconds before `now`.
        baseline_step_s: seconds between two baseline points.
        min_baseline_points: the fewest baseline windows with enough scores to judge by.
        min_scores: the fewest scores a window (current or baseline) needs to count.
        drop_min: the smallest drop of the mean score that fires, absolute (scores 0–1).
        drop_mad_k: how many σ below the baseline median the mean score must fall.
    """

    window_s: int = 60
    baseline_s: int = 1800
    baseline_step_s: int = 20
    min_baseline_points: int = 3
    min_scores: int = 5
    drop_min: float = 0.1
    drop_mad_k: float = 4.0


@dataclass(slots=True)
class TrendConfig:
    """Thresholds of the drift detector.

    Args:
        recent_s: the recent period, seconds before `now` (6 h).
        baseline_s: the length of the baseline before the recent period (7 days).
        baseline_step_s: the length of one baseline point, and the step between two.
        min_baseline_points: the fewest baseline points with enough traffic to judge by.
        min_count: the fewest calls (or scores) a period needs to count.
        latency_factor: how many times the baseline median the mean latency must reach.
        latency_mad_k: how many σ above the median the mean latency must be.
        tokens_factor: how many times the median the output tokens per call must reach.
        tokens_mad_k: how many σ above the median the tokens per call must be.
        error_ratio_rise: the smallest rise of the error ratio that fires, absolute.
        error_mad_k: how many σ above the median the error ratio must be.
        score_drop_min: the smallest drop of a mean score that fires, absolute.
        score_mad_k: how many σ below the median a mean score must fall.
    """

    recent_s: int = 21600
    baseline_s: int = 7 * 86400
    baseline_step_s: int = 3600
    min_baseline_points: int = 24
    min_count: int = 20
    latency_factor: float = 1.3
    latency_mad_k: float = 3.0
    tokens_factor: float = 1.3
    tokens_mad_k: float = 3.0
    error_ratio_rise: float = 0.02
    error_mad_k: float = 3.0
    score_drop_min: float = 0.05
    score_mad_k: float = 3.0


@dataclass
class PatternConfig:
    """Thresholds and bounds of the trace-pattern detectors (see the module docstring)."""

    window_s: int = 60
    """The current window: the seconds before `now` that are judged."""
    baseline_s: int = 1800
    """How far back the baseline starts; it ends where the current window starts."""
    baseline_step_s: int = 20
    """Seconds between two baseline points."""
    min_baseline_points: int = 3
    """Fewest baseline points for the token baseline to count."""
    min_calls: int = 5
    """Fewest model calls reporting tokens, in the window and in a baseline point."""
    token_factor: float = 3.0
    """A token mean fires above this many times the baseline median..."""
    token_mad_k: float = 4.0
    """...and above the median plus this many σ."""
    loop_min_repeats: int = 5
    """Fewest repeats of one call in one trace or conversation that make a loop."""
    overflow_min_spans: int = 3
    """Fewest overflowing model calls in the window for an overflow signal."""
    overflow_ratio_min: float = 0.1
    """Smallest share of overflowing model calls that fires."""
    overflow_baseline_factor: float = 2.0
    """The share must also be at least this many times the baseline share."""
    near_window_ratio: float = 0.9
    """Input tokens at this share of the model's context window count as overflow."""
    context_windows: dict[str, int] = field(default_factory=dict)
    """Context windows by model-name prefix, on top of the table in watch/patterns.py."""
    max_traces: int = 10_000
    """Traces tracked for loops and conversation links."""
    max_spans: int = 200_000
    """Spans remembered over all tracked traces, and call repeats over all conversations."""
    max_conversations: int = 10_000
    """Conversations tracked for loops."""
    max_calls_per_group: int = 512
    """Distinct calls tracked in one trace or conversation."""
    max_series: int = 256
    """Service and model pairs tracked for tokens and overflow."""


@dataclass
class EngineConfig:
    """How the remediation engine runs (engine/service.py)."""

    reanalyse_s: float = 30.0
    """A case whose signals keep coming is analysed again at most this often."""
    model_weight: float = 0.1
    """How far the model's choice may lift a cause's score (a share of it); low for small
    models, whose choice says little."""
    model_timeout_s: float = 15.0
    """The model's answer is given up after this long; the evidence ranking stands."""
    kb_weight: float = 0.15
    """How far a similar resolved case lifts its cause's evidence score."""
    reasoning_model: str | None = "auto"
    """A manifest name, a GGUF path a manifest lists, "auto" (the one set-up installed)
    or None (evidence ranking alone)."""
    embedding_model: str | None = "auto"
    """The same for the knowledge base's embeddings; None leaves the knowledge base out."""
    model_store: str | None = None
    """Where set-up puts models; default $XDG_DATA_HOME/proveai/models."""
    model_threads: int = 1
    """CPU threads of each model; 1 keeps ingest responsive on a small machine."""
    model_ctx: int = 2048
    """The reasoning model's context in tokens (at most its own)."""
    model_idle_s: float = 300.0
    """A model is opened when it is first needed and closed after this long unused, so
    the agent does not hold it between incidents; 0 opens the models at start and keeps
    them."""
    verify_window_s: int = 300
    """How long a suggestion's verification query must hold once its fix is applied."""


@dataclass
class RedactionConfig:
    """What is redacted from OTLP requests before anything is stored (ingest/redact.py).

    Nothing by default: without a rule, ingest does no redaction work at all.
    """

    keys: list[str] = field(default_factory=list)
    """Attribute keys whose whole value is replaced; a trailing `*` matches a prefix."""
    builtins: list[str] = field(default_factory=list)
    """Built-in patterns replaced inside strings: "card" (Luhn-checked), "email", "phone"."""
    patterns: dict[str, str] = field(default_factory=dict)
    """The operator's own patterns, name = regular expression, applied before built-ins."""
    replacement: str = "[REDACTED:{name}]"
    """What replaces a match; `{name}` is the pattern's name, or "key" for a key rule."""


@dataclass
class Config:
    listen: str = "127.0.0.1:8470"
    data_dir: Path = field(default_factory=default_data_dir)
    prometheus_url: str | None = None
    victoriametrics_url: str | None = None
    keys_file: Path | None = None
    api_keys: str | None = None
    tls_cert: Path | None = None
    """A PEM certificate (leaf, then intermediates): with `tls_key`, the listener serves
    HTTPS only (API, OTLP/HTTP, the websocket as wss); without, plain HTTP."""
    tls_key: Path | None = None
    """The certificate's unencrypted PEM private key."""
    tls_reload_s: float = 5.0
    """How often the certificate and key files are read for a rotation."""
    open_routes: list[str] = field(default_factory=lambda: ["/healthz"])
    body_limit_bytes: int = 16 * 1024 * 1024
    derive_metrics: bool = True
    series_cap: int = 10_000
    new_series_hold_s: float = 15.0
    scrape_interval_s: float = 10.0
    prometheus_retention_s: int = 15 * 86400
    grouping_window_s: int = 900
    retention_age_s: int = 7 * 86400
    retention_bytes: int = 2 * 1024**3
    retention_interval_s: float = 60.0
    """How often retention by age and by size runs over the span store."""
    min_free_disk_mb: int = 512
    """Below this much free space on the data directory's file system span ingest is
    refused (503) so that cases and the audit log, in the same file, keep room to work."""
    source_timeout_s: float = 5.0
    """The timeout of each PromQL request to Prometheus or VictoriaMetrics."""
    source_backoff_max_s: float = 60.0
    """A metrics source that keeps failing is queried less and less often (doubling from
    one scrape interval) up to this long between tries; one answer restores the rhythm."""
    max_pending_spans: int = 100_000
    """Spans accepted but not yet committed; past this ingest answers 503 with Retry-After
    instead of holding more in memory."""
    max_pending_bytes: int = 64 * 1024 * 1024
    """Request bytes (decompressed) whose spans are accepted but not yet committed; past
    this ingest answers 503 too. Large spans reach it long before the count: the memory an
    uncommitted span holds is about three times its size on the wire."""
    auth_failures_per_minute: int = 20
    """Failed authentications one source may make within a minute before it gets 429."""
    exemplar_traces: int = 5
    drift_keys: list[str] = field(default_factory=lambda: list(DEFAULT_DRIFT_KEYS))
    drift_warmup_s: float = 120.0
    """Values an attribute takes in its first seconds are learnt, not recorded as changes."""
    # Files or folders whose content changes are recorded, each for a service:
    # [{"path": "/etc/rag/prompts", "service": "rag-api"}, ...]
    watch_files: list[dict[str, str]] = field(default_factory=list)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    patterns: PatternConfig = field(default_factory=PatternConfig)
    trend: TrendConfig = field(default_factory=TrendConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    tickets: TicketConfig = field(default_factory=TicketConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    redaction: RedactionConfig = field(default_factory=RedactionConfig)
    audit_checkpoint_s: float = 300.0
    """How often the audit chain's head is appended to DATA_DIR/audit-head.log."""
    verify_deadline_factor: float = 4.0
    """A fix that has not held for its verification window after this many windows fails."""
    trend_interval_s: float = 300.0
    """How often the slow-drift detector runs; it reads a week of history each time."""

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0] or "127.0.0.1"

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    @property
    def db_path(self) -> Path:
        return Path(self.data_dir) / "proveai.db"


def _apply(target: Any, values: dict[str, Any], where: str) -> None:
    known = {f.name: f for f in fields(target)}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ValueError(f"{where}: unknown setting {key!r}")
        current = getattr(target, name)
        if is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"{where}: [{key}] must be a table")
            _apply(current, value, f"{where} [{key}]")
        elif name in ("data_dir", "keys_file", "tls_cert", "tls_key") and value is not None:
            setattr(target, name, Path(value))
        else:
            setattr(target, name, value)


POSITIVE = (
    "max_pending_spans",
    "max_pending_bytes",
    "auth_failures_per_minute",
    "source_backoff_max_s",
)
"""Settings that bound something; zero or less would refuse everything or never wait."""


def _check_positive(config: Config) -> None:
    for name in POSITIVE:
        value = getattr(config, name)
        integral = name != "source_backoff_max_s"
        kinds = (int,) if integral else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not 0 < value < inf:
            kind = "a whole number" if integral else "a number"
            raise ValueError(f"{name} must be {kind} above 0, got {value!r}")


def load(path: Path | None = None, **overrides: Any) -> Config:
    """Build the configuration from defaults, then `path` (TOML), then non-None overrides."""
    config = Config()
    if path is not None:
        with open(path, "rb") as fh:
            _apply(config, tomllib.load(fh), str(path))
    _apply(config, {k: v for k, v in overrides.items() if v is not None}, "command line")
    if config.api_keys is None:
        config.api_keys = os.environ.get("PROVEAI_API_KEYS")
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ValueError("tls_cert and tls_key go together: give both, or neither for HTTP")
    _check_positive(config)
    redact.build(config.redaction)
    for item in config.watch_files:
        if not (
            isinstance(item, dict)
            and isinstance(item.get("path"), str)
            and isinstance(item.get("service"), str)
        ):
            raise ValueError(
                f"watch_files: each entry needs a path and a service, got {item!r}"
            )
    return config
