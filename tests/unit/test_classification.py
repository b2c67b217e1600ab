from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from adapters.outbound.providers.errors import (
    MAX_MESSAGE_CHARS,
    MAX_RETRY_AFTER,
    REDACTED,
    classify_status,
    classify_stream_error,
    gemini_retry_delay,
    parse_go_duration,
    parse_proto_duration,
    parse_retry_after,
    rate_limit_wait,
    ratelimit_reset,
    redact,
    safe_message,
    transport_failure,
    upstream_message,
)
from adapters.outbound.providers.sse import SSEError, StreamStalled
from domain.errors import (
    KeyRejected,
    ProviderFailure,
    RateLimited,
    UpstreamFault,
    UpstreamRejected,
)
from domain.key_pool import ApiKey

NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
KEY = ApiKey("my-secret-key-value-0001")


def classify(
    status: int, body: object = b"", headers: dict[str, str] | None = None
) -> ProviderFailure:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return classify_status(
        status, httpx.Headers(headers or {}), raw, provider="openai", key=KEY, now=NOW
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("250ms", 0.25),
        ("1h2m3.5s", 3723.5),
        ("20.5s", 20.5),
        ("0s", 0.0),
        ("15", 15.0),
        ("300us", 0.0003),
        ("1.5m", 90.0),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "1x", "1s2", "-1s", "abc", "1d"])
def test_bad_go_durations(text: str) -> None:
    assert parse_go_duration(text) is None


def test_huge_durations_are_capped() -> None:
    assert parse_go_duration("100000h") == MAX_RETRY_AFTER
    assert parse_retry_after("1e300", NOW) == MAX_RETRY_AFTER
    assert parse_retry_after("inf", NOW) is None
    assert parse_retry_after("nan", NOW) is None


def test_retry_after_seconds_and_http_dates() -> None:
    assert parse_retry_after("120", NOW) == 120.0
    assert parse_retry_after("1.5", NOW) == 1.5
    assert parse_retry_after("Wed, 01 Jan 2025 12:00:30 GMT", NOW) == 30.0
    assert parse_retry_after("Wed, 01 Jan 2025 11:00:00 GMT", NOW) == 0.0  # already past
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after("-5", NOW) is None


def test_proto_durations() -> None:
    assert parse_proto_duration("37s") == 37.0
    assert parse_proto_duration("0.5s") == 0.5
    assert parse_proto_duration("37") is None
    assert parse_proto_duration(37) is None


def test_ratelimit_reset_prefers_the_exhausted_limit() -> None:
    headers = {
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "250ms",
        "x-ratelimit-remaining-tokens": "4000",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    assert ratelimit_reset(headers) == 0.25
    headers["x-ratelimit-remaining-tokens"] = "0"
    assert ratelimit_reset(headers) == 360.0


def test_ratelimit_reset_without_remaining_takes_the_later_reset() -> None:
    assert ratelimit_reset({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "9s"})
    assert ratelimit_reset({"X-RateLimit-Reset-Tokens": "1m30s"}) == 90.0
    assert ratelimit_reset({}) is None


def test_wait_hints_in_order_of_precision() -> None:
    headers = {"retry-after-ms": "1500", "retry-after": "3", "x-ratelimit-reset-tokens": "9s"}
    assert rate_limit_wait(headers, None, NOW) == 1.5
    del headers["retry-after-ms"]
    assert rate_limit_wait(headers, None, NOW) == 3.0
    del headers["retry-after"]
    assert rate_limit_wait(headers, None, NOW) == 9.0
    assert rate_limit_wait({}, None, NOW) is None


GEMINI_429 = {
    "error": {
        "code": 429,
        "message": "You exceeded your current quota. Please retry in 37.4s.",
        "status": "RESOURCE_EXHAUSTED",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{"quotaMetric": "generate_content_free_tier_requests"}],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"},
        ],
    }
}


