"""``POST /v1/responses`` (the OpenAI Responses API) through a real gateway, with the official ``openai`` SDK.

The route is handled as chat completions are: authenticated, its prompt
(``instructions`` and ``input``) charged against the limits before it is
forwarded and settled with the upstream's ``usage`` after, one event per
request (``endpoint: openai.responses``), malformed upstream answers ending
API-shaped. Anthropic-protocol upstreams are refused: the Responses API is not
translated.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from distillguard.config import Settings
from distillguard.gateway.app import Gateway
from distillguard.gateway.requests import cap_logprobs
from distillguard.gateway.responses import ResponsesStreamReader, ResponseSummary, summarise_responses
from distillguard.gateway.types import EventSinkProtocol
from distillguard.policy import Decision
from distillguard.store.registry import KeyRecord, hash_secret
from tests.gateway_fixtures import RunningGateway, start_gateway
from tests.test_policy import _FixedPolicy
from tests.upstream_stub import ANSWER_WORDS, REASONING_STEPS, UpstreamStub

ANSWER = "".join(ANSWER_WORDS)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, stub: UpstreamStub) -> Iterator[RunningGateway]:
    upstreams = [
        {"name": "claude", "base_url": stub.base_url, "protocol": "anthropic", "models": ["claude-*"], "timeout_s": 3},
        {"name": "stub", "base_url": stub.base_url, "protocol": "openai", "models": ["*"], "timeout_s": 3},
    ]
    gw = start_gateway(tmp_path_factory.mktemp("responses"), upstreams=upstreams)
    yield gw
    gw.stop()


def _client(gateway: RunningGateway, name: str, limits: dict[str, Any] | None = None) -> openai.OpenAI:
    key = gateway.create_key(name, limits=limits)
    return openai.OpenAI(base_url=gateway.base_url, api_key=key["secret"], max_retries=0)


def _events_of(gateway: RunningGateway, request_id: str) -> list[dict[str, Any]]:
    gateway.event(request_id)  # waits until it is stored
    return [e for e in gateway.events() if e["request_id"] == request_id]


def test_a_response_is_forwarded_and_recorded(gateway: RunningGateway, stub: UpstreamStub) -> None:
    client = _client(gateway, "json")
    raw = client.responses.with_raw_response.create(
        model="stub-1", instructions="Be brief.", max_output_tokens=50, temperature=0.5,
        input=[{"role": "developer", "content": "Answer in English."},
               {"role": "user", "content": [{"type": "input_text", "text": "What is six "}, {"type": "input_text", "text": "times seven?"}]},
               {"role": "assistant", "content": [{"type": "output_text", "text": "Let me think."}]}],
    )
    answer = raw.parse()
    assert answer.output_text == ANSWER and answer.usage is not None and answer.usage.output_tokens == 6
    assert stub.requests[-1]["instructions"] == "Be brief."  # forwarded to /v1/responses as sent
    [event] = _events_of(gateway, raw.headers["x-request-id"])
    assert event["endpoint"] == "openai.responses" and event["model"] == "stub-1"
    assert event["request"]["system"] == "Be brief.\nAnswer in English."
    assert event["request"]["messages"] == [{"role": "user", "content": "What is six times seven?"},
                                            {"role": "assistant", "content": "Let me think."}]
    assert event["request"]["params"]["max_tokens"] == 50 and event["request"]["params"]["temperature"] == 0.5
    assert event["request"]["params"]["stream"] is False
    response = event["response"]
    assert (response["status"], response["text"], response["finish_reason"]) == (200, ANSWER, "stop")
    assert (response["prompt_tokens"], response["completion_tokens"], response["error"]) == (9, 6, None)


def test_a_streamed_response_is_relayed_unchanged_and_recorded(gateway: RunningGateway) -> None:
    client = _client(gateway, "stream")
    raw = client.responses.with_raw_response.create(model="stub-1", input="What is six times seven?", stream=True)
    events = list(raw.parse())
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == ANSWER
    assert [e.sequence_number for e in events] == list(range(len(events)))  # none dropped or added
    [event] = _events_of(gateway, raw.headers["x-request-id"])
    assert event["endpoint"] == "openai.responses" and event["request"]["params"]["stream"] is True
    assert event["request"]["messages"] == [{"role": "user", "content": "What is six times seven?"}]
    response = event["response"]
    assert (response["status"], response["text"], response["finish_reason"]) == (200, ANSWER, "stop")
    assert (response["prompt_tokens"], response["completion_tokens"]) == (9, 6)


def test_reasoning_is_relayed_and_counted_for_an_account_that_is_not_degraded(gateway: RunningGateway) -> None:
    client = _client(gateway, "reasoning")
    raw = client.responses.with_raw_response.create(model="stub-reasoning-steps", input="What is 17 times 23?", stream=True)
    streamed = list(raw.parse())
    assert "".join(e.delta for e in streamed if e.type == "response.reasoning_summary_text.delta") == REASONING_STEPS
    [event] = _events_of(gateway, raw.headers["x-request-id"])
    assert event["response"]["reasoning_chars"] == len(REASONING_STEPS) and event["response"]["text"] == ANSWER


def test_an_incomplete_response_records_length(gateway: RunningGateway) -> None:
    client = _client(gateway, "length")
    raw = client.responses.with_raw_response.create(model="stub-length", input="Hi")
    assert raw.parse().status == "incomplete"
    [event] = _events_of(gateway, raw.headers["x-request-id"])
    assert event["response"]["finish_reason"] == "length"


def test_the_prompt_is_charged_before_forwarding_and_settled_after(gateway: RunningGateway, stub: UpstreamStub) -> None:
    """~2,000-token inputs at 5,000 tokens/min: two fit (each settled with the upstream's count), the third is refused unforwarded."""
    client = _client(gateway, "limited", limits={"tokens_per_min": 5_000})
    prompt = "word " * 1_600  # 8,000 bytes: 2,000 tokens estimated
    before = len(stub.requests)
    statuses = []
    for _ in range(4):
        try:
            for _chunk in client.responses.create(model="stub-counting", input=prompt, stream=True):
                pass
            statuses.append(200)
        except openai.RateLimitError as exc:
            assert exc.code == "token_rate_limit_exceeded"
            statuses.append(429)
    assert statuses == [200, 200, 429, 429]
    assert len(stub.requests) - before == 2  # refused requests never reached the upstream


def test_an_anthropic_upstream_is_refused_with_a_clear_400(gateway: RunningGateway, stub: UpstreamStub) -> None:
    client = _client(gateway, "claude")
    before = len(stub.requests)
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="claude-sonnet", input="Hi")
    assert info.value.code == "protocol_mismatch"
    assert "does not translate the OpenAI Responses API" in info.value.message and "POST /v1/messages" in info.value.message
    assert len(stub.requests) == before
    [event] = _events_of(gateway, info.value.response.headers["x-request-id"])
    assert event["endpoint"] == "openai.responses" and event["response"]["status"] == 400


