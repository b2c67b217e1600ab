"""Every kind of response the OpenAI-compatible API sends, as raw JSON from the real server in
front of the simulator, validated against the official `openai` SDK's pydantic types in strict
mode (no coercion), with no field beyond them but our documented `llm_proxy` extension, and the
schema's required-but-nullable fields present. Then the requests real clients send that OpenAI
accepts: a prefill, a system message after the user, `"stream": null`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from openai.types import Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.shared import ErrorObject
from pydantic import BaseModel

from tests.harness import Stack, stack

pytestmark = pytest.mark.integration

OPENAI, GEMINI, CLAUDE = "gpt-4o-mini", "gemini-2.0-flash", "claude-sonnet-4-5"
EXTENSION = {"llm_proxy"}  # the last chunk's provider and cache status (README)


def strict(kind: type[BaseModel], data: dict[str, Any]) -> BaseModel:
    parsed = kind.model_validate(data, strict=True)
    assert _extra(parsed) <= EXTENSION, f"fields beyond {kind.__name__}: {_extra(parsed)}"
    return parsed


def _extra(model: BaseModel) -> set[str]:
    found = set(model.model_extra or {})
    for name in type(model).model_fields:
        value = getattr(model, name)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, BaseModel):
                found |= _extra(item)
    return found


@pytest.fixture
async def s() -> AsyncIterator[Stack]:
    async with stack(http=True, max_retries=0) as running:
        yield running


async def post(s: Stack, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(f"{s.proxy.http_url}/chat/completions", json=body)


def ask(text: str, model: str = OPENAI, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def events(response: httpx.Response) -> list[dict[str, Any]]:
    frames = [f.removeprefix("data: ") for f in response.text.split("\n\n") if f]
    assert frames[-1] == "[DONE]"
    return [json.loads(f) for f in frames[:-1]]


@pytest.mark.parametrize("model", [OPENAI, GEMINI, CLAUDE])
async def test_a_completion_conforms(s: Stack, model: str) -> None:
    response = await post(s, ask("Explain goroutines.", model))
    assert response.status_code == 200
    data = response.json()
    strict(ChatCompletion, data)
    message = data["choices"][0]["message"]
    assert "refusal" in message  # required by the schema, nullable
    assert message["refusal"] is None


@pytest.mark.parametrize("model", [OPENAI, GEMINI, CLAUDE])
async def test_each_chunk_kind_conforms(s: Stack, model: str) -> None:
    body = ask("Explain channels.", model, stream=True, stream_options={"include_usage": True})
    chunks = events(await post(s, body))
    role, *contents, finish, usage = chunks
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert contents
    for chunk in (role, *contents, finish, usage):
        strict(ChatCompletionChunk, chunk)
    for chunk in (*contents, finish):
        assert "role" not in chunk["choices"][0]["delta"]  # never null: a non-nullable enum
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert usage["choices"] == []
    assert usage["usage"]["total_tokens"] > 0


async def test_the_model_and_the_model_list_conform(s: Stack) -> None:
    async with httpx.AsyncClient() as http:
        listed = (await http.get(f"{s.proxy.http_url}/models")).json()
        one = await http.get(f"{s.proxy.http_url}/models/{OPENAI}")
    assert listed["object"] == "list"
    assert listed["data"]
    for card in listed["data"]:
        strict(Model, card)
        assert "*" not in card["id"]
    assert strict(Model, one.json()).id == OPENAI  # type: ignore[attr-defined]


ERRORS = [
    (ask("Hi.", temperature=3), 400, "temperature"),
    (ask("Hi.", max_completion_tokens=0), 400, "max_completion_tokens"),
    (ask("Hi.", model="llama-3"), 404, "model"),
    (ask("Busy. [[sim:429:30]]"), 429, None),
    (ask("Broken. [[sim:503]]"), 503, None),
]


@pytest.mark.parametrize(("body", "status", "param"), ERRORS)
async def test_each_error_conforms_and_names_its_parameter(
    s: Stack, body: dict[str, Any], status: int, param: str | None
) -> None:
    response = await post(s, body)
    assert response.status_code == status
    error = strict(ErrorObject, response.json()["error"])
    assert error.param == param  # type: ignore[attr-defined]
    assert set(response.json()) == {"error"}


async def test_the_error_event_of_a_failed_stream_conforms(s: Stack) -> None:
    response = await post(s, ask("Explain. [[sim:midstream:2]]", stream=True))
    frames = [f.removeprefix("data: ") for f in response.text.split("\n\n") if f]
    assert "[DONE]" not in frames
    last = json.loads(frames[-1])
    strict(ErrorObject, last["error"])
    for chunk in map(json.loads, frames[:-1]):
        strict(ChatCompletionChunk, chunk)


async def test_an_upstream_fault_is_described_in_the_proxys_words(s: Stack) -> None:
    response = await post(s, ask("Cut. [[sim:reset]]"))
    assert response.status_code == 503
    message = response.json()["error"]["message"]
    assert "Error" not in message  # no exception class names (RemoteProtocolError, ...)
    assert "connection failed" in message


# -- what OpenAI accepts and real clients send ------------------------------------------------


async def test_a_prefill_and_a_system_message_after_the_user_reach_openai(s: Stack) -> None:
    sdk = openai.AsyncOpenAI(base_url=s.proxy.http_url, api_key="unused", max_retries=0)
    completion = await sdk.chat.completions.create(
        model=OPENAI,
        messages=[
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "The colour is"},
            {"role": "system", "content": "Answer in one word."},
        ],
    )
    assert completion.choices[0].message.content


async def test_gemini_refuses_a_prefill_naming_the_parameter(s: Stack) -> None:
    body = {
        "model": GEMINI,
        "messages": [
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "The colour is"},
        ],
    }
    response = await post(s, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "messages"
    assert "prefill" in error["message"]
    assert s.sim.stats.requests_total == 0  # refused before anything was sent


async def test_gemini_takes_a_system_message_after_the_user(s: Stack) -> None:
    body = ask("Name a colour.", GEMINI)
    body["messages"].append({"role": "system", "content": "Answer in one word."})
    assert (await post(s, body)).status_code == 200


async def test_stream_null_is_a_plain_completion(s: Stack) -> None:
    response = await post(s, ask("Hi.", stream=None))
    assert response.status_code == 200
    strict(ChatCompletion, response.json())
