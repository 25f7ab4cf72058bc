"""Metrics the agent derives from spans and exposes on /metrics."""