def test_gemini_retry_info() -> None:
    assert gemini_retry_delay(GEMINI_429) == 37.0
    assert gemini_retry_delay([GEMINI_429]) == 37.0
    assert gemini_retry_delay({"error": {"details": "nope"}}) is None
    assert gemini_retry_delay(None) is None


def test_429_is_rate_limited_with_the_reset() -> None:
    failure = classify(429, GEMINI_429)
    assert isinstance(failure, RateLimited)
    assert failure.retry_after == 37.0
    assert failure.retryable
    assert not failure.breaker_failure
    assert KEY.fingerprint in str(failure)


def test_429_with_openai_headers() -> None:
    body = {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit"}}
    failure = classify(429, body, {"x-ratelimit-reset-requests": "2s"})
    assert isinstance(failure, RateLimited)
    assert failure.retry_after == 2.0
    assert "Rate limit reached" in str(failure)


def test_429_without_hints_leaves_the_default_to_the_pool() -> None:
    failure = classify(429, b"")
    assert isinstance(failure, RateLimited)
    assert failure.retry_after is None


@pytest.mark.parametrize("status", [500, 502, 503, 504, 529, 408])
def test_server_errors_are_upstream_faults(status: int) -> None:
    failure = classify(status, b"<html>oops</html>", {"retry-after": "7"})
    assert isinstance(failure, UpstreamFault)
    assert failure.breaker_failure
    assert failure.retry_after == 7.0
    assert "<html>" not in str(failure)


@pytest.mark.parametrize("status", [401, 403])
def test_auth_errors_reject_the_key(status: int) -> None:
    assert isinstance(classify(status, {"error": {"message": "bad key"}}), KeyRejected)


def test_gemini_invalid_key_400_rejects_the_key() -> None:
    body = {
        "error": {
            "code": 400,
            "message": "API key not valid. Please pass a valid API key.",
            "status": "INVALID_ARGUMENT",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                }
            ],
        }
    }
    assert isinstance(classify(400, body), KeyRejected)


@pytest.mark.parametrize("status", [400, 404, 409, 413, 422])
def test_other_client_errors_are_rejections(status: int) -> None:
    failure = classify(status, {"error": {"message": "context too long", "code": "too_long"}})
    assert isinstance(failure, UpstreamRejected)
    assert not failure.retryable
    assert "context too long (too_long)" in str(failure)


def test_unexpected_statuses_are_faults() -> None:
    assert isinstance(classify(302), UpstreamFault)


def test_malformed_error_bodies_give_the_status_only() -> None:
    failure = classify(400, b"{not json sk-abcdef1234567890")
    assert str(failure) == "openai refused the request: HTTP 400 Bad Request"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"error": {"message": "m", "type": "invalid_request_error"}}, "m (invalid_request_error)"),
        (
            {"error": {"message": "m", "status": "INVALID_ARGUMENT", "code": 400}},
            "m (INVALID_ARGUMENT)",
        ),
        ([{"error": {"message": "m"}}], "m"),
        (
            {"object": "error", "message": "m", "type": "BadRequestError", "code": 400},
            "m (BadRequestError)",
        ),
        ({"error": "model 'x' not found"}, "model 'x' not found"),
        ({"detail": "Not Found"}, "Not Found"),
        ({"error": {"message": ""}}, None),
        ("just a string", None),
        (None, None),
    ],
)  # fmt: skip
def test_upstream_messages_from_known_error_shapes(payload: object, message: str | None) -> None:
    assert upstream_message(payload) == message


def test_4xx_messages_are_redacted() -> None:
    body = {
        "error": {
            "message": (
                "Incorrect API key provided: sk-proj-abc*********************xyz9. "
                f"Also {KEY.value} and AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUv and "
                "token 4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c and Bearer abc.def"
            ),
            "type": "invalid_request_error",
        }
    }
    message = str(classify(400, body))
    for fragment in ("sk-", KEY.value, "AIza", "4f9a8b7c", "abc.def", "xyz9"):
        assert fragment not in message
    assert "Incorrect API key provided: [redacted]." in message


