"""Watermarks: marked text is detected with its key and not others, p-values stay honest, the gateway marks black-box upstreams."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import numpy as np
import openai
import pytest

from distillguard.config import Settings
from distillguard.demo.model import DemoModel
from distillguard.watermark import (
    KGW,
    GatewayWatermarker,
    HFWatermarkProcessor,
    Unigram,
    derive_key,
    detect_ids,
    detect_text,
    holm,
    unigram_universe,
    vllm_processor,
)
from distillguard.watermark.gateway import BIAS_LIMIT, UNIVERSE
from tests.demo_server_fixture import DemoModelServer
from tests.gateway_fixtures import RunningGateway, start_gateway
from tests.upstream_stub import UpstreamStub

SECRET = "test-master-secret"


@pytest.fixture(scope="module")
def model() -> DemoModel:
    return DemoModel.load()


def _marked(model: DemoModel, processor: object, seed: int, n: int = 200) -> list[int]:
    return model.generate(model.tokenizer.encode("Tell me about the ocean"), max_tokens=n, min_tokens=n, seed=seed,
                          logits_processors=[processor]).ids  # type: ignore[list-item]


def test_kgw_marked_text_is_detected_with_its_key_only(model: DemoModel) -> None:
    ids = _marked(model, KGW(derive_key(SECRET, "org:acme"), model.vocab_size), seed=4)
    result = detect_ids(ids, model.vocab_size, SECRET, ["global", "org:acme", "cluster:cl_9"], scheme="kgw")
    by_key = {r["key_id"]: r for r in result["results"]}
    assert by_key["org:acme"]["p_value"] < 1e-6
    assert by_key["global"]["p_value"] > 1e-3 and by_key["cluster:cl_9"]["p_value"] > 1e-3
    assert result["min_p_value_corrected"] == pytest.approx(3 * by_key["org:acme"]["p_value"])
    assert result["verdict"] == "watermarked"


def test_unmarked_text_is_not_detected(model: DemoModel) -> None:
    p_values = []
    for seed in range(40):
        ids = model.generate(model.tokenizer.encode("Tell me about the ocean"), max_tokens=150, min_tokens=150, seed=seed).ids
        p_values.append(detect_ids(ids, model.vocab_size, SECRET, ["global"], scheme="kgw")["results"][0]["p_value"])
    assert min(p_values) > 1e-4
    assert 0.25 < float(np.median(p_values)) < 0.75  # roughly uniform under the null


def test_repetition_does_not_inflate_the_score(model: DemoModel) -> None:
    ids = _marked(model, KGW(derive_key(SECRET, "global"), model.vocab_size), seed=1, n=60)
    once = detect_ids(ids, model.vocab_size, SECRET, ["global"], scheme="kgw")
    many = detect_ids(ids * 20, model.vocab_size, SECRET, ["global"], scheme="kgw")
    assert many["tokens_scored"] <= once["tokens_scored"] + 1
    assert abs(many["results"][0]["z"] - once["results"][0]["z"]) < 0.5


def test_black_box_logit_bias_marking(model: DemoModel) -> None:
    scheme = Unigram(derive_key(SECRET, "global"), model.vocab_size, universe=UNIVERSE)
    bias = scheme.logit_bias(300)
    assert len(bias) == 300 and all(i < UNIVERSE for i in bias)
    ids = model.generate(model.tokenizer.encode("Tell me about the ocean"), max_tokens=400, min_tokens=400, seed=2, logit_bias=bias).ids
    result = detect_ids(ids, model.vocab_size, SECRET, ["global", "org:other"], universe=UNIVERSE)
    by_key = {r["key_id"]: r for r in result["results"]}
    assert by_key["global"]["p_value"] < 1e-4 and by_key["org:other"]["p_value"] > 1e-3


def test_holm_and_short_text_message() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    result = detect_ids([5, 6, 7], 1000, SECRET, ["global"], scheme="kgw")
    assert result["verdict"] == "too_short" and "needed" in result["note"]
    with pytest.raises(ValueError, match="key id"):
        detect_ids([1, 2], 1000, SECRET, ["acct:1"])


def test_processor_call_signatures(model: DemoModel) -> None:
    torch = pytest.importorskip("torch", reason="torch is the optional 'torch' extra; the HF/vLLM tensor paths need it")
    processor = HFWatermarkProcessor(SECRET, "global", model.vocab_size)
    scores = torch.zeros((2, model.vocab_size))
    out = processor(torch.tensor([[1, 5], [1, 7]]), scores)
    assert out.shape == scores.shape and int((out[0] > 0).sum()) == int(round(0.25 * model.vocab_size))
    vllm = vllm_processor(SECRET, "global", model.vocab_size)
    assert int((vllm([1, 5], torch.zeros(model.vocab_size)) > 0).sum()) == int(round(0.25 * model.vocab_size))


def test_vllm_processor_on_numpy(model: DemoModel) -> None:
    vllm = vllm_processor(SECRET, "global", model.vocab_size)
    out = vllm([1, 5], np.zeros(model.vocab_size, dtype=np.float32))
    assert int((out > 0).sum()) == int(round(0.25 * model.vocab_size))


def _cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "distillguard.cli", "watermark", "detect", *args], capture_output=True, input=stdin, timeout=120)


def test_cli_contract_and_bad_input(model: DemoModel, tmp_path: Path) -> None:
    ids = _marked(model, Unigram(derive_key("change-me-watermark", "global"), model.vocab_size, universe=UNIVERSE), seed=3, n=400)
    path = tmp_path / "text.txt"
    path.write_text(model.tokenizer.decode(ids))
    out = _cli("--text-file", str(path), "--key-id", "global", "--key-id", "org:zzz")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert set(result) >= {"tokens_scored", "results", "min_p_value_corrected"}
    assert [r["key_id"] for r in result["results"]] == ["global", "org:zzz"]
    assert result["results"][0]["p_value"] < 1e-4 < result["results"][1]["p_value"]
    (tmp_path / "empty.txt").write_text("   \n")
    (tmp_path / "bin.dat").write_bytes(b"\x00\x01\x02binary")
    for bad, message in ((tmp_path / "empty.txt", b"empty"), (tmp_path / "bin.dat", b"binary"), (tmp_path / "missing.txt", b"not found")):
        failed = _cli("--text-file", str(bad))
        assert failed.returncode == 2 and message in failed.stderr and b"Traceback" not in failed.stderr


@pytest.fixture(scope="module")
def demo_server() -> Iterator[DemoModelServer]:
    server = DemoModelServer().start()
    yield server
    server.stop()


def test_gateway_marks_a_black_box_upstream_and_records_the_key(demo_server: DemoModelServer, model: DemoModel, tmp_path: Path) -> None:
    tokenizer = model.tokenizer.save_hf(tmp_path / "tokenizer.json")
    upstreams = [{"name": "demo", "base_url": demo_server.base_url, "protocol": "openai", "models": ["*"],
                  "watermark": "logit_bias", "tokenizer": str(tokenizer)}]
    gw = start_gateway(tmp_path, upstreams=upstreams, watermark={"enabled": True, "master_secret": SECRET},
                       detection={"online": False})
    try:
        key = gw.create_key("marked", org="acme")
        client = openai.OpenAI(base_url=gw.base_url, api_key=key["secret"])
        texts = [client.completions.create(model="demo-1", prompt="Tell me about the ocean", max_tokens=150, seed=s,
                                           extra_body={"min_tokens": 150}).choices[0].text for s in range(3)]
        result = detect_ids(model.tokenizer.encode(" ".join(texts)), model.vocab_size, SECRET, ["org:acme", "global", "org:other"],
                            universe=UNIVERSE)
        by_key = {r["key_id"]: r for r in result["results"]}
        assert by_key["org:acme"]["p_value"] < 1e-4
        assert by_key["global"]["p_value"] > 1e-3 and by_key["org:other"]["p_value"] > 1e-3
        deadline = time.time() + 5
        events: list = []
        while not events and time.time() < deadline:
            events = [e for e in gw.events() if e["account_id"] == key["account_id"]]
            time.sleep(0.1)
        assert events and all(e["watermark"]["key_id"] == "org:acme" for e in events)
        admin = gw.admin("POST", "/admin/v1/watermark/detect", json={"text": " ".join(texts), "key_ids": ["org:acme", "global"],
                                                                     "tokenizer": str(tokenizer)})
        assert admin.status_code == 200 and admin.json()["results"][0]["p_value"] < 1e-4
    finally:
        gw.stop()
    assert Settings().watermark.enabled is False


def _wait_events(gw: RunningGateway, account_id: str, count: int) -> list[dict]:
    deadline = time.time() + 5
    events: list[dict] = []
    while len(events) < count and time.time() < deadline:
        events = [e for e in gw.events() if e["account_id"] == account_id]
        time.sleep(0.1)
    return events


def test_gateway_marks_only_openai_protocol_upstreams(model: DemoModel, tmp_path: Path) -> None:
    """Anthropic's API has no logit_bias: a native Anthropic upstream is not marked; a translated request is."""
    tokenizer = str(model.tokenizer.save_hf(tmp_path / "tokenizer.json"))
    stub = UpstreamStub().start()
    upstreams = [
        {"name": "claude", "base_url": stub.base_url, "protocol": "anthropic", "models": ["claude-*"], "watermark": "logit_bias",
         "tokenizer": tokenizer},
        {"name": "openai", "base_url": stub.base_url, "protocol": "openai", "models": ["*"], "watermark": "logit_bias", "tokenizer": tokenizer},
    ]
    gw = start_gateway(tmp_path, upstreams=upstreams, watermark={"enabled": True, "master_secret": SECRET}, detection={"online": False})
    try:
        key = gw.create_key("anthropic-client")
        client = anthropic.Anthropic(base_url=gw.root_url, api_key=key["secret"], max_retries=0)
        client.messages.create(model="claude-stub", max_tokens=10, messages=[{"role": "user", "content": "native"}])
        assert "logit_bias" not in stub.requests[-1]
        client.messages.create(model="stub-1", max_tokens=10, messages=[{"role": "user", "content": "translated"}])
        assert len(stub.requests[-1]["logit_bias"]) == BIAS_LIMIT
        by_prompt = {e["request"]["messages"][0]["content"]: e for e in _wait_events(gw, key["account_id"], 2)}
        assert by_prompt["native"]["watermark"]["key_id"] is None
        assert by_prompt["translated"]["watermark"]["key_id"] == "global"
        assert "upstream claude: watermark 'logit_bias' ignored" in gw.log()
    finally:
        gw.stop()
        stub.stop()


