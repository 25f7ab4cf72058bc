"""The metric back-ends the agent reads from, run as local child processes."""

from proveai_agent.stack.native import (
    MissingBinary,
    NativeStack,
    Prometheus,
    StackError,
    VictoriaMetrics,
    free_port,
    render_prometheus_config,
)

__all__ = [
    "MissingBinary",
    "NativeStack",
    "Prometheus",
    "StackError",
    "VictoriaMetrics",
    "free_port",
    "render_prometheus_config",
]