def test_redaction_keeps_ordinary_words_and_model_names() -> None:
    text = "models/gemini-2.0-flash-thinking-exp-01-21 is not found for API version v1beta"
    assert redact(text) == text
    assert redact("ask-me task-runner") == "ask-me task-runner"


def test_messages_are_bounded_and_single_line() -> None:
    message = str(classify(400, {"error": {"message": "x\n" * 5000}}))
    assert len(message) < MAX_MESSAGE_CHARS + 50
    assert "\n" not in message


def test_a_short_placeholder_key_is_not_redacted_everywhere() -> None:
    assert safe_message("a bad request", ApiKey("a")) == "a bad request"


@settings(max_examples=200, deadline=None)
@given(
    secret=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=4),
    before=st.text(max_size=30),
    after=st.text(max_size=30),
)
def test_the_key_in_use_never_survives(secret: str, before: str, after: str) -> None:
    assume(secret not in REDACTED)  # the marker itself may contain a made-up "key" like "[red"
    key = ApiKey(secret)
    assert secret not in safe_message(before + secret + after, key, limit=10_000)


def test_stream_errors_classify_by_their_code() -> None:
    def stream_error(payload: object) -> ProviderFailure:
        return classify_stream_error(payload, provider="gemini", key=KEY, now=NOW)

    assert isinstance(stream_error(GEMINI_429), RateLimited)
    assert "error event (code 429): You exceeded" in str(stream_error(GEMINI_429))
    assert isinstance(stream_error({"error": {"message": "overloaded"}}), UpstreamFault)
    assert isinstance(stream_error({"error": {"code": 400, "message": "bad"}}), UpstreamRejected)
    assert isinstance(stream_error(None), UpstreamFault)


def test_transport_failures_are_faults_without_secrets() -> None:
    request = httpx.Request("POST", "https://example.test", headers={"authorization": KEY.value})
    cases: list[Exception] = [
        httpx.ConnectError("connection refused", request=request),
        httpx.ReadTimeout("timed out", request=request),
        httpx.RemoteProtocolError(f"peer closed {KEY.value}", request=request),
        httpx.DecodingError("invalid gzip", request=request),
        SSEError("the event stream is not valid UTF-8"),
        StreamStalled(0.5),
    ]
    for exc in cases:
        failure = transport_failure(exc, provider="openai", key=KEY)
        assert isinstance(failure, UpstreamFault)
        assert failure.breaker_failure
        assert KEY.value not in str(failure)
        assert type(exc).__name__ not in str(failure)  # the domain's words, not httpx's
    broke_off = httpx.RemoteProtocolError(
        "Response payload is not completed: <TransferEncodingError: 400>", request=request
    )
    assert str(transport_failure(broke_off, provider="openai", key=KEY)) == (
        "openai connection failed: the answer broke off (protocol error)"
    )
    assert "timed out" in str(transport_failure(cases[1], provider="openai", key=KEY))
    assert "stalled" in str(transport_failure(cases[-1], provider="openai", key=KEY))


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=40))
def test_header_parsers_never_raise(text: str) -> None:
    parse_go_duration(text)
    parse_retry_after(text, NOW)
    parse_proto_duration(text)


@settings(max_examples=200, deadline=None)
@given(
    status=st.integers(min_value=100, max_value=599).filter(lambda s: not 200 <= s < 300),
    body=st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(
                    st.sampled_from(["error", "message", "code", "details", "@type", "retryDelay"]),
                    inner,
                    max_size=4,
                )
            ),
            max_leaves=12,
        ).map(lambda value: json.dumps(value).encode()),
    ),
    retry_after=st.text(max_size=20),
)
def test_any_error_response_classifies_without_raising(
    status: int, body: bytes, retry_after: str
) -> None:
    headers = {"retry-after": retry_after, "x-ratelimit-reset-tokens": retry_after}
    failure = classify_status(status, headers, body, provider="openai", key=KEY, now=NOW)
    assert isinstance(failure, ProviderFailure)
    assert KEY.value not in str(failure)
    assert len(str(failure)) <= MAX_MESSAGE_CHARS + 60
