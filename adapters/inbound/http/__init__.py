"""The OpenAI-compatible HTTP API: a second driving adapter on the same use case as gRPC."""
