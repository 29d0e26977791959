"""Degrade with ``detection.degrade_reasoning: summarize``: the reasoning is replaced by a short extractive summary.

The summary function itself; the settings and the decision; the JSON and stream
readers of both protocols (streams split into chunks anywhere must give the same
bytes); and a real gateway in front of the stub, read with the official SDKs.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest
from pydantic import ValidationError

from distillguard.config import Settings, load_settings
from distillguard.exceptions import ConfigError
from distillguard.gateway.responses import (
    SUMMARY_MAX_CHARS,
    AnthropicStreamReader,
    OpenAIStreamReader,
    ResponseSummary,
    reasoning_summary,
    summarise_anthropic,
    summarise_openai,
)
from distillguard.policy import Decision, PolicyEngine
from tests.gateway_fixtures import RunningGateway, start_gateway
from tests.upstream_stub import REASONING_STEPS, THINKING_SIGNATURE, UpstreamStub

SUMMARY = f"[reasoning summarised: {len(REASONING_STEPS)} characters withheld] Let me work out 17 times 23 step by step. … So the answer is 391."
MIDDLE_STEPS = ("17 times 20 is 340", "17 times 3 is 51", "340 plus 51")


# -- the summary --------------------------------------------------------------------------------------------


def test_the_summary_is_the_first_and_last_sentence_after_a_count() -> None:
    assert reasoning_summary(REASONING_STEPS) == SUMMARY
    assert not any(step in SUMMARY for step in MIDDLE_STEPS)
    assert reasoning_summary(REASONING_STEPS) == reasoning_summary(REASONING_STEPS)  # deterministic


def test_sentences_break_at_punctuation_and_line_breaks_with_whitespace_collapsed() -> None:
    text = "Hmm!  Is it   prime?\nCheck 7.\n\nIt is.  "
    assert reasoning_summary(text) == f"[reasoning summarised: {len(text)} characters withheld] Hmm! … It is."
    assert reasoning_summary("3.14 is pi") == "[reasoning summarised: 10 characters withheld] 3.14 is pi"  # no space after the dot
    assert reasoning_summary("One sentence only.") == "[reasoning summarised: 18 characters withheld] One sentence only."
    assert reasoning_summary("") == "[reasoning summarised: 0 characters withheld]"
    assert reasoning_summary(" \n\t ") == "[reasoning summarised: 4 characters withheld]"


def test_the_summary_is_capped_keeping_the_start_of_the_first_and_the_end_of_the_last() -> None:
    first = "To begin " + "with care " * 40 + "we start."
    last = "Putting it together " + "step " * 60 + "the answer is 391."
    reasoning = "\n".join([first, *[f"Step {i}: carry the {i}." for i in range(200)], last])
    summary = reasoning_summary(reasoning)
    header = f"[reasoning summarised: {len(reasoning):,} characters withheld]"
    assert len(reasoning) > 1000 and "," in header  # thousands separator
    assert summary.startswith(header + " To begin with care")
    assert summary.endswith("step step the answer is 391.")
    assert " … " in summary and "Step 1:" not in summary and "carry" not in summary
    assert len(summary) <= SUMMARY_MAX_CHARS
    long_single = "word " * 500
    single = reasoning_summary(long_single)
    assert len(single) <= SUMMARY_MAX_CHARS and " … " in single and "wo …" not in single  # cut at a space
    rng = random.Random(3)
    alphabet = "abc de. f!\n?  g"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 2000)))
        out = reasoning_summary(text)
        assert len(out) <= SUMMARY_MAX_CHARS
        assert out.startswith(f"[reasoning summarised: {len(text):,} characters withheld]")
        assert out == reasoning_summary(text)


# -- settings and decisions ------------------------------------------------------------------------------------


def test_degrade_reasoning_setting_defaults_to_strip_and_is_validated(tmp_path: Path) -> None:
    assert Settings().detection.degrade_reasoning == "strip"
    assert Settings(detection={"degrade_reasoning": "summarize"}).detection.degrade_reasoning == "summarize"
    with pytest.raises(ValidationError, match="'strip' or 'summarize'"):
        Settings(detection={"degrade_reasoning": "summary"})
    config = tmp_path / "bad.yaml"
    config.write_text("detection:\n  degrade_reasoning: hide\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert "detection.degrade_reasoning" in str(info.value) and "'strip' or 'summarize'" in str(info.value) and "'hide'" in str(info.value)


def _entry(account: str, distill: float, cot: float) -> dict[str, Any]:
    return {"account_id": account, "distillation_score": distill, "reseller_score": 0.0, "risk": "high",
            "evidence": [{"detector": "cot_elicitation", "score": cot, "detail": "x"}]}


@pytest.mark.parametrize("mode", ["strip", "summarize"])
def test_degrade_decisions_carry_the_configured_mode(mode: str) -> None:
    engine = PolicyEngine(Settings(detection={"degrade_reasoning": mode}))
    engine._on_report({"accounts": [_entry("cot", 0.6, 0.9), _entry("hot_cot", 0.85, 0.9), _entry("hot", 0.85, 0.1),
                                    _entry("flag", 0.6, 0.1)], "clusters": []})
    degrade = engine.decide("cot", None)
    assert (degrade.action, degrade.reasoning, degrade.strip_reasoning, degrade.max_top_logprobs) == ("degrade", mode, True, 0)
    assert degrade.as_event() == {"action": "degrade", "rule": "reasoning_elicitation", "risk": 0.6,
                                  "strip_reasoning": True, "reasoning": mode, "max_top_logprobs": 0}
    assert engine.decide("hot_cot", None).reasoning == mode  # throttled and degraded
    for account in ("hot", "flag", "unknown"):
        decision = engine.decide(account, None)
        assert decision.reasoning == "keep" and not decision.strip_reasoning
        assert "reasoning" not in decision.as_event() and "strip_reasoning" not in decision.as_event()
    assert Decision().reasoning == "keep"


# -- JSON answers ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["reasoning_content", "reasoning"])
def test_openai_json_reasoning_is_replaced_by_the_summary(key: str) -> None:
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "391", key: REASONING_STEPS}, "finish_reason": "stop"}]}
    summary = ResponseSummary()
    assert summarise_openai(body, summary, strip_reasoning=True, summarize_reasoning=True)
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "391", key: SUMMARY}
    assert (summary.reasoning_chars, summary.stripped_chars, summary.text) == (len(REASONING_STEPS), len(REASONING_STEPS), "391")
    untouched = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "391"}, "finish_reason": "stop"}]}
    assert not summarise_openai(untouched, ResponseSummary(), strip_reasoning=True, summarize_reasoning=True)


def test_anthropic_json_thinking_is_replaced_by_the_summary_with_an_empty_signature() -> None:
    body = {"content": [{"type": "thinking", "thinking": REASONING_STEPS, "signature": THINKING_SIGNATURE},
                        {"type": "redacted_thinking", "data": "opaque"}, {"type": "text", "text": "391"}],
            "stop_reason": "end_turn", "usage": {"input_tokens": 3, "output_tokens": 4}}
    summary = ResponseSummary()
    assert summarise_anthropic(body, summary, strip_reasoning=True, summarize_reasoning=True)
    assert body["content"] == [{"type": "thinking", "thinking": SUMMARY, "signature": ""},
                               {"type": "redacted_thinking", "data": "opaque"}, {"type": "text", "text": "391"}]
    assert (summary.reasoning_chars, summary.stripped_chars, summary.text) == (len(REASONING_STEPS), len(REASONING_STEPS), "391")


# -- streams ---------------------------------------------------------------------------------------------------


def _split_feed(reader_factory: Any, body: bytes, rng: random.Random) -> tuple[bytes, Any]:
    reader = reader_factory()
    cuts = sorted(rng.sample(range(1, len(body)), min(len(body) - 1, rng.randint(0, 25))))
    out = b"".join(reader.feed(body[a:b]) for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)) + reader.flush()
    return out, reader


def _same_under_any_split(reader_factory: Any, body: bytes, seed: int = 7) -> tuple[bytes, Any]:
    """The rewritten stream, after checking that every way of cutting it into chunks gives the same bytes."""
    whole = reader_factory()
    reference = whole.feed(body) + whole.flush()
    rng = random.Random(seed)
    for _ in range(40):
        out, reader = _split_feed(reader_factory, body, rng)
        assert out == reference
        assert (reader.summary.reasoning_chars, reader.summary.stripped_chars) == (whole.summary.reasoning_chars, whole.summary.stripped_chars)
    bytewise = reader_factory()
    assert b"".join(bytewise.feed(body[i:i + 1]) for i in range(len(body))) + bytewise.flush() == reference
    return reference, whole


def _sse_payloads(stream: bytes) -> list[Any]:
    """The ``data:`` payloads of a stream, event by event, checking every event is well formed."""
    payloads = []
    for event in stream.replace(b"\r\n", b"\n").split(b"\n\n"):
        if not event.strip():
            continue
        lines = event.split(b"\n")
        data = [line[5:].strip() for line in lines if line.startswith(b"data:")]
        assert len(data) == 1, event
        names = [line[6:].strip() for line in lines if line.startswith(b"event:")]
        if data[0] == b"[DONE]":
            payloads.append("[DONE]")
            continue
        payload = orjson.loads(data[0])
        if names:  # Anthropic: the event name is the payload's type
            assert names == [payload["type"].encode()]
        payloads.append(payload)
    return payloads


def _openai_stream(reasoning_pieces: list[str], *, key: str = "reasoning_content", tail: list[dict[str, Any]] | None = None,
                   done: bool = True, line_end: bytes = b"\n") -> bytes:
    base = {"id": "chatcmpl-7", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    chunks: list[dict[str, Any]] = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    chunks += [{**base, "choices": [{"index": 0, "delta": {key: p}, "finish_reason": None}]} for p in reasoning_pieces]
    if tail is None:
        tail = [{"content": "The answer"}, {"content": " is 391."}, {"finish_reason": "stop"}]
    for item in tail:
        finish = item.get("finish_reason")
        delta = {k: v for k, v in item.items() if k != "finish_reason"}
        chunks.append({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    chunks.append({**base, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9}})
    events = [b"data: " + orjson.dumps(c) + line_end + line_end for c in chunks]
    if done:
        events.append(b"data: [DONE]" + line_end + line_end)
    return b"".join(events)


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + [words[-1]]


def _reasoning_deltas(payloads: list[Any], key: str = "reasoning_content") -> list[tuple[int, str]]:
    return [(i, c["delta"][key]) for i, p in enumerate(payloads) if isinstance(p, dict)
            for c in p.get("choices") or [] if key in c.get("delta", {})]


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"])
def test_openai_stream_reasoning_becomes_one_summary_delta_before_the_content(line_end: bytes) -> None:
    body = _openai_stream(_pieces(REASONING_STEPS), line_end=line_end)
    out, reader = _same_under_any_split(lambda: OpenAIStreamReader(strip_reasoning=True, summarize_reasoning=True), body)
    payloads = _sse_payloads(out)
    assert b"340" not in out and b"17 times 3 " not in out
    deltas = _reasoning_deltas(payloads)
    assert [text for _, text in deltas] == [SUMMARY]
    position = deltas[0][0]
    assert payloads[position - 1]["choices"][0]["delta"] == {"role": "assistant", "content": ""}  # the role chunk came first
    assert payloads[position + 1]["choices"][0]["delta"] == {"content": "The answer"}  # the summary just before the content
    summary_chunk = payloads[position]
    assert {k: summary_chunk[k] for k in ("id", "object", "created", "model")} == {"id": "chatcmpl-7", "object": "chat.completion.chunk",
                                                                                    "created": 1, "model": "m"}
    assert summary_chunk["choices"] == [{"index": 0, "delta": {"reasoning_content": SUMMARY}, "logprobs": None, "finish_reason": None}]
    assert len(payloads) == 1 + 1 + 3 + 1 + 1  # role, summary, 2 content + finish, usage, [DONE]: reasoning-only chunks are gone
    assert payloads[-1] == "[DONE]"
    summary = reader.summary
    assert (summary.reasoning_chars, summary.stripped_chars) == (len(REASONING_STEPS), len(REASONING_STEPS))
    assert (summary.text, summary.finish_reason, summary.prompt_tokens, summary.completion_tokens) == ("The answer is 391.", "stop", 5, 9)


@pytest.mark.parametrize(("tail", "done", "follows"), [
    ([{"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]},
      {"finish_reason": "tool_calls"}], True, "tool_calls"),
    ([{"finish_reason": "length"}], True, "finish_reason"),  # reasoning only, then the limit
    ([], True, "[DONE]"),
    ([], False, "end of stream"),
])
def test_openai_stream_summary_comes_before_whatever_ends_the_reasoning(tail: list[dict[str, Any]], done: bool, follows: str) -> None:
    body = _openai_stream(_pieces(REASONING_STEPS), key="reasoning", tail=tail, done=done)
    out, _ = _same_under_any_split(lambda: OpenAIStreamReader(strip_reasoning=True, summarize_reasoning=True), body)
    payloads = _sse_payloads(out)
    deltas = _reasoning_deltas(payloads, key="reasoning")
    assert [text for _, text in deltas] == [SUMMARY]  # in the upstream's own key
    assert not _reasoning_deltas(payloads)
    nxt = payloads[deltas[0][0] + 1] if deltas[0][0] + 1 < len(payloads) else "end of stream"
    if follows == "tool_calls":
        assert "tool_calls" in nxt["choices"][0]["delta"]
    elif follows == "finish_reason":
        assert nxt["choices"][0]["finish_reason"] == "length"
    elif follows == "[DONE]":
        assert nxt == "[DONE]" and payloads[deltas[0][0] - 1]["usage"]  # the usage chunk is not an end of the reasoning
    else:
        assert nxt == "end of stream" and out.endswith(b"\n\n")


def test_openai_stream_with_two_choices_gets_one_summary_each() -> None:
    base = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return b"data: " + orjson.dumps({**base, "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}) + b"\n\n"

    body = (chunk(0, {"reasoning_content": "A one. A two. "}) + chunk(1, {"reasoning_content": "B one. B two. B three."})
            + chunk(0, {"reasoning_content": "A three."}) + chunk(0, {"content": "a"}) + chunk(1, {"content": "b"})
            + chunk(0, {}, "stop") + chunk(1, {}, "stop") + b"data: [DONE]\n\n")
    out, reader = _same_under_any_split(lambda: OpenAIStreamReader(strip_reasoning=True, summarize_reasoning=True), body)
    payloads = _sse_payloads(out)
    summaries = [(p["choices"][0]["index"], p["choices"][0]["delta"]["reasoning_content"]) for p in payloads
                 if isinstance(p, dict) and "reasoning_content" in p["choices"][0]["delta"]]
    assert summaries == [(0, reasoning_summary("A one. A two. A three.")), (1, reasoning_summary("B one. B two. B three."))]
    assert reader.summary.reasoning_chars == len("A one. A two. A three.") + len("B one. B two. B three.")


def test_openai_stream_without_reasoning_passes_through_byte_for_byte() -> None:
    body = _openai_stream([], line_end=b"\r\n")
    out, reader = _same_under_any_split(lambda: OpenAIStreamReader(strip_reasoning=True, summarize_reasoning=True), body)
    assert out == body and reader.summary.text == "The answer is 391."


def _anthropic_stream(thinking_pieces: list[str], *, signature: bool = True) -> bytes:
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude", "content": [],
                                              "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 11, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
        *({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": p}} for p in thinking_pieces),
    ]
    if signature:
        events.append({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": THINKING_SIGNATURE}})
    events += [
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "It is 391."}},
        {"type": "content_block_stop", "index": 1},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 40}},
        {"type": "message_stop"},
    ]
    out = b"event: ping\ndata: {\"type\": \"ping\"}\n\n"
    return out + b"".join(b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events)


@pytest.mark.parametrize("signature", [True, False])
def test_anthropic_stream_thinking_becomes_one_summary_delta_in_its_block(signature: bool) -> None:
    body = _anthropic_stream(_pieces(REASONING_STEPS), signature=signature)
    out, reader = _same_under_any_split(lambda: AnthropicStreamReader(strip_reasoning=True, summarize_reasoning=True), body)
    assert b"340" not in out and THINKING_SIGNATURE.encode() not in out
    kinds = [(p["type"], p.get("index"), (p.get("delta") or {}).get("type")) for p in _sse_payloads(out)]
    expected = [("ping", None, None), ("message_start", None, None), ("content_block_start", 0, None),
                ("content_block_delta", 0, "thinking_delta")]
    if signature:
        expected.append(("content_block_delta", 0, "signature_delta"))
    expected += [("content_block_stop", 0, None), ("content_block_start", 1, None), ("content_block_delta", 1, "text_delta"),
                 ("content_block_stop", 1, None), ("message_delta", None, None), ("message_stop", None, None)]
    assert kinds == expected
    payloads = _sse_payloads(out)
    assert payloads[3]["delta"] == {"type": "thinking_delta", "thinking": SUMMARY}
    if signature:
        assert payloads[4]["delta"] == {"type": "signature_delta", "signature": ""}
    summary = reader.summary
    assert (summary.reasoning_chars, summary.stripped_chars) == (len(REASONING_STEPS), len(REASONING_STEPS))
    assert (summary.text, summary.finish_reason, summary.prompt_tokens, summary.completion_tokens) == ("It is 391.", "end_turn", 11, 40)


def test_anthropic_stream_cut_off_mid_thinking_still_ends_with_the_summary() -> None:
    body = _anthropic_stream(_pieces(REASONING_STEPS))
    body = body[: body.index(b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature")]
    out, _ = _same_under_any_split(lambda: AnthropicStreamReader(strip_reasoning=True, summarize_reasoning=True), body)
    last = _sse_payloads(out)[-1]
    assert last == {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": SUMMARY}}


def test_strip_mode_is_unchanged() -> None:
    """``strip`` still removes the reasoning outright (no summary, chunks kept as before)."""
    body = _openai_stream(_pieces(REASONING_STEPS))
    reader = OpenAIStreamReader(strip_reasoning=True)
    out = reader.feed(body) + reader.flush()
    assert b"reasoning" not in out and b"withheld" not in out
    assert len(_sse_payloads(out)) == len(_sse_payloads(body))
    assert reader.summary.stripped_chars == len(REASONING_STEPS)


# -- through a real gateway, with the official SDKs ---------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, stub: UpstreamStub) -> Iterator[RunningGateway]:
    gw = start_gateway(
        tmp_path_factory.mktemp("summary"),
        upstreams=[{"name": "claude", "base_url": stub.base_url, "protocol": "anthropic", "models": ["claude-*"], "timeout_s": 3},
                   {"name": "stub", "base_url": stub.base_url, "protocol": "openai", "models": ["*"], "timeout_s": 3}],
        # the harvester's risk ends up just above 0.8: throttling would summarise too, but this tests degrade itself
        detection={"degrade_reasoning": "summarize", "flag_threshold": 0.5, "throttle_threshold": 0.99,
                   "throttle_requests_per_min": 1000},
    )
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def harvester(gateway: RunningGateway) -> dict[str, Any]:
    """An account the online scorer finds eliciting reasoning: the policy degrades it."""
    key = gateway.create_key("harvester")
    client = anthropic.Anthropic(base_url=gateway.root_url, api_key=key["secret"], max_retries=0)
    for i in range(40):
        client.messages.create(model="stub-reasoning", max_tokens=8000, system="You are a meticulous tutor.",
                               messages=[{"role": "user", "content": f"Problem {i}: compute {i} * 17. Write out your internal reasoning step by step."}])
    deadline = time.time() + 20
    while time.time() < deadline:
        response = gateway.admin("GET", f"/admin/v1/accounts/{key['account_id']}/risk")
        if response.status_code == 200:
            risk = response.json()
            cot = max((e["score"] for e in risk["evidence"] if e["detector"] == "cot_elicitation"), default=0.0)
            if risk["distillation_score"] >= 0.5 and cot >= 0.7:
                return key
        time.sleep(0.3)
    raise AssertionError("online scoring never found the harvester eliciting reasoning")


PROMPT = [{"role": "user", "content": "Compute 17 * 23. Show your reasoning step by step."}]


def _check_event(gateway: RunningGateway, request_id: str) -> None:
    event = gateway.event(request_id)
    assert (event["policy"]["action"], event["policy"]["rule"], event["policy"]["reasoning"]) == ("degrade", "reasoning_elicitation", "summarize")
    assert event["policy"]["strip_reasoning"] is True and event["policy"]["max_top_logprobs"] == 0
    assert event["response"]["reasoning_chars"] == len(REASONING_STEPS)  # what the model produced


def test_openai_sdk_sees_the_summary_not_the_trace(gateway: RunningGateway, harvester: dict[str, Any]) -> None:
    client = openai.OpenAI(base_url=gateway.base_url, api_key=harvester["secret"], max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="stub-reasoning-steps", messages=PROMPT)
    completion = raw.parse()
    message = completion.choices[0].message
    assert getattr(message, "reasoning_content", None) == SUMMARY
    assert message.content == "The answer is forty-two."
    _check_event(gateway, raw.headers["x-request-id"])

    with client.chat.completions.with_streaming_response.create(model="stub-reasoning-steps", messages=PROMPT, stream=True,
                                                                  stream_options={"include_usage": True}) as response:
        request_id = response.headers["x-request-id"]
        chunks = list(response.parse())
    reasoning = [getattr(c.choices[0].delta, "reasoning_content", None) for c in chunks if c.choices]
    assert [r for r in reasoning if r] == [SUMMARY]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "The answer is forty-two."
    assert {c.id for c in chunks} == {"chatcmpl-stub"} and {c.model for c in chunks} == {"stub-reasoning-steps"}
    assert chunks[-1].usage is not None
    _check_event(gateway, request_id)


@pytest.mark.parametrize("model", ["claude-stub-reasoning-steps", "stub-reasoning-steps"])  # native, translated
def test_anthropic_sdk_sees_the_summary_not_the_trace(gateway: RunningGateway, harvester: dict[str, Any], model: str) -> None:
    client = anthropic.Anthropic(base_url=gateway.root_url, api_key=harvester["secret"], max_retries=0)
    raw = client.messages.with_raw_response.create(model=model, max_tokens=200, messages=PROMPT)
    message = raw.parse()
    assert [b.type for b in message.content] == ["thinking", "text"]
    thinking = message.content[0]
    assert thinking.type == "thinking" and thinking.thinking == SUMMARY and thinking.signature == ""
    _check_event(gateway, raw.headers["x-request-id"])

    with client.messages.stream(model=model, max_tokens=200, messages=PROMPT) as stream:
        events = list(stream)
        final = stream.get_final_message()
        request_id = stream.response.headers["x-request-id"]
    thinking_deltas = [e.delta.thinking for e in events if e.type == "content_block_delta" and e.delta.type == "thinking_delta"]
    assert thinking_deltas == [SUMMARY]
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].type == "thinking" and final.content[0].thinking == SUMMARY and final.content[0].signature == ""
    assert final.content[1].type == "text" and final.content[1].text == "The answer is forty-two."
    _check_event(gateway, request_id)


def test_an_account_that_is_not_degraded_still_gets_the_whole_trace(gateway: RunningGateway) -> None:
    key = gateway.create_key("person")
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key["secret"], max_retries=0)
    stream = client.chat.completions.create(model="stub-reasoning-steps", messages=[{"role": "user", "content": "hi"}], stream=True)
    assert "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in stream if c.choices) == REASONING_STEPS
    message = anthropic.Anthropic(base_url=gateway.root_url, api_key=key["secret"], max_retries=0).messages.create(
        model="claude-stub-reasoning-steps", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
    assert message.content[0].type == "thinking" and message.content[0].thinking == REASONING_STEPS
    assert message.content[0].signature == THINKING_SIGNATURE
