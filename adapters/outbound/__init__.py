"""Driven adapters: providers, embedders, response stores, vector indexes, metrics, tracing."""
