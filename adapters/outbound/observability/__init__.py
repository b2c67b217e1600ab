"""Prometheus metrics, the ops HTTP endpoints, OpenTelemetry tracing and structured logs."""