@pytest.mark.parametrize("gamma", [0.25, 0.4, 0.5])
def test_the_whole_green_list_fits_the_bias_table(model: DemoModel, tmp_path: Path, gamma: float) -> None:
    """Every green id the detector counts is biased by the gateway: the universe shrinks as γ grows."""
    tokenizer = str(model.tokenizer.save_hf(tmp_path / "tokenizer.json"))
    settings = Settings(watermark={"enabled": True, "master_secret": SECRET, "gamma": gamma},
                        upstreams=[{"name": "demo", "base_url": "http://127.0.0.1:9/v1", "watermark": "logit_bias", "tokenizer": tokenizer}])
    marked = GatewayWatermarker(settings).bias_for("demo")
    assert marked is not None
    _, bias = marked
    universe = unigram_universe(model.vocab_size, gamma)
    assert universe == min(UNIVERSE, model.vocab_size, int(BIAS_LIMIT / gamma))
    detector_green = Unigram(derive_key(SECRET, "global"), model.vocab_size, gamma=gamma, universe=universe).green_ids
    assert set(bias) == {int(i) for i in detector_green} and len(bias) <= BIAS_LIMIT
    ids = model.generate(model.tokenizer.encode("Tell me about the ocean"), max_tokens=300, min_tokens=300, seed=2, logit_bias=bias).ids
    result = detect_text(model.tokenizer.decode(ids), ["global", "org:other"], settings)
    by_key = {r["key_id"]: r for r in result["results"]}
    assert by_key["global"]["p_value"] < 1e-6 and by_key["org:other"]["p_value"] > 1e-3


