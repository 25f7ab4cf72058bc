"""Agent configuration: defaults, the TOML config file and command-line overrides."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

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
    error_ratio_min: float = 0.05
    error_mad_k: float = 4.0


@dataclass
class Config:
    listen: str = "127.0.0.1:8470"
    data_dir: Path = field(default_factory=default_data_dir)
    prometheus_url: str | None = None
    victoriametrics_url: str | None = None
    keys_file: Path | None = None
    api_keys: str | None = None
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
    exemplar_traces: int = 5
    drift_keys: list[str] = field(default_factory=lambda: list(DEFAULT_DRIFT_KEYS))
    # Files or folders whose content changes are recorded, each for a service:
    # [{"path": "/etc/rag/prompts", "service": "rag-api"}, ...]
    watch_files: list[dict[str, str]] = field(default_factory=list)
    detector: DetectorConfig = field(default_factory=DetectorConfig)

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
        if isinstance(current, DetectorConfig):
            if not isinstance(value, dict):
                raise ValueError(f"{where}: [{key}] must be a table")
            _apply(current, value, f"{where} [{key}]")
        elif name in ("data_dir", "keys_file") and value is not None:
            setattr(target, name, Path(value))
        else:
            setattr(target, name, value)


def load(path: Path | None = None, **overrides: Any) -> Config:
    """Build the configuration from defaults, then `path` (TOML), then non-None overrides."""
    config = Config()
    if path is not None:
        with open(path, "rb") as fh:
            _apply(config, tomllib.load(fh), str(path))
    _apply(config, {k: v for k, v in overrides.items() if v is not None}, "command line")
    if config.api_keys is None:
        config.api_keys = os.environ.get("PROVEAI_API_KEYS")
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