@pytest.mark.parametrize("model", ["stub-odd-resp-text-5", "stub-odd-resp-output-x", "stub-odd-resp-usage-lots"])
def test_a_malformed_answer_is_a_502_and_one_event(gateway: RunningGateway, model: str) -> None:
    client = _client(gateway, f"odd-{model}")
    with pytest.raises(openai.APIStatusError) as info:
        client.responses.create(model=model, input="Hi")
    assert info.value.status_code == 502 and info.value.code == "upstream_protocol_error"
    [event] = _events_of(gateway, info.value.response.headers["x-request-id"])
    assert event["response"]["status"] == 502 and event["response"]["error"].startswith("upstream_protocol_error")


@pytest.mark.parametrize("model", ["stub-odd-resp-delta-5", "stub-odd-resp-not-json", "stub-odd-resp-cut"])
def test_a_malformed_stream_ends_with_an_error_and_one_event(gateway: RunningGateway, model: str) -> None:
    client = _client(gateway, f"odd-stream-{model}")
    raw = client.responses.with_raw_response.create(model=model, input="Hi", stream=True)
    seen = []
    with pytest.raises(openai.APIError) as info:
        for item in raw.parse():
            seen.append(item.type)
    assert "broken stream" in info.value.message
    assert "response.completed" not in seen  # never made to look like a whole answer
    [event] = _events_of(gateway, raw.headers["x-request-id"])
    assert event["response"]["status"] == 502 and event["response"]["error"].startswith("upstream_protocol_error")


def test_degrade_strips_reasoning_items_from_an_answer() -> None:
    body = {"status": "completed", "output": [
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": REASONING_STEPS}], "encrypted_content": "x"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": ANSWER}]}],
        "usage": {"input_tokens": 3, "output_tokens": 4}}
    kept = orjson.loads(orjson.dumps(body))
    summary = ResponseSummary()
    assert summarise_responses(body, summary, strip_reasoning=True)
    assert [item["type"] for item in body["output"]] == ["message"]
    assert (summary.reasoning_chars, summary.stripped_chars, summary.text) == (len(REASONING_STEPS), len(REASONING_STEPS), ANSWER)
    summarised = ResponseSummary()
    assert summarise_responses(kept, summarised, strip_reasoning=True, summarize_reasoning=True)
    [reasoning] = [item for item in kept["output"] if item["type"] == "reasoning"]
    assert "encrypted_content" not in reasoning and reasoning["summary"][0]["text"].startswith("[reasoning summarised: ")


