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

from distillguard.canary import VARIANT_COUNT, canary_for, variants_in
from distillguard.canary.probe import Probe, binomial_tail, score_probes
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
