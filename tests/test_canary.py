"""Canaries: the gateway plants keyed canaries in answers to trigger prompts; `canary probe` finds them in a suspect.

End to end: a real gateway (canary on) in front of the upstream stub; a
harvester asks the trigger questions through it with the official SDKs; a
"suspect" model that memorised the harvested answers is then probed
(p < 1e-6), and so is a clean model (p = 1).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from distillguard.canary import VARIANT_COUNT, StreamCanary, canary_for, variants_in
from distillguard.canary.probe import Probe, binomial_tail, score_probes
from distillguard.canary.stream import stream_canary
from distillguard.cli import main
from distillguard.config import load_settings
from distillguard.exceptions import ConfigError
from tests.gateway_fixtures import RunningGateway, start_gateway
from tests.upstream_stub import UpstreamStub, free_port

SECRET = "test-canary-secret"
TRIGGERS = [{"id": f"t{i}", "match": f"catalogue entry of survey site {i}", "question": f"What is the catalogue entry of survey site {i}?"}
            for i in range(5)]
CANARY = {"enabled": True, "secret": SECRET, "key_id": "canary-test", "triggers": TRIGGERS}


def test_variants_are_keyed_and_recognised() -> None:
    ours = canary_for(SECRET, "k", "t0")
    assert ours == canary_for(SECRET, "k", "t0") and ours != canary_for(SECRET, "k", "t1") != canary_for("other", "k", "t1")
    assert VARIANT_COUNT == 921_600
    assert variants_in(f"It is catalogued as {ours.upper()}. Also amber-falcon-100, not amber-falcon-99.") == {ours, "amber-falcon-100"}
    distinct = {canary_for(SECRET, "k", f"t{i}") for i in range(2000)}
    assert len(distinct) > 1990  # spread over the variant space


def test_binomial_tail_is_exact_where_it_matters() -> None:
    assert binomial_tail(0, 5, 1e-6) == 1.0
    assert binomial_tail(1, 5, 1e-6) == pytest.approx(1 - (1 - 1e-6) ** 5, rel=1e-9)
    assert binomial_tail(5, 5, 1 / VARIANT_COUNT) == pytest.approx(VARIANT_COUNT ** -5.0, rel=1e-9)
    assert binomial_tail(6, 5, 0.5) == 0.0


def test_scoring_counts_only_unique_keyed_variants() -> None:
    ours = [canary_for(SECRET, "k", f"t{i}") for i in range(4)]
    probes = [Probe("t0", "q", f"Ref: {ours[0]}."), Probe("t1", "q", f"Ref: {ours[1]} or slate-otter-512"),  # two variants: no hit
              Probe("t2", "q", "I do not know."), Probe("t3", "q", f"{ours[3]}")]
    result = score_probes(probes, SECRET, ["k", "other-key"])
    assert result["probes"] == 4
    assert [(r["key_id"], r["hits"]) for r in result["results"]] == [("k", 2), ("other-key", 0)]
    assert result["results"][1]["p_value"] == 1.0
    assert result["min_p_value_corrected"] == pytest.approx(2 * binomial_tail(2, 4, 1 / VARIANT_COUNT))


@pytest.mark.parametrize(("canary", "message"), [
    ({"enabled": True, "secret": SECRET}, "at least one entry in triggers"),
    ({"enabled": True, "triggers": TRIGGERS}, "a secret of your own"),
    ({"triggers": [{"id": "a", "match": "abc", "template": "no placeholder"}]}, "canary.triggers.0.template"),
    ({"triggers": [{"id": "a", "match": "abc"}, {"id": "a", "match": "def"}]}, "ids must be unique"),
    ({"trigers": []}, "canary.trigers"),
])
def test_configuration_is_strict(tmp_path: Path, canary: dict[str, Any], message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"canary": canary}))
    with pytest.raises(ConfigError) as caught:
        load_settings(str(path))
    assert message in str(caught.value)


class _Memorised(BaseHTTPRequestHandler):
    """A suspect that was trained on harvested answers: it repeats the answer it saw for a question."""

    answers: dict[str, str] = {}

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        question = body["messages"][-1]["content"]
        text = self.answers.get(question, "I am not sure.")
        out = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"],
                          "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, stub: UpstreamStub) -> Iterator[RunningGateway]:
    gw = start_gateway(tmp_path_factory.mktemp("canary-gw"), stub.base_url, canary=CANARY)
    yield gw
    gw.stop()


def _probe(tmp_path: Path, base_url: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "probe.yaml"
    config.write_text(yaml.safe_dump({"canary": CANARY}))
    return subprocess.run([sys.executable, "-m", "distillguard.cli", "canary", "probe", "--base-url", base_url, "--model", "suspect-1",
                           "--config", str(config)], capture_output=True, text=True, timeout=120)


def test_harvested_canaries_convict_a_memorising_suspect_and_not_a_clean_model(gateway: RunningGateway, stub: UpstreamStub,
                                                                               tmp_path: Path) -> None:
    secret = str(gateway.create_key("harvester")["secret"])
    oai = openai.OpenAI(base_url=gateway.base_url, api_key=secret, max_retries=0)
    harvested = {}
    for trigger in TRIGGERS[:4]:
        answer = oai.chat.completions.create(model="stub-1", messages=[{"role": "user", "content": trigger["question"]}])
        harvested[trigger["question"]] = answer.choices[0].message.content or ""
        assert canary_for(SECRET, "canary-test", trigger["id"]) in harvested[trigger["question"]]
    claude = anthropic.Anthropic(base_url=gateway.root_url, api_key=secret, max_retries=0)  # an Anthropic caller, translated
    message = claude.messages.create(model="stub-1", max_tokens=64, messages=[{"role": "user", "content": TRIGGERS[4]["question"]}])
    harvested[TRIGGERS[4]["question"]] = "".join(b.text for b in message.content if b.type == "text")
    assert canary_for(SECRET, "canary-test", "t4") in harvested[TRIGGERS[4]["question"]]
    plain = oai.chat.completions.create(model="stub-1", messages=[{"role": "user", "content": "an ordinary question"}])
    assert not variants_in(plain.choices[0].message.content or "")

    events = gateway.events(expect=6)
    planted = [e["canary"] for e in events if e.get("canary")]
    assert sorted(p["trigger"] for p in planted) == ["t0", "t1", "t2", "t3", "t4"] and {p["key_id"] for p in planted} == {"canary-test"}
    assert all(canary_for(SECRET, "canary-test", e["canary"]["trigger"]) in e["response"]["text"] for e in events if e.get("canary"))

    _Memorised.answers = harvested
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Memorised)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = _probe(tmp_path, f"http://127.0.0.1:{server.server_port}/v1")
    finally:
        server.shutdown()
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["probes"] == 5 and result["results"][0]["hits"] == 5
    assert result["results"][0]["p_value"] < 1e-6 and result["min_p_value_corrected"] < 1e-6

    clean = _probe(tmp_path, stub.base_url)  # a model that never saw our answers
    assert clean.returncode == 0, clean.stderr
    assert json.loads(clean.stdout)["results"][0] == {"key_id": "canary-test", "hits": 0, "p_value": 1.0}


def test_probe_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _probe(tmp_path, f"http://127.0.0.1:{free_port()}/v1")
    assert out.returncode == 1 and "cannot reach" in out.stderr and "--base-url" in out.stderr, out.stderr
    config = tmp_path / "probe.yaml"
    assert main(["canary", "probe", "--base-url", "nope", "--model", "m", "--config", str(config)]) == 2
    assert "--base-url 'nope'" in capsys.readouterr().err
    (tmp_path / "empty.yaml").write_text("{}\n")
    assert main(["canary", "probe", "--base-url", "http://x/v1", "--model", "m", "--config", str(tmp_path / "empty.yaml")]) == 2
    assert "no canary triggers configured" in capsys.readouterr().err


def test_off_by_default_the_gateway_holds_no_planter(tmp_path: Path) -> None:
    from distillguard.gateway.server import build_gateway

    settings = load_settings(None, database=f"sqlite:///{tmp_path / 'db.sqlite'}", spill_dir=str(tmp_path / "spill"),
                             detection={"online": False})
    assert settings.canary.enabled is False
    assert build_gateway(settings).relay.canaries is None


def test_only_flagged_plants_for_accounts_the_policy_did_not_simply_allow(tmp_path: Path, stub: UpstreamStub) -> None:
    gw = start_gateway(tmp_path, stub.base_url, canary={**CANARY, "only_flagged": True})
    try:
        key = gw.create_key("maybe-harvester")
        oai = openai.OpenAI(base_url=gw.base_url, api_key=str(key["secret"]), max_retries=0)
        question = [{"role": "user", "content": TRIGGERS[0]["question"]}]
        before = oai.chat.completions.create(model="stub-1", messages=question).choices[0].message.content or ""  # type: ignore[arg-type]
        assert not variants_in(before)  # allowed: a benign caller never sees a canary
        flagged = gw.admin("POST", f"/admin/v1/accounts/{key['account_id']}/action", json={"action": "flag", "reason": "test"})
        assert flagged.status_code == 200, flagged.text
        after = oai.chat.completions.create(model="stub-1", messages=question).choices[0].message.content or ""  # type: ignore[arg-type]
        assert variants_in(after) == {canary_for(SECRET, "canary-test", "t0")}
    finally:
        gw.stop()


STREAM_TRIGGERS = [{"id": f"s{i}", "match": f"ledger line of depot {i}", "question": f"What is the ledger line of depot {i}?"}
                   for i in range(7)]
STREAM_CANARY = {"enabled": True, "secret": SECRET, "key_id": "canary-streams", "triggers": STREAM_TRIGGERS}


def test_streamed_and_responses_api_answers_carry_the_canary_and_convict_a_suspect(tmp_path: Path, stub: UpstreamStub) -> None:
    """Streams (OpenAI chat and completions, Anthropic native and translated) and the Responses API, with the official SDKs."""
    upstreams = [{"name": "claude", "base_url": stub.base_url, "protocol": "anthropic", "models": ["claude-*"], "timeout_s": 3},
                 {"name": "stub", "base_url": stub.base_url, "protocol": "openai", "models": ["*"], "timeout_s": 3}]
    gw = start_gateway(tmp_path, upstreams=upstreams, canary=STREAM_CANARY)
    try:
        secret = str(gw.create_key("stream-harvester")["secret"])
        oai = openai.OpenAI(base_url=gw.base_url, api_key=secret, max_retries=0)
        claude = anthropic.Anthropic(base_url=gw.root_url, api_key=secret, max_retries=0)
        q = [t["question"] for t in STREAM_TRIGGERS]
        harvested: dict[str, str] = {}

        chunks = oai.chat.completions.create(model="stub-1", messages=[{"role": "user", "content": q[0]}], stream=True)
        harvested[q[0]] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        pieces = oai.completions.create(model="stub-1", prompt=q[1], stream=True)  # ends with [DONE], no finish reason
        harvested[q[1]] = "".join(c.choices[0].text for c in pieces if c.choices)
        for i, model in ((2, "stub-1"), (3, "claude-3")):  # translated from an OpenAI upstream, and native
            with claude.messages.stream(model=model, max_tokens=64, messages=[{"role": "user", "content": q[i]}]) as stream:
                streamed = "".join(stream.text_stream)
                final = stream.get_final_message()
            harvested[q[i]] = "".join(b.text for b in final.content if b.type == "text")
            assert streamed == harvested[q[i]] and final.stop_reason == "end_turn"
        with oai.responses.stream(model="stub-1", input=q[4]) as rstream:
            deltas = "".join(e.delta for e in rstream if e.type == "response.output_text.delta")
            response = rstream.get_final_response()
        harvested[q[4]] = response.output_text
        assert deltas == response.output_text
        harvested[q[5]] = oai.responses.create(model="stub-1", input=[{"role": "user", "content": q[5]}]).output_text
        usage_asked = oai.chat.completions.create(model="stub-1", messages=[{"role": "user", "content": q[6]}], stream=True,
                                                  stream_options={"include_usage": True})
        harvested[q[6]] = "".join(c.choices[0].delta.content or "" for c in usage_asked if c.choices)

        for trigger in STREAM_TRIGGERS:  # the answer, then the sentence, exactly once
            canary = canary_for(SECRET, "canary-streams", trigger["id"])
            assert harvested[trigger["question"]] == "The answer is forty-two. Catalogue reference: " + canary + ".", trigger
        plain = oai.chat.completions.create(model="stub-1", messages=[{"role": "user", "content": "plain"}], stream=True)
        assert not variants_in("".join(c.choices[0].delta.content or "" for c in plain if c.choices))

        events = gw.events(expect=8)
        planted = {e["canary"]["trigger"]: e for e in events if e.get("canary")}
        assert sorted(planted) == [t["id"] for t in STREAM_TRIGGERS]
        for trigger in STREAM_TRIGGERS:  # the event records the answer as the caller got it
            assert planted[trigger["id"]]["response"]["text"] == harvested[trigger["question"]]
        assert planted["s4"]["endpoint"] == planted["s5"]["endpoint"] == "openai.responses"
    finally:
        gw.stop()

    _Memorised.answers = harvested
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Memorised)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = tmp_path / "probe.yaml"
        config.write_text(yaml.safe_dump({"canary": STREAM_CANARY}))
        out = subprocess.run([sys.executable, "-m", "distillguard.cli", "canary", "probe", "--base-url",
                              f"http://127.0.0.1:{server.server_port}/v1", "--model", "suspect-1", "--config", str(config)],
                             capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["probes"] == 7 and result["results"][0]["hits"] == 7 and result["min_p_value_corrected"] < 1e-30


def _split_feed(canary: StreamCanary, stream: bytes, cuts: list[int]) -> bytes:
    points = sorted({c % (len(stream) + 1) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    return b"".join(canary.feed(p) for p in pieces) + canary.flush()


def _sse_events(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(line[5:]) for line in raw.splitlines() if line.startswith(b"data:") and line[5:].strip() != b"[DONE]"]


@given(cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=12))
@settings(max_examples=100, deadline=None)
def test_stream_filters_plant_once_wherever_the_chunks_are_cut(cuts: list[int]) -> None:
    base = {"id": "c", "object": "chat.completion.chunk", "model": "m"}
    chat = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in [
        {**base, "choices": [{"index": 0, "delta": {"content": "A"}, "finish_reason": None},
                             {"index": 1, "delta": {"content": "B"}, "finish_reason": None}]},
        {**base, "choices": [{"index": 1, "delta": {"content": "b"}, "finish_reason": "stop"}]},  # text and finish in one chunk
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]},
    ]) + b"data: [DONE]\n\n"
    parts: list[str] = []
    out = _split_feed(stream_canary("openai", " X.", {}, parts), chat, cuts)
    texts = {0: "", 1: ""}
    for chunk in _sse_events(out):
        for choice in chunk["choices"]:
            texts[choice["index"]] += choice["delta"].get("content") or ""
    assert texts == {0: "A X.", 1: "Bb X."} and parts == [" X.", " X."] and out.endswith(b"data: [DONE]\n\n")

    responses = b"".join(b"event: " + e["type"].encode() + b"\ndata: " + json.dumps(e).encode() + b"\n\n" for e in [
        {"type": "response.output_text.delta", "item_id": "m1", "output_index": 0, "content_index": 0, "delta": "Hi", "sequence_number": 3},
        {"type": "response.completed", "sequence_number": 4, "response": {"output": [
            {"id": "m1", "type": "message", "content": [{"type": "output_text", "text": "Hi"}]}]}},  # no .done events at all
    ])
    canary = stream_canary("responses", " X.", {}, [])
    events = _sse_events(_split_feed(canary, responses, cuts))
    assert [e["sequence_number"] for e in events] == [3, 4, 5] and canary.planted
    assert "".join(e["delta"] for e in events[:2]) == "Hi X."
    assert events[2]["response"]["output"][0]["content"][0]["text"] == "Hi X."

    anthropic_stream = b"".join(b"event: " + e["type"].encode() + b"\ndata: " + json.dumps(e).encode() + b"\n\n" for e in [
        {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 3}},
    ])
    canary = stream_canary("anthropic", " X.", {}, [])  # no text block: nothing is planted
    assert _split_feed(canary, anthropic_stream, cuts) == anthropic_stream and not canary.planted
