"""The watcher: span metrics read back through PromQL, summarised and checked for anomalies."""

from proveai_agent.watch.detectors import evaluate
from proveai_agent.watch.overview import overview
from proveai_agent.watch.promql import MetricsSource, SourceError
from proveai_agent.watch.schemes import Scheme, detect, scheme_from_names

__all__ = [
    "MetricsSource",
    "Scheme",
    "SourceError",
    "detect",
    "evaluate",
    "overview",
    "scheme_from_names",
]
