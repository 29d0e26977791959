"""`distillguard canary probe`: ask a suspect model the trigger questions and test for our canaries.

Statistics (docs/watermark.md, "Canaries"). Each probe is one trigger
question asked once at temperature 0. A probe *hits* a key when the answer
contains that key's variant for the trigger and no other canary-shaped
string (so a model that lists many designations gains nothing). Under the
null hypothesis — the suspect never saw answers carrying our canaries — the
keyed variant is, for the suspect, a uniformly random one of
``VARIANT_COUNT``, independent of its answer; at most one variant can be the
only one in an answer, so each probe hits with probability at most
``1 / VARIANT_COUNT``, independently across triggers (each has its own keyed
variant). The hits over ``n`` probes are then stochastically smaller than
Binomial(n, 1/VARIANT_COUNT), and ``p_value`` is that binomial's upper tail at
the observed hits. ``min_p_value_corrected`` is Bonferroni over the keys
tested.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from distillguard.canary.variants import VARIANT_COUNT, canary_for, variants_in
from distillguard.config import DEFAULT_CANARY_SECRET, CanarySettings, load_settings
from distillguard.exceptions import DistillguardError, UsageError

__all__ = ["Probe", "binomial_tail", "probe_command", "score_probes"]


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X ≥ k) for X ~ Binomial(n, p), summed exactly in log space (tiny p-values stay accurate)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * log_p + (n - j) * log_q for j in range(k, n + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


@dataclass
class Probe:
    trigger: str
    question: str
    answer: str


def score_probes(probes: list[Probe], secret: str, key_ids: list[str]) -> dict[str, Any]:
    """The §6-like result: per key, hits and the p-value; the smallest corrected for the number of keys."""
    results: list[dict[str, Any]] = []
    p_values: list[float] = []
    for key_id in key_ids:
        hits = 0
        for probe in probes:
            found = variants_in(probe.answer)
            if found == {canary_for(secret, key_id, probe.trigger)}:
                hits += 1
        p_values.append(binomial_tail(hits, len(probes), 1.0 / VARIANT_COUNT))
        results.append({"key_id": key_id, "hits": hits, "p_value": p_values[-1]})
    smallest = min(p_values, default=1.0)
    return {"probes": len(probes), "results": results, "min_p_value_corrected": min(1.0, smallest * max(1, len(key_ids))),
            "variants_per_trigger": VARIANT_COUNT}


def _ask(client: httpx.Client, base_url: str, model: str, question: str, max_tokens: int) -> str:
    url = base_url.rstrip("/") + "/chat/completions"
    body = {"model": model, "messages": [{"role": "user", "content": question}], "temperature": 0, "max_tokens": max_tokens}
    try:
        response = client.post(url, json=body)
    except httpx.TransportError as exc:
        raise DistillguardError(f"--base-url {base_url}: cannot reach {url} ({type(exc).__name__}: {exc}); "
                                "is the suspect model's OpenAI-compatible server running there?") from None
    if response.status_code != 200:
        raise DistillguardError(f"--base-url {base_url}: POST {url} answered {response.status_code}: "
                                f"{response.text[:200]!r}; check the URL (it should end in /v1), --model and --api-key")
    try:
        content = response.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise DistillguardError(f"--base-url {base_url}: {url} did not answer in the OpenAI chat completions shape: "
                                f"{response.text[:200]!r}") from None
    return content if isinstance(content, str) else ""


def probe_command(args: argparse.Namespace) -> int:
    settings: CanarySettings = load_settings(args.config).canary
    if not settings.triggers:
        raise UsageError("no canary triggers configured: the probe asks the questions of canary.triggers in --config "
                         "(docs/watermark.md, \"Canaries\")")
    if settings.secret == DEFAULT_CANARY_SECRET:
        raise UsageError("canary.secret is the default: probe with the secret the gateway planted with (--config)")
    url = httpx.URL(args.base_url)
    if url.scheme not in ("http", "https") or not url.host:
        raise UsageError(f"--base-url {args.base_url!r}: expected an http(s) URL such as http://127.0.0.1:8000/v1")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    probes = []
    with httpx.Client(headers=headers, timeout=args.timeout) as client:
        for trigger in settings.triggers:
            question = trigger.question or trigger.match
            probes.append(Probe(trigger.id, question, _ask(client, args.base_url, args.model, question, args.max_tokens)))
    result = score_probes(probes, settings.secret, args.key_ids or [settings.key_id])
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0
