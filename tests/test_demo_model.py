"""The demo model samples from real distributions and speaks both wire formats."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import numpy as np
import openai
import pytest
import tokenizers

from distillguard.demo.model import DemoModel
from tests.demo_server_fixture import DemoModelServer


@pytest.fixture(scope="module")
def model() -> DemoModel:
    return DemoModel.load()


@pytest.fixture(scope="module")
def server() -> Iterator[DemoModelServer]:
    running = DemoModelServer().start()
    yield running
    running.stop()


def test_next_token_distribution_is_proper(model: DemoModel) -> None:
    for context in ([], model.tokenizer.encode("The answer is"), [5, 999_999 % model.vocab_size]):
        probs = model.next_token_probs(context)
        assert probs.shape == (model.vocab_size,)
        assert abs(float(probs.sum()) - 1.0) < 1e-4
        assert float(probs.min()) >= 0.0
    logits = model.next_token_logits(model.tokenizer.encode("The answer"))
    assert np.isfinite(logits).sum() > model.vocab_size // 2


def test_context_changes_the_distribution(model: DemoModel) -> None:
    a = model.next_token_probs(model.tokenizer.encode("def"))
    b = model.next_token_probs(model.tokenizer.encode("The answer is"))
    assert float(np.abs(a - b).sum()) > 0.5


def test_seed_reproduces_and_different_seeds_differ(model: DemoModel) -> None:
    prompt = model.tokenizer.encode("Explain how plants grow")
    one = model.generate(prompt, max_tokens=40, seed=7, min_tokens=40).ids
    assert one == model.generate(prompt, max_tokens=40, seed=7, min_tokens=40).ids
    assert one != model.generate(prompt, max_tokens=40, seed=8, min_tokens=40).ids


def test_logit_bias_shifts_sampling_in_python(model: DemoModel) -> None:
    target = model.tokenizer.token_to_id["the"]
    plain = sum(model.generate([], max_tokens=50, seed=s, min_tokens=50).ids.count(target) for s in range(20))
    biased = sum(model.generate([], max_tokens=50, seed=s, min_tokens=50, logit_bias={target: 3.0}).ids.count(target) for s in range(20))
    assert biased > plain * 2


def test_hf_tokenizer_export_gives_identical_ids(model: DemoModel, tmp_path: Path) -> None:
    path = model.tokenizer.save_hf(tmp_path / "tokenizer.json")
    hf = tokenizers.Tokenizer.from_file(str(path))
    for text in ["Janet sells 16 - 3 - 4 = 9 duck eggs a day.\nShe makes $18.", "def add(a, b):\n    return a + b", "Zzqx unknownword!?"]:
        assert hf.encode(text).ids == model.tokenizer.encode(text)


def test_token_pieces_add_up_to_every_prefix(model: DemoModel) -> None:
    """Streaming emits decode_pieces one by one; every prefix must read exactly as decoding it whole would."""
    rng = np.random.default_rng(3)
    tokenizer = model.tokenizer
    sampled = [model.generate(tokenizer.encode(p), max_tokens=120, seed=s).ids for s, p in enumerate(["What is 2+2?", "Write a haiku.\nAbout rain."])]
    random = [list(rng.integers(0, len(tokenizer.id_to_token) + 3, size=80)) for _ in range(20)]  # includes unknown ids
    for ids in sampled + random:
        pieces = tokenizer.decode_pieces(ids)
        assert len(pieces) == len(ids)
        for k in range(len(ids) + 1):
            assert "".join(pieces[:k]) == tokenizer.decode(ids[:k])


def test_openai_chat_non_streaming_and_streaming(server: DemoModelServer) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key="unused")
    reply = client.chat.completions.create(model="demo-1", messages=[{"role": "user", "content": "Tell me about dogs"}], max_tokens=30, seed=1, n=3)
    assert len(reply.choices) == 3
    assert reply.usage is not None and reply.usage.completion_tokens > 0 and reply.usage.prompt_tokens == 4
    again = client.chat.completions.create(model="demo-1", messages=[{"role": "user", "content": "Tell me about dogs"}], max_tokens=30, seed=1, n=3)
    assert [c.message.content for c in again.choices] == [c.message.content for c in reply.choices]
    stream = client.chat.completions.create(model="demo-1", messages=[{"role": "user", "content": "Tell me about dogs"}], max_tokens=30, seed=1, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == reply.choices[0].message.content


def test_reasoning_parts_for_questions_that_call_for_it(server: DemoModelServer) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key="unused")
    why = client.chat.completions.create(model="demo-1", messages=[{"role": "user", "content": "Why is 7 * 6 = 42? Explain."}], max_tokens=40, seed=3)
    assert (why.choices[0].message.model_extra or {}).get("reasoning_content")
    plain = client.chat.completions.create(model="demo-1", messages=[{"role": "user", "content": "Tell me about dogs"}], max_tokens=20, seed=3)
    assert not (plain.choices[0].message.model_extra or {}).get("reasoning_content")
    stream = client.chat.completions.create(model="demo-1", messages=[{"role": "user", "content": "Explain gravity"}], max_tokens=30, stream=True)
    reasoning = [c.choices[0].delta.model_extra.get("reasoning_content") for c in stream if c.choices and c.choices[0].delta.model_extra]
    assert any(reasoning)
    a = anthropic.Anthropic(base_url=server.root_url, api_key="unused")
    message = a.messages.create(model="demo-1", max_tokens=40, messages=[{"role": "user", "content": "Why do we sleep?"}])
    assert [b.type for b in message.content] == ["thinking", "text"]
    with a.messages.stream(model="demo-1", max_tokens=40, messages=[{"role": "user", "content": "Explain rain"}]) as s:
        final = s.get_final_message()
    assert final.content[0].type == "thinking" and final.usage.output_tokens > 0


def test_logit_bias_over_http_changes_the_output_distribution(server: DemoModelServer, model: DemoModel) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key="unused")
    token = "the"
    target = model.tokenizer.token_to_id[token]

    def frequency(bias: dict[str, int] | None) -> float:
        words: Counter[str] = Counter()
        for seed in range(8):
            reply = client.completions.create(model="demo-1", prompt="Write", max_tokens=60, seed=seed, logit_bias=bias or {}, extra_body={"min_tokens": 60})
            words.update(model.tokenizer.id_to_token[i] for i in model.tokenizer.encode(reply.choices[0].text))
        return words[token] / max(1, sum(words.values()))

    assert frequency({str(target): 4}) > 2 * frequency(None) + 0.01


def test_logprobs_and_stop(server: DemoModelServer) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key="unused")
    reply = client.chat.completions.create(model="demo-1", messages=[{"role": "user", "content": "hi"}], max_tokens=10, logprobs=True, top_logprobs=3, seed=5)
    content = reply.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content and all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)
    assert all(t.top_logprobs[0].logprob >= t.top_logprobs[-1].logprob for t in content)
    long = client.completions.create(model="demo-1", prompt="x", max_tokens=80, seed=2, extra_body={"min_tokens": 80}).choices[0].text
    stop_word = long.split()[3]
    cut = client.completions.create(model="demo-1", prompt="x", max_tokens=80, seed=2, stop=[stop_word], extra_body={"min_tokens": 80}).choices[0]
    assert stop_word not in cut.text and cut.finish_reason == "stop"


def test_bad_requests_get_protocol_shaped_errors(server: DemoModelServer) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="demo-1", messages=[{"role": "user", "content": "hi"}], temperature=9)
    with pytest.raises(anthropic.NotFoundError):
        anthropic.Anthropic(base_url=server.root_url, api_key="x", max_retries=0).messages.create(model="nope", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert httpx.post(server.base_url + "/chat/completions", content=b"{bad").status_code == 400
    assert httpx.get(server.base_url + "/tokenizer").json()["model"]["type"] == "WordLevel"
