from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.outbound.providers.sse import (
    ServerSentEvent,
    SSEDecoder,
    SSEError,
    StreamStalled,
    aiter_events,
)


def decode(*chunks: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events = [event for chunk in chunks for event in decoder.feed(chunk)]
    decoder.close()
    return events


def datas(*chunks: bytes) -> list[str]:
    return [event.data for event in decode(*chunks)]


def test_one_event_per_blank_line() -> None:
    assert datas(b"data: a\n\ndata: b\n\n") == ["a", "b"]


def test_multi_line_data_is_joined_with_newlines() -> None:
    assert datas(b"data: a\ndata:\ndata: c\n\n") == ["a\n\nc"]


def test_only_one_space_after_the_colon_is_dropped() -> None:
    assert datas(b"data:a\n\ndata:  b\n\n") == ["a", " b"]


def test_a_field_without_colon_has_an_empty_value() -> None:
    assert decode(b"data\n\n") == [ServerSentEvent("")]


def test_comments_and_keep_alives_dispatch_nothing() -> None:
    assert datas(b": keep-alive\n\n:\n\ndata: x\n: ping\n\n") == ["x"]


def test_blank_lines_without_data_dispatch_nothing() -> None:
    assert decode(b"\n\n\r\n\nevent: ping\n\n") == []


def test_event_id_and_retry_fields() -> None:
    events = decode(b"event: delta\nid: 7\nretry: 1500\ndata: x\n\ndata: y\n\n")
    assert events == [
        ServerSentEvent("x", event="delta", id="7", retry=1500),
        ServerSentEvent("y", event="message", id="7", retry=1500),
    ]


def test_ids_with_nul_and_bad_retries_are_ignored() -> None:
    events = decode(b"id: a\0b\nretry: 1x\nretry: \xc2\xb2\ndata: x\n\n")
    assert events == [ServerSentEvent("x")]


def test_unknown_fields_are_ignored() -> None:
    assert datas(b"foo: bar\ndata: x\n\n") == ["x"]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending(eol: bytes) -> None:
    stream = eol.join([b"data: a", b"data: b", b"", b"data: c", b"", b""])
    assert datas(stream) == ["a\nb", "c"]


def test_crlf_split_across_reads_is_one_line_ending() -> None:
    # Read as two line endings, the LF would be a blank line dispatching "a" alone.
    assert datas(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n") == ["a\nb"]


def test_a_leading_byte_order_mark_is_dropped_once() -> None:
    assert datas(b"\xef\xbb", b"\xbfdata: x\n\n") == ["x"]
    assert datas(b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n") == []  # the 2nd BOM is a field name


def test_a_multibyte_character_split_across_reads() -> None:
    raw = "data: héllo €\n\n".encode()
    assert datas(*(raw[i : i + 1] for i in range(len(raw)))) == ["héllo €"]


def test_an_unterminated_event_is_discarded_at_the_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: partial\n") == [ServerSentEvent("a")]
    assert decoder.pending
    decoder.close()


def test_invalid_utf8_is_an_sse_error() -> None:
    with pytest.raises(SSEError):
        decode(b"data: \xff\n\n")


def test_ending_inside_a_utf8_sequence_is_an_sse_error() -> None:
    with pytest.raises(SSEError):
        decode(b"data: \xe2\x82")


def test_oversized_lines_and_events_are_sse_errors() -> None:
    with pytest.raises(SSEError):
        SSEDecoder(max_event_chars=10).feed(b"data: 0123456789")
    decoder = SSEDecoder(max_event_chars=10)
    with pytest.raises(SSEError):
        decoder.feed(b"data: 0123\ndata: 4567\ndata: 89\n")


# --- properties ---------------------------------------------------------------------------------

_text = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"))
_event = st.tuples(st.sampled_from(["", "delta", "ping"]), st.lists(_text, min_size=1, max_size=3))


def _render(events: list[tuple[str, list[str]]], eol: str) -> bytes:
    out = []
    for kind, lines in events:
        out.append(": keep-alive" + eol)
        if kind:
            out.append(f"event: {kind}{eol}")
        out.extend(f"data: {line}{eol}" for line in lines)
        out.append(eol)
    return "".join(out).encode()


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(_event, max_size=5),
    eol=st.sampled_from(["\n", "\r\n", "\r"]),
    cuts=st.lists(st.integers(min_value=0), max_size=12),
)
def test_any_split_of_a_stream_gives_the_same_events(
    events: list[tuple[str, list[str]]], eol: str, cuts: list[int]
) -> None:
    raw = _render(events, eol)
    points = sorted({c % (len(raw) + 1) for c in cuts})
    pieces = [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]
    expected = [
        ServerSentEvent("\n".join(lines), event=kind or "message") for kind, lines in events
    ]
    assert decode(raw) == expected
    assert decode(*pieces) == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_arbitrary_bytes_raise_nothing_but_sse_error(chunks: list[bytes]) -> None:
    try:
        events = decode(*chunks)
    except SSEError:
        return
    assert all(isinstance(event.data, str) for event in events)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet=":data evnt\r\n\0é", max_size=40), max_size=6))
def test_field_soup_never_raises(chunks: list[str]) -> None:
    decode(*(chunk.encode() for chunk in chunks))


# --- the async reader ---------------------------------------------------------------------------


async def _chunks(*chunks: bytes, pause: float = 0.0) -> AsyncIterator[bytes]:
    for chunk in chunks:
        await asyncio.sleep(pause)
        yield chunk


async def test_aiter_events_reads_an_async_byte_stream() -> None:
    stream = aiter_events(_chunks(b"data: a\n", b"\ndata: b\n\n"), idle_timeout=1.0)
    assert [event.data async for event in stream] == ["a", "b"]


async def test_aiter_events_raises_stream_stalled_when_bytes_stop() -> None:
    stream = aiter_events(_chunks(b"data: a\n\n", b"data: b\n\n", pause=0.2), idle_timeout=0.02)
    with pytest.raises(StreamStalled):
        _ = [event async for event in stream]


async def test_aiter_events_raises_sse_error_at_a_broken_end() -> None:
    stream = aiter_events(_chunks(b"data: a\n\n\xe2"), idle_timeout=1.0)
    with pytest.raises(SSEError):
        _ = [event async for event in stream]