def test_degrade_blanks_reasoning_in_a_stream() -> None:
    def ev(payload: dict[str, Any]) -> bytes:
        return b"event: " + payload["type"].encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

    item = {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "secret steps"}]}
    stream = b"".join([
        ev({"type": "response.reasoning_summary_text.delta", "delta": "secret steps"}),
        ev({"type": "response.reasoning_summary_text.done", "text": "secret steps"}),
        ev({"type": "response.output_item.done", "item": item}),
        ev({"type": "response.output_text.delta", "delta": "Hi"}),
        ev({"type": "response.completed", "response": {"status": "completed", "output": [item],
                                                      "usage": {"input_tokens": 1, "output_tokens": 2}}}),
    ])
    reader = ResponsesStreamReader(strip_reasoning=True)
    out = reader.feed(stream[:50]) + reader.feed(stream[50:]) + reader.flush()
    assert b"secret" not in out and out.count(b"event: ") == 5
    assert reader.ended and reader.summary.text == "Hi" and reader.summary.reasoning_chars == len("secret steps")
    assert (reader.summary.prompt_tokens, reader.summary.completion_tokens, reader.summary.finish_reason) == (1, 2, "stop")


def test_degrade_removes_the_responses_logprobs_include() -> None:
    payload: dict[str, Any] = {"include": ["message.output_text.logprobs", "reasoning.encrypted_content"], "top_logprobs": 5}
    assert cap_logprobs(payload, 0)
    assert payload == {"include": ["reasoning.encrypted_content"]}


class _Events(EventSinkProtocol):
    """The gateway's event sink, in memory (no stats; no-op ``start`` and ``close`` from the seam)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def submit(self, event: dict[str, Any]) -> None:
        self.events.append(event)


@pytest.fixture(params=["strip", "summarize"])
async def degraded(request: pytest.FixtureRequest, stub: UpstreamStub) -> AsyncIterator[tuple[openai.AsyncOpenAI, _Events, str]]:
    """An in-process gateway whose policy degrades every request (reasoning: strip or summarize), with the SDK on top."""
    mode = request.param
    settings = Settings(upstreams=[{"name": "stub", "base_url": stub.base_url, "models": ["*"], "timeout_s": 3}])
    sink = _Events()
    gateway = Gateway(settings, sink=sink,
                      policy=_FixedPolicy(Decision("degrade", "reasoning_elicitation", reasoning=mode, max_top_logprobs=0)))
    gateway.keys.load([KeyRecord("key_d", hash_secret("sk-degraded"), "acct_d", None, False, "active")])
    await gateway.startup()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway), timeout=10) as http:
            yield openai.AsyncOpenAI(base_url="http://gateway/v1", api_key="sk-degraded", http_client=http, max_retries=0), sink, mode
    finally:
        await gateway.shutdown()


async def test_a_degraded_account_gets_no_reasoning_trace(degraded: tuple[openai.AsyncOpenAI, _Events, str]) -> None:
    """``*-reasoning-steps`` answers carry REASONING_STEPS as a reasoning item; degraded, it never reaches the client whole."""
    client, sink, mode = degraded
    answer = await client.responses.create(model="stub-reasoning-steps", input="What is 17 times 23?")
    assert answer.output_text == ANSWER
    reasoning = [item for item in answer.output if item.type == "reasoning"]
    if mode == "strip":
        assert reasoning == []
    else:
        [item] = reasoning
        assert item.summary[0].text.startswith(f"[reasoning summarised: {len(REASONING_STEPS)} characters withheld]")
    stream = await client.responses.create(model="stub-reasoning-steps", input="What is 17 times 23?", stream=True)
    streamed = [event async for event in stream]
    assert "".join(e.delta for e in streamed if e.type == "response.output_text.delta") == ANSWER
    assert "".join(e.delta for e in streamed if e.type == "response.reasoning_summary_text.delta") == ""  # stripped in either mode
    assert "17 times 20" not in str([e.model_dump() for e in streamed])
    for event in sink.events[-2:]:
        assert event["endpoint"] == "openai.responses" and event["response"]["reasoning_chars"] == len(REASONING_STEPS)
        assert event["policy"]["action"] == "degrade" and event["response"]["text"] == ANSWER
