"""Logging set-up: JSON lines (or plain text) carrying the current trace and span ids, behind a
filter that blanks out configured secrets should one ever reach a log call."""

from __future__ import annotations

import json as jsonlib
import logging
import re
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, TextIO

from opentelemetry import trace

REDACTED: Final = "[redacted]"
# Shorter "secrets" would blank out ordinary words; no real key or token is this short.
MIN_SECRET_CHARS: Final = 6
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s %(message)s%(trace_suffix)s"

# Everything a LogRecord has before `extra` is merged in; the rest are the caller's fields.
_RESERVED: Final = frozenset(
    {
        *vars(logging.LogRecord("", 0, "", 0, "", (), None)),
        "message",
        "asctime",
        "taskName",
        "trace_id",
        "span_id",
        "trace_suffix",
    }
)


class TraceContextFilter(logging.Filter):
    """Stamps `trace_id` / `span_id` (hex, as OTel backends show them) of the span current at
    the log call, or None outside a span."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        trace_id = span_id = None
        suffix = ""
        if context.is_valid:
            trace_id = format(context.trace_id, "032x")
            span_id = format(context.span_id, "016x")
            suffix = f" trace_id={trace_id} span_id={span_id}"
        record.trace_id, record.span_id, record.trace_suffix = trace_id, span_id, suffix
        return True


class SecretRedactor(logging.Filter):
    """Replaces every occurrence of the given secret values in a record's message, arguments,
    extra fields and exception text with "[redacted]". A safety net, not a licence to log keys:
    secrets are still never passed to a log call on purpose."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        values = sorted({s for s in secrets if len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, values))) if values else None

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"  # never the secrets

    def redact(self, text: str) -> str:
        return text if self._pattern is None else self._pattern.sub(REDACTED, text)

    def filter(self, record: logging.LogRecord) -> bool:
        if self._pattern is None:
            return True
        message = record.getMessage()  # merges args, whatever their type
        record.msg, record.args = self.redact(message), None
        for key, value in list(vars(record).items()):
            if key not in _RESERVED:
                setattr(record, key, self._scrub(value, depth=3))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True

    def _scrub(self, value: Any, depth: int) -> Any:
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, bool | int | float) or value is None:
            return value
        if depth > 0 and isinstance(value, Mapping):
            return {self._scrub(k, depth - 1): self._scrub(v, depth - 1) for k, v in value.items()}
        if depth > 0 and isinstance(value, list | tuple | set | frozenset):
            return [self._scrub(v, depth - 1) for v in value]
        return self.redact(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp (UTC, ISO 8601), level, logger, message, the
    caller's `extra` fields, trace_id / span_id inside a span, exception text when there is
    one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        trace_id = getattr(record, "trace_id", None)
        if trace_id is not None:
            line["trace_id"] = trace_id
            line["span_id"] = getattr(record, "span_id", None)
        for key, value in vars(record).items():
            if key not in _RESERVED and key not in line:
                line[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return jsonlib.dumps(line, default=str, ensure_ascii=False)


# C0 and C1 controls, DEL and the Unicode line breaks: a client's value (a model name with a
# newline) must not start a forged line or move a terminal's cursor
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class TextFormatter(logging.Formatter):
    """TEXT_FORMAT with control characters escaped (`\\n`, `\\x1b`): one record, one line
    (a traceback after it keeps its own lines)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return _CONTROL.sub(_escaped, super().formatMessage(record))


def _escaped(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


_OURS: Final = "_llm_proxy_handler"


def configure_logging(
    level: str | int,
    json: bool,
    *,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> logging.Handler:
    """Sets the root logger's level and its one handler (replacing any this function installed
    before; handlers others added stay). `secrets`: API keys, client tokens and the like."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(SecretRedactor(secrets))
    handler.addFilter(TraceContextFilter())
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    setattr(handler, _OURS, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler
