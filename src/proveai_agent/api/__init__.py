"""The agent's HTTP surface: OTLP/HTTP ingest, the JSON API, the websocket and /metrics."""
