"""The one error of a bad setting, in a module of its own: settings and the adapters that read
their own variables (tracing's OTEL_*) raise it, and settings imports adapters."""


class ConfigError(Exception):
    """Invalid configuration; the message names each variable and what is wrong with it."""