def test_unigram_marks_from_the_self_hosted_processors_are_detected(model: DemoModel) -> None:
    """The HF and vLLM processors draw the Unigram green list from the universe `watermark detect` scores."""
    settings = Settings(watermark={"master_secret": SECRET})
    prompt = model.tokenizer.encode("Tell me about the ocean")
    hf = HFWatermarkProcessor(SECRET, "org:acme", model.vocab_size, scheme="unigram")
    vllm = vllm_processor(SECRET, "global", model.vocab_size, scheme="unigram")
    for processor, key_id, seed in ((hf.scheme, "org:acme", 3), (vllm, "global", 5)):
        ids = model.generate(prompt, max_tokens=300, min_tokens=300, seed=seed, logits_processors=[processor]).ids  # type: ignore[list-item]
        result = detect_text(model.tokenizer.decode(ids), ["global", "org:acme"], settings)
        by_key = {r["key_id"]: r for r in result["results"]}
        other = "global" if key_id == "org:acme" else "org:acme"
        assert by_key[key_id]["p_value"] < 1e-6 and by_key[other]["p_value"] > 1e-3, result
    with pytest.raises(ValueError, match="scheme"):
        HFWatermarkProcessor(SECRET, "global", model.vocab_size, scheme="unigam")


def test_unigram_mark_from_the_hf_tensor_path_is_detected(model: DemoModel) -> None:
    torch = pytest.importorskip("torch", reason="torch is the optional 'torch' extra; the HF tensor path needs it")
    hf = HFWatermarkProcessor(SECRET, "global", model.vocab_size, scheme="unigram")

    def through_tensors(context: list[int], logits: np.ndarray) -> np.ndarray:  # what transformers' generate() calls
        scores = hf(torch.tensor([context or [0]]), torch.from_numpy(np.asarray(logits, dtype=np.float32))[None, :])
        return scores[0].numpy()

    ids = model.generate(model.tokenizer.encode("Tell me about the ocean"), max_tokens=300, min_tokens=300, seed=7,
                         logits_processors=[through_tensors]).ids
    result = detect_text(model.tokenizer.decode(ids), ["global"], Settings(watermark={"master_secret": SECRET}))
    assert result["verdict"] == "watermarked", result


