"""Attestation cost: µs per request to verify (gateway) and to sign (SDK), vs bare Ed25519.

    .venv/bin/python bench/attestation_verify.py [--requests 5000] [--rounds 3]

What is measured, per request, timed one call at a time (median and p99 over
``--rounds`` × ``--requests`` samples; every request distinct: its own body,
fresh nonce and ``created``):

* **verify** — ``AttestationVerifier.verify(method, url, headers, body)`` on a
  request signed by the SDK's ``sign_request`` (RFC 9421, Ed25519, covering
  ``@method``, ``@target-uri``, ``content-digest`` and ``dg-client-signals``, as
  in ``tests/test_signals.py``): header folding, signals decoding, signature
  base reconstruction, Content-Digest check, Ed25519 verify, nonce cache. Every
  result must be ``valid``; a replay of one request must be ``replayed``.
* **sign** — ``sign_request(httpx.Request, identity)``: collecting and encoding
  the client signals, Content-Digest, signature base, Ed25519 sign. The share of
  ``collect_signals`` alone is shown too.

Baselines in the same run: a bare ``Ed25519PublicKey.verify`` / ``Ed25519PrivateKey.sign``
(``cryptography``) of distinct random messages as long as the real signature
base, i.e. the unavoidable cryptography; the ratio is the protocol overhead.
Writes the markdown to ``bench/out/attestation_verify.md``.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

from measure import percentile, src_digest, write_report

URL = "http://gw.test/v1/chat/completions"







def stats(samples_ns: list[int]) -> dict[str, float]:
    us = [s / 1000 for s in samples_ns]
    return {"n": len(us), "median": statistics.median(us), "p99": percentile(us, 99), "p90": percentile(us, 90), "mean": statistics.fmean(us)}


def body_for(i: int) -> bytes:
    return orjson.dumps({"model": "demo-1", "max_tokens": 256,
                         "messages": [{"role": "user", "content": f"Request {i}: tell me something about benchmarks number {i * 7919}."}]})


def run_round(n: int, round_no: int) -> dict[str, list[int]]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from distillguard.client import Identity, sign_request
    from distillguard.client.identity import collect_signals
    from distillguard.signals import AttestationVerifier

    samples: dict[str, list[int]] = {k: [] for k in ("verify", "sign", "collect_signals", "bare_verify", "bare_sign")}
    with tempfile.TemporaryDirectory(prefix="dg-bench-attest-") as tmp:
        identity = Identity.load_or_create(Path(tmp) / "client")
        verifier = AttestationVerifier({identity.install_id: identity.public_key_b64}, clock_skew_s=300)
        clock = time.perf_counter_ns
        # -- client side: sign distinct requests --------------------------------------------------------
        signed: list[tuple[str, str, list[tuple[str, str]], bytes]] = []
        for i in range(n):
            request = httpx.Request("POST", URL, content=body_for(round_no * n + i), headers={"Content-Type": "application/json"})
            t0 = clock()
            sign_request(request, identity)
            samples["sign"].append(clock() - t0)
            signed.append((request.method, str(request.url), list(request.headers.items()), request.content))
        for _ in range(n):
            t0 = clock()
            collect_signals(identity)
            samples["collect_signals"].append(clock() - t0)
        # -- server side: verify each once ---------------------------------------------------------------
        statuses: dict[str, int] = {}
        for method, url, headers, body in signed:
            t0 = clock()
            result = verifier.verify(method, url, headers, body)
            samples["verify"].append(clock() - t0)
            status = result["status"] if result else "none"
            statuses[status] = statuses.get(status, 0) + 1
        if statuses != {"valid": n}:
            raise SystemExit(f"expected {n} valid attestations, got {statuses}")
        replay = verifier.verify(*signed[0])
        if not replay or replay["status"] != "replayed":
            raise SystemExit(f"a replayed request verified as {replay}")
        # -- baselines: bare Ed25519 over messages as long as the real signature base -------------------------
        base_len = signature_base_length(signed[0][2], signed[0][3])
        key = Ed25519PrivateKey.generate()
        public = key.public_key()
        messages = [os.urandom(base_len) for _ in range(n)]
        signatures = []
        for message in messages:
            t0 = clock()
            signature = key.sign(message)
            samples["bare_sign"].append(clock() - t0)
            signatures.append(signature)
        for message, signature in zip(messages, signatures, strict=True):
            t0 = clock()
            public.verify(signature, message)
            samples["bare_verify"].append(clock() - t0)
    samples["_base_len"] = [base_len]
    return samples


def signature_base_length(headers: list[tuple[str, str]], body: bytes) -> int:
    """Length of the RFC 9421 signature base the SDK signed (method, target URI, digest, signals, params)."""
    h = {k.lower(): v for k, v in headers}
    params = h["signature-input"].split("=", 1)[1]
    lines = ['"@method": POST', f'"@target-uri": {URL}', f'"content-digest": {h["content-digest"]}',
             f'"dg-client-signals": {h["dg-client-signals"]}', f'"@signature-params": {params}']
    return len("\n".join(lines).encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000, help="distinct signed requests per round (≥ 5,000)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    began = time.perf_counter()
    digest = src_digest()
    load = os.getloadavg()[0]
    merged: dict[str, list[int]] = {}
    round_medians: dict[str, list[float]] = {}
    for r in range(args.rounds):
        samples = run_round(args.requests, r)
        gc.collect()
        for k, v in samples.items():
            merged.setdefault(k, []).extend(v)
            if not k.startswith("_"):
                round_medians.setdefault(k, []).append(statistics.median(v) / 1000)
        print(f"  round {r + 1}: verify median {statistics.median(samples['verify']) / 1000:.1f} µs, "
              f"sign median {statistics.median(samples['sign']) / 1000:.1f} µs", file=sys.stderr)
    s = {k: stats(v) for k, v in merged.items() if not k.startswith("_")}
    base_len = merged["_base_len"][0]

    def row(label: str, key: str, ref: str | None) -> str:
        m = s[key]
        spread = f"{min(round_medians[key]):.1f}–{max(round_medians[key]):.1f}"
        ratio = f"{m['median'] / s[ref]['median']:.1f}× | {m['p99'] / s[ref]['p99']:.1f}×" if ref else "1.0× | 1.0×"
        rate = f"{1e6 / m['median']:,.0f}"
        return f"| {label} | {m['n']:,} | **{m['median']:.1f}** | {spread} | {m['p90']:.1f} | {m['p99']:.1f} | {rate} | {ratio} |"

    lines = [
        "# Attestation: verification (gateway) and signing (SDK) per request",
        "",
        f"{args.rounds} rounds × {args.requests:,} distinct signed requests (fresh nonce each); every call timed on its own "
        f"(`perf_counter_ns`), GC on. Signature base ≈ {base_len} bytes; the baselines sign/verify distinct random "
        f"messages of that length. Load average at start: {load:.2f} on {os.cpu_count()} cores.",
        "",
        "| operation | samples | µs median | round medians | µs p90 | µs p99 | per core/s (median) | vs baseline: median | p99 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        row("**server: `AttestationVerifier.verify`**", "verify", "bare_verify"),
        row("baseline: bare `Ed25519PublicKey.verify`", "bare_verify", None),
        row("**client: `sign_request`**", "sign", "bare_sign"),
        row("↳ of which `collect_signals` (per call)", "collect_signals", "bare_sign"),
        row("baseline: bare `Ed25519PrivateKey.sign`", "bare_sign", None),
        "",
        f"Protocol overhead over the bare cryptography: verify +{s['verify']['median'] - s['bare_verify']['median']:.1f} µs "
        f"({s['verify']['median'] / s['bare_verify']['median']:.1f}×), sign +{s['sign']['median'] - s['bare_sign']['median']:.1f} µs "
        f"({s['sign']['median'] / s['bare_sign']['median']:.1f}×; `collect_signals` is "
        f"{s['collect_signals']['median'] / s['sign']['median']:.0%} of it).",
    ]
    write_report("attestation_verify.md", lines, began, digest)


if __name__ == "__main__":
    main()
