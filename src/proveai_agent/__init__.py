"""Prove AI agent: OTLP ingest, span store, derived metrics, detectors, cases and API."""

__version__ = "0.1.0"
