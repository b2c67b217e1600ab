"""Driving adapters: the gRPC and OpenAI-compatible HTTP servers and what both share."""
