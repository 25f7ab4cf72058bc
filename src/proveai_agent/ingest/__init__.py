"""Ingest: OTLP request bodies decoded and normalised into the records of `spans`."""
