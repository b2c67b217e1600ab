"""An incremental server-sent-events decoder (the parts of the WHATWG spec an API client needs).

https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation
Bytes may be split anywhere: inside a UTF-8 sequence, between CR and LF, mid-line. The only
exception the decoder raises is `SSEError`; the providers turn it into `UpstreamFault`.
"""

from __future__ import annotations

import asyncio
import codecs
import re
from collections.abc import AsyncGenerator, AsyncIterable
from dataclasses import dataclass

MAX_EVENT_CHARS = 4 * 1024 * 1024

_EOL = re.compile(r"\r\n|\r|\n")


class SSEError(ValueError):
    """The bytes are not an event stream that can be decoded."""


class StreamStalled(TimeoutError):
    """No bytes arrived for longer than the idle timeout."""

    def __init__(self, idle_timeout: float) -> None:
        self.idle_timeout = idle_timeout
        super().__init__(f"no data for {idle_timeout:g}s")


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    data: str
    event: str = "message"
    id: str = ""
    retry: int | None = None


class SSEDecoder:
    """Feed it byte chunks as they arrive; it returns the events they complete."""

    def __init__(self, max_event_chars: int = MAX_EVENT_CHARS) -> None:
        self._max = max_event_chars
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="strict")
        self._started = False
        self._after_cr = False
        self._line: list[str] = []
        self._line_chars = 0
        self._data: list[str] = []
        self._data_chars = 0
        self._event = ""
        self._last_id = ""
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        try:
            text = self._utf8.decode(chunk)
        except UnicodeDecodeError:
            raise SSEError("the event stream is not valid UTF-8") from None
        return self._feed_text(text)

    def close(self) -> None:
        """End of stream. An event without its closing blank line is discarded (per the spec)."""
        try:
            self._utf8.decode(b"", final=True)
        except UnicodeDecodeError:
            raise SSEError("the event stream ended inside a UTF-8 sequence") from None

    @property
    def pending(self) -> bool:
        """Whether an event has started but not been dispatched yet."""
        return bool(self._line or self._data or self._event)

    def _feed_text(self, text: str) -> list[ServerSentEvent]:
        if not text:
            return []
        if not self._started:
            self._started = True
            text = text.removeprefix("\ufeff")
        if self._after_cr:
            self._after_cr = False
            text = text.removeprefix("\n")  # the LF of a CRLF split across two chunks
        events: list[ServerSentEvent] = []
        pos = 0
        for eol in _EOL.finditer(text):
            self._line.append(text[pos : eol.start()])
            line = "".join(self._line)
            self._line.clear()
            self._line_chars = 0
            event = self._process(line)
            if event is not None:
                events.append(event)
            pos = eol.end()
        tail = text[pos:]
        if tail:
            self._line.append(tail)
            self._line_chars += len(tail)
            if self._line_chars > self._max:
                raise SSEError(f"an event stream line is longer than {self._max} characters")
        self._after_cr = text.endswith("\r")
        return events

    def _process(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment, e.g. a keep-alive
        name, colon, value = line.partition(":")
        if colon:
            value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
            self._data_chars += len(value) + 1
            if self._data_chars > self._max:
                raise SSEError(f"an event is longer than {self._max} characters")
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit() and len(value) <= 12:
            self._retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        event_type, self._event = self._event, ""
        if not self._data:
            return None
        data = "\n".join(self._data)
        self._data.clear()
        self._data_chars = 0
        return ServerSentEvent(data, event_type or "message", self._last_id, self._retry)


async def aiter_events(
    chunks: AsyncIterable[bytes], idle_timeout: float
) -> AsyncGenerator[ServerSentEvent, None]:
    """Events from a byte stream; `StreamStalled` if no bytes arrive for `idle_timeout` seconds.

    Any bytes reset the clock, comments (keep-alives) included: they are how a server says it is
    alive while the model thinks. The request deadline bounds the whole stream.
    """
    decoder = SSEDecoder()
    iterator = aiter(chunks)
    while True:
        try:
            async with asyncio.timeout(idle_timeout):
                chunk = await anext(iterator)
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise StreamStalled(idle_timeout) from None
        for event in decoder.feed(chunk):
            yield event
    decoder.close()