def test_a_long_unigram_harvest_stays_detectable_and_unmarked_long_text_does_not(model: DemoModel) -> None:
    """60 responses: nearly every id of the universe appears, so distinct-token scoring alone falls back to γ.

    The log-count statistic keeps the mark visible; on unmarked text of the same length no key gets a small p-value.
    """
    universe = unigram_universe(model.vocab_size, 0.25)
    bias = Unigram(derive_key(SECRET, "global"), model.vocab_size, universe=universe).logit_bias(BIAS_LIMIT)
    prompts = ["Tell me about the ocean", "How do I bake bread?", "Explain the history of Rome", "What is a prime number?"]

    def harvest(marked: bool, seed: int) -> list[int]:
        ids: list[int] = []
        for i in range(60):
            ids += model.generate(model.tokenizer.encode(prompts[i % 4]), max_tokens=300, min_tokens=300, seed=seed + i,
                                  logit_bias=bias if marked else None).ids
        return ids

    marked = harvest(True, 100)
    distinct_only = Unigram(derive_key(SECRET, "global"), model.vocab_size, universe=universe).scored(marked)
    assert len(distinct_only) > 0.6 * universe  # the saturation the log-count statistic exists for
    result = detect_ids(marked, model.vocab_size, SECRET, ["global", "org:other"])
    assert result["verdict"] == "watermarked" and result["results"][0]["p_value"] < 1e-9
    assert result["results"][1]["p_value"] > 1e-3
    unmarked = harvest(False, 5000)
    p_values = [detect_ids(unmarked, model.vocab_size, SECRET, [f"org:{j}"])["results"][0]["p_value"] for j in range(40)]
    assert min(p_values) > 1e-3
