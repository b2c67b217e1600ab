from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from adapters.outbound.observability.logs import REDACTED, SecretRedactor, configure_logging

KEY = "sk-live-0123456789abcdef"
TOKEN = "client-token-XYZ987"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    level, before = root.level, list(root.handlers)
    out = io.StringIO()
    yield out
    for handler in [h for h in root.handlers if h not in before]:
        root.removeHandler(handler)
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_level_logger_message_and_extras(stream: io.StringIO) -> None:
    configure_logging("info", json=True, stream=stream)
    log = logging.getLogger("llm_proxy.test")
    log.debug("not shown")
    log.info("served %s in %.1fs", "gpt-4o", 0.25, extra={"provider": "openai", "tokens": 12})

    (line,) = lines(stream)
    assert line["level"] == "INFO"
    assert line["logger"] == "llm_proxy.test"
    assert line["message"] == "served gpt-4o in 0.2s"
    assert line["provider"] == "openai"
    assert line["tokens"] == 12
    assert str(line["timestamp"]).endswith("+00:00")
    assert "trace_id" not in line  # no span current


def test_json_lines_inside_a_span_carry_its_ids(stream: io.StringIO) -> None:
    configure_logging(logging.INFO, json=True, stream=stream)
    provider = TracerProvider()
    with provider.get_tracer("test").start_as_current_span("work") as span:
        logging.getLogger("llm_proxy").warning("inside")
    context = span.get_span_context()

    (line,) = lines(stream)
    assert line["trace_id"] == format(context.trace_id, "032x")
    assert line["span_id"] == format(context.span_id, "016x")


def test_exceptions_are_one_json_field(stream: io.StringIO) -> None:
    configure_logging("INFO", json=True, stream=stream)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("llm_proxy").exception("failed")
    (line,) = lines(stream)
    assert "RuntimeError: boom" in str(line["exception"])


def test_text_format_for_humans(stream: io.StringIO) -> None:
    configure_logging("INFO", json=False, stream=stream)
    logging.getLogger("llm_proxy").info("hello")
    assert stream.getvalue().rstrip().endswith("INFO llm_proxy hello")


def test_text_lines_escape_control_characters_so_a_value_cannot_forge_a_line(
    stream: io.StringIO,
) -> None:
    configure_logging("INFO", json=False, stream=stream)
    forged = "gpt-4o\n2026-01-01 00:00:00,000 INFO llm_proxy.auth admin logged in\x1b[2J\u2028"
    logging.getLogger("llm_proxy.requests").info("request model=%s", forged)
    [line] = stream.getvalue().splitlines()
    assert line.endswith(
        "request model=gpt-4o\\n2026-01-01 00:00:00,000 INFO llm_proxy.auth admin logged in"
        "\\x1b[2J\\u2028"
    )


def test_configuring_again_replaces_the_handler(stream: io.StringIO) -> None:
    configure_logging("INFO", json=True, stream=stream)
    configure_logging("INFO", json=True, stream=stream)
    logging.getLogger("llm_proxy").info("once")
    assert len(lines(stream)) == 1


def test_secrets_are_redacted_from_message_args_extras_and_exceptions(
    stream: io.StringIO,
) -> None:
    configure_logging("INFO", json=True, secrets=[KEY, TOKEN, ""], stream=stream)
    log = logging.getLogger("llm_proxy")
    log.info(f"key {KEY} in the message")
    log.info("key %s in the args, token %r", KEY, TOKEN)
    log.info("in extras", extra={"header": f"Bearer {TOKEN}", "keys": [KEY, "fine"]})
    try:
        raise ValueError(f"upstream said: invalid key {KEY}")
    except ValueError:
        log.exception("upstream failed")

    output = stream.getvalue()
    assert KEY not in output
    assert TOKEN not in output
    messages = lines(stream)
    assert messages[0]["message"] == f"key {REDACTED} in the message"
    assert messages[1]["message"] == f"key {REDACTED} in the args, token '{REDACTED}'"
    assert messages[2]["header"] == f"Bearer {REDACTED}"
    assert messages[2]["keys"] == [REDACTED, "fine"]
    assert f"invalid key {REDACTED}" in str(messages[3]["exception"])


def test_the_redactor_never_shows_its_secrets() -> None:
    redactor = SecretRedactor([KEY])
    assert KEY not in repr(redactor)
    assert redactor.redact(f"a{KEY}b{KEY}") == f"a{REDACTED}b{REDACTED}"


def test_the_longer_of_two_overlapping_secrets_is_redacted_whole() -> None:
    assert SecretRedactor(["abcdef", "abcdefghij"]).redact("abcdefghij") == REDACTED


def test_too_short_values_are_not_treated_as_secrets() -> None:
    assert SecretRedactor(["a", "ab1"]).redact("a cab1") == "a cab1"
