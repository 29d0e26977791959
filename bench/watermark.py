"""Watermark strength, false positives, quality cost and robustness, marked beside unmarked text from the demo model.

    .venv/bin/python bench/watermark.py [--quick] [--workers 2]

Both schemes (KGW: green list seeded by the previous token; Unigram: one fixed
green list) run at the default strength of ``WatermarkSettings`` (δ, γ) through
the self-hosted processor ``vllm_processor(...)`` (numpy path) as logits
processors on the demo model (``DemoModel.generate(logits_processors=...)``), and
every score is ``detect_ids``'s — so the bench follows whatever green-list
universe and test the package uses.
Every marked text has an UNMARKED twin: the same prompt and the same sampling
seed, without the processor. What is measured:

1. **Strength vs length** — ~50 prompts from the bundled corpora (GSM8K, MBPP,
   HumanEval, MMLU, Self-Instruct, OpenAssistant, MT-bench), 400 tokens each
   (``min_tokens = max_tokens``); the z-score and p-value of ``detect_ids`` on the
   first 25/50/100/200/400 tokens: median and 10th/90th percentiles, marked and
   unmarked, and the share of texts below the default threshold (1e-6). The
   issue's target is p < 1e-6 within 200 tokens at default strength.
2. **False positives** — ≥ 10,000 fresh unmarked demo-model generations of 100
   tokens (distinct seeds, prompts cycled through the whole pool), scored by
   ``detect_ids`` (a) with ONE fixed key, as a provider testing its production
   key sees it, and (b) with a fresh key per text, the randomness the p-value is
   defined over.
   Plus the bundled human corpus texts (fixed key). Counts at 1e-6, 1e-3, 1e-2,
   a one-sided 95% Clopper–Pearson upper bound (= the rule of three, 3/n, when
   nothing is observed), and for KGW the rate an exact Binomial(T, γ) null
   predicts for the observed lengths (the test is discrete, so this sits at or
   below the threshold).
3. **Quality cost** — perplexity of the 200-token marked and unmarked texts
   under the UNMARKED demo model (its plain trigram distribution, no prompt boost):
   exp(−mean log-prob per token).
4. **Robustness** — the marked texts cut to 200 tokens, then 10/20/30% of their
   tokens deleted or replaced by uniformly random vocabulary entries (the demo
   tokenizer is word-level: a token is a word or a punctuation run); median p and
   detection rates at 1e-6 and 1e-3.

The markdown report goes to stdout and to ``bench/out/watermark.md``.
``--quick`` shrinks every sample (a smoke run, written to ``bench/out/watermark-quick.md``).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import resource
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from distillguard.config import WatermarkSettings
from distillguard.demo.model import DemoModel, training_texts
from distillguard.sim.corpora import SWEEP_POOLS, PromptPools
from distillguard.watermark import KGW, derive_key, detect_ids, vllm_processor
from distillguard.watermark.detect import DEFAULT_THRESHOLD, binomial_tail, z_test
from distillguard.watermark.universe import unigram_universe

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
SECRET = "bench-watermark-secret"
KEY_ID = "global"
LENGTHS = (25, 50, 100, 200, 400)
THRESHOLDS = (DEFAULT_THRESHOLD, 1e-3, 1e-2)
ATTACK_RATES = (0.1, 0.2, 0.3)
SETTINGS = WatermarkSettings()
GAMMA, DELTA = SETTINGS.gamma, SETTINGS.delta
SCHEMES = ("kgw", "unigram")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def all_prompts() -> list[str]:
    """Every prompt of the bundled pools (both halves), in a fixed shuffled order."""
    pools = PromptPools.load()
    prompts = [p for name in SWEEP_POOLS for p in pools.sweeps[name] + pools.sweeps_held_out[name]]
    prompts += [turns[0] for turns in pools.conversations + pools.conversations_held_out]
    random.Random(0).shuffle(prompts)
    return prompts


def marker(scheme: str, vocab_size: int) -> Any:
    """The package's self-hosted logits processor, ``(token ids so far, logits) -> logits``."""
    return vllm_processor(SECRET, KEY_ID, vocab_size, scheme=scheme, gamma=GAMMA, delta=DELTA)


def detect(ids: list[int], vocab_size: int, scheme: str, key_ids: Sequence[str] = (KEY_ID,)) -> dict[str, Any]:
    return detect_ids(ids, vocab_size, SECRET, list(key_ids), scheme=scheme, gamma=GAMMA)


# -- workers (run in a process pool; the model is loaded once per process) ---------------------------------

def _twins(job: tuple[list[str], list[int], int]) -> list[dict[str, list[int]]]:
    """Unmarked, KGW-marked and Unigram-marked generations for each (prompt, seed), same seed for all three."""
    prompts, seeds, length = job
    model = DemoModel.load()
    markers = {name: marker(name, model.vocab_size) for name in SCHEMES}
    out = []
    for prompt, seed in zip(prompts, seeds, strict=True):
        ids = model.tokenizer.encode(prompt)
        row = {"unmarked": model.generate(ids, max_tokens=length, min_tokens=length, seed=seed).ids}
        for name, processor in markers.items():
            row[name] = model.generate(ids, max_tokens=length, min_tokens=length, seed=seed, logits_processors=[processor]).ids
        out.append(row)
    return out


def _null_scores(job: tuple[list[str], list[int], int]) -> list[tuple[tuple[float, ...], list[int]]]:
    """Unmarked generations scored by ``detect_ids`` with the fixed key and with a fresh key per text.

    Returns per text: per scheme (tokens scored, z fixed, p fixed, z fresh, p fresh), and the token ids.
    """
    prompts, seeds, length = job
    model = DemoModel.load()
    rows = []
    for prompt, seed in zip(prompts, seeds, strict=True):
        ids = model.generate(model.tokenizer.encode(prompt), max_tokens=length, min_tokens=length, seed=seed).ids
        row: list[float] = []
        for name in SCHEMES:
            result = detect(ids, model.vocab_size, name, (KEY_ID, f"org:fpr-{seed}"))
            fixed, fresh = result["results"]
            row += [result["tokens_scored"], fixed["z"], fixed["p_value"], fresh["z"], fresh["p_value"]]
        rows.append((tuple(row), ids))
    return rows


def _key_spread(job: tuple[str, list[str], list[list[int]]]) -> list[tuple[float, float, int, int]]:
    """For each key: mean and sd of z over the same unmarked texts, and how many have p < 1e-2 and p < 1e-3.

    KGW goes through one ``KGW`` instance per key (its green-list cache makes many texts cheap) with the
    same ``scored`` + ``z_test`` that ``detect_ids`` runs for KGW; Unigram through ``detect_ids`` itself.
    """
    scheme, key_ids, texts = job
    model = DemoModel.load()
    out = []
    for key_id in key_ids:
        if scheme == "kgw":
            kgw = KGW(derive_key(SECRET, key_id), model.vocab_size, gamma=GAMMA)
            tests = [z_test(sum(flags), len(flags), GAMMA) for flags in (kgw.scored(ids) for ids in texts)]
            del kgw
        else:
            tests = [(r["z"], r["p_value"]) for r in (detect(ids, model.vocab_size, scheme, (key_id,))["results"][0] for ids in texts)]
        zs = [z for z, _ in tests]
        out.append((float(np.mean(zs)), float(np.std(zs)), sum(p < 1e-2 for _, p in tests), sum(p < 1e-3 for _, p in tests)))
    return out


def _human_scores(job: list[list[int]]) -> list[tuple[float, ...]]:
    model = DemoModel.load()
    rows = []
    for ids in job:
        row: list[float] = []
        for name in SCHEMES:
            result = detect(ids, model.vocab_size, name)
            row += [result["tokens_scored"], result["results"][0]["z"], result["results"][0]["p_value"]]
        rows.append(tuple(row))
    return rows


def run_pool(pool: ProcessPoolExecutor, fn: Any, jobs: Sequence[Any]) -> list[Any]:
    return [row for part in pool.map(fn, jobs) for row in part]


def chunked(n: int, parts: int) -> list[range]:
    step = max(1, math.ceil(n / parts))
    return [range(i, min(n, i + step)) for i in range(0, n, step)]


# -- statistics -------------------------------------------------------------------------------------------------

def fmt_p(p: float) -> str:
    if p == 0.0:
        return "<1e-300"
    return f"{p:.1e}" if p < 0.01 else f"{p:.2f}"


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q))


def upper_95(failures: int, n: int) -> float:
    """One-sided 95% Clopper–Pearson upper bound on a rate (≈ 3/n, the rule of three, when failures = 0)."""
    if failures >= n:
        return 1.0
    lo, hi = failures / n, 1.0
    for _ in range(100):  # P(X ≤ failures | p) is decreasing in p: find where it crosses 0.05
        mid = (lo + hi) / 2
        cdf = 1.0 - binomial_tail(failures + 1, n, mid)
        lo, hi = (mid, hi) if cdf > 0.05 else (lo, mid)
    return hi


_SIZE_CACHE: dict[tuple[int, float], float] = {}


def exact_size(total: int, alpha: float) -> float:
    """P(p-value < alpha) under an exact Binomial(total, γ) null: the test's true size at that length."""
    cached = _SIZE_CACHE.get((total, alpha))
    if cached is None:
        start = int(GAMMA * total)
        k = next((k for k in range(start, total + 1) if binomial_tail(k, total, GAMMA) < alpha), total + 1)
        cached = _SIZE_CACHE[(total, alpha)] = binomial_tail(k, total, GAMMA)
    return cached


def perplexity(model: DemoModel, ids: Sequence[int]) -> tuple[float, int]:
    """Sum of log-probs of ``ids`` under the plain (unmarked, unboosted) demo model, and the token count."""
    bos = model.tokenizer.bos_id
    context = [bos, bos]
    total = 0.0
    for token in ids:
        total += math.log(max(float(model.next_token_probs(context)[token]), 1e-30))
        context.append(token)
    return total, len(ids)


def attack(ids: list[int], rate: float, kind: str, vocab_size: int, rng: random.Random) -> list[int]:
    """Delete, or replace with uniform random vocabulary entries (ids ≥ 3: no <unk>/<s>/</s>), ``rate`` of the tokens."""
    n = round(rate * len(ids))
    hit = set(rng.sample(range(len(ids)), n))
    if kind == "delete":
        return [t for i, t in enumerate(ids) if i not in hit]
    return [rng.randrange(3, vocab_size) if i in hit else t for i, t in enumerate(ids)]


# -- the benchmark ----------------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small samples, for a smoke run")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path, default=None, help="default bench/out/watermark.md (watermark-quick.md with --quick)")
    args = parser.parse_args()
    args.out = args.out or OUT / ("watermark-quick.md" if args.quick else "watermark.md")
    n_prompts, n_null, null_len = (16, 1500, 100) if args.quick else (50, 10_000, 100)
    n_spread_keys, n_spread_texts = (8, 500) if args.quick else (40, 2000)
    started = time.time()
    load_at_start = os.getloadavg()[0]
    model = DemoModel.load()
    vocab = model.vocab_size
    prompts = all_prompts()
    lines: list[str] = []
    emit = lines.append

    with ProcessPoolExecutor(args.workers) as pool:
        # 1. strength vs length: marked and unmarked twins ------------------------------------------
        t0 = time.time()
        jobs = [([prompts[i] for i in r], [1000 + i for i in r], max(LENGTHS)) for r in chunked(n_prompts, 4 * args.workers)]
        twins: list[dict[str, list[int]]] = run_pool(pool, _twins, jobs)
        log(f"twins: {n_prompts} prompts x 3 x {max(LENGTHS)} tokens in {time.time() - t0:.0f}s")
        strength: dict[tuple[str, str, int], list[dict[str, float]]] = {}
        for row in twins:
            for scheme in SCHEMES:
                for source in (scheme, "unmarked"):
                    for length in LENGTHS:
                        result = detect(row[source][:length], vocab, scheme)
                        r = result["results"][0]
                        strength.setdefault((scheme, source, length), []).append(
                            {"z": r["z"], "p": r["p_value"], "scored": result["tokens_scored"]})

        # 2. false positives on fresh unmarked text ---------------------------------------------------
        t0 = time.time()
        jobs = [([prompts[(i * 7) % len(prompts)] for i in r], [100_000 + i for i in r], null_len)
                for r in chunked(n_null, 20 * args.workers)]
        null_out: list[tuple[tuple[float, ...], list[int]]] = run_pool(pool, _null_scores, jobs)
        null_rows = [row for row, _ in null_out]
        null_time = time.time() - t0
        log(f"null: {len(null_rows)} unmarked texts of {null_len} tokens generated and scored in {null_time:.0f}s")
        human_ids = [model.tokenizer.encode(t)[:400] for t in training_texts()]
        human_ids = [ids for ids in human_ids if len(ids) >= 16]
        if args.quick:
            human_ids = human_ids[:500]
        human_rows: list[tuple[float, ...]] = run_pool(pool, _human_scores, [human_ids[r.start:r.stop] for r in chunked(len(human_ids), 8)])
        log(f"human corpus: {len(human_rows)} texts scored")
        t0 = time.time()
        spread_texts = [ids for _, ids in null_out[:n_spread_texts]]
        n_spread_texts_used = len(spread_texts)
        spread: dict[str, list[tuple[float, float, int, int]]] = {}
        for scheme in SCHEMES:
            key_ids = [f"org:spread-{r}" for r in range(n_spread_keys)]
            spread[scheme] = run_pool(pool, _key_spread, [(scheme, [key_ids[i] for i in r], spread_texts)
                                                           for r in chunked(len(key_ids), 2 * args.workers)])
        log(f"key spread: {n_spread_keys} keys x {len(spread_texts)} texts per scheme in {time.time() - t0:.0f}s")

    # 3. quality ----------------------------------------------------------------------------------------
    t0 = time.time()
    ppl: dict[str, list[tuple[float, int]]] = {source: [perplexity(model, row[source][:200]) for row in twins]
                                               for source in ("unmarked", *SCHEMES)}
    log(f"perplexity in {time.time() - t0:.0f}s")

    # 4. robustness ---------------------------------------------------------------------------------------
    robust: dict[tuple[str, str, float], list[dict[str, float]]] = {}
    for scheme in SCHEMES:
        for kind in ("delete", "substitute"):
            for rate in (0.0, *ATTACK_RATES):
                if rate == 0.0 and kind == "substitute":
                    continue
                for i, row in enumerate(twins):
                    rng = random.Random(f"{scheme}-{kind}-{rate}-{i}")
                    ids = attack(row[scheme][:200], rate, kind, vocab, rng)
                    result = detect(ids, vocab, scheme)
                    robust.setdefault((scheme, kind if rate else "none", rate), []).append(
                        {"p": result["results"][0]["p_value"], "z": result["results"][0]["z"], "scored": result["tokens_scored"]})
    elapsed = time.time() - started
    cpu = sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
              for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))

    # -- report -----------------------------------------------------------------------------------------------
    emit("# Watermark benchmark: strength, false positives, quality cost, robustness")
    emit("")
    emit(f"`.venv/bin/python bench/watermark.py{' --quick' if args.quick else ''}` — demo model (word-level trigram LM, "
         f"vocabulary {vocab:,}), default strength δ = {DELTA}, γ = {GAMMA} (`WatermarkSettings`), detection threshold "
         f"{DEFAULT_THRESHOLD:g}. Marking with `vllm_processor` (numpy path), scoring with `detect_ids`: KGW is the exact "
         f"one-sided binomial tail on distinct (previous, token) pairs; Unigram scores the tokens among the first "
         f"{unigram_universe(vocab, GAMMA):,} ids (`unigram_universe`), p = 2 × min(distinct-token binomial tail, "
         f"count-weighted Hoeffding/Bernstein bound). Temperature 1, top-p 1. Runtime {elapsed:.0f} s wall, {cpu:.0f} s CPU "
         f"(all processes) on {os.cpu_count()} CPU cores, {args.workers} worker processes; load average "
         f"{load_at_start:.1f} at the start (other work on the machine slows the wall time).")
    emit("")
    emit(f"## 1. Strength vs length ({n_prompts} prompts, marked vs UNMARKED twins: same prompt, same seed)")
    emit("")
    emit("Median [10th percentile, 90th percentile] over the prompts; 'detected' = share with p < 1e-6.")
    verdicts = []
    for scheme in SCHEMES:
        emit("")
        emit(f"**{scheme.upper() if scheme == 'kgw' else 'Unigram'}**")
        emit("")
        emit("| tokens | distinct scored | marked z | marked p | marked detected | unmarked z | unmarked p | unmarked detected |")
        emit("|---:|---:|---|---|---:|---|---|---:|")
        for length in LENGTHS:
            m = strength[(scheme, scheme, length)]
            u = strength[(scheme, "unmarked", length)]
            mz, mp, uz, up = ([r[k] for r in rows] for rows, k in ((m, "z"), (m, "p"), (u, "z"), (u, "p")))
            emit(f"| {length} | {np.median([r['scored'] for r in m]):.0f} "
                 f"| {np.median(mz):.2f} [{pct(mz, 10):.2f}, {pct(mz, 90):.2f}] "
                 f"| {fmt_p(float(np.median(mp)))} [{fmt_p(pct(mp, 10))}, {fmt_p(pct(mp, 90))}] "
                 f"| {sum(p < DEFAULT_THRESHOLD for p in mp)}/{len(mp)} "
                 f"| {np.median(uz):.2f} [{pct(uz, 10):.2f}, {pct(uz, 90):.2f}] "
                 f"| {fmt_p(float(np.median(up)))} [{fmt_p(pct(up, 10))}, {fmt_p(pct(up, 90))}] "
                 f"| {sum(p < DEFAULT_THRESHOLD for p in up)}/{len(up)} |")
        p200 = [r["p"] for r in strength[(scheme, scheme, 200)]]
        first_median = next((n for n in LENGTHS if np.median([r["p"] for r in strength[(scheme, scheme, n)]]) < DEFAULT_THRESHOLD), None)
        first_p90 = next((n for n in LENGTHS if pct([r["p"] for r in strength[(scheme, scheme, n)]], 90) < DEFAULT_THRESHOLD), None)
        met = float(np.median(p200)) < DEFAULT_THRESHOLD
        detected_share = sum(p < DEFAULT_THRESHOLD for p in p200) / len(p200)
        verdict = "NOT MET" if not met else ("MET" if detected_share >= 0.9 else "MET for the median text only")
        verdicts.append(
            f"- **{scheme}: target {verdict}** — median p at 200 tokens = {fmt_p(float(np.median(p200)))} "
            f"({sum(p < DEFAULT_THRESHOLD for p in p200)}/{len(p200)} texts below 1e-6); the median first falls below 1e-6 at "
            f"{first_median or '>400'} tokens, the 90th percentile (9 texts in 10 detected) at {first_p90 or '>400'} tokens.")
    emit("")
    emit("Target (issue): p < 1e-6 within 200 tokens at default strength.")
    emit("")
    lines.extend(verdicts)

    emit("")
    emit(f"## 2. False positives on unmarked text (threshold {DEFAULT_THRESHOLD:g}, and looser ones for calibration)")
    emit("")
    emit(f"{len(null_rows):,} fresh unmarked demo-model generations of {null_len} tokens (seeds 100000+i, prompts cycled through "
         f"all {len(prompts):,} pool prompts; generated and scored in {null_time:.0f} s), plus {len(human_rows):,} human texts "
         "(the bundled corpora's assistant-side answers, first 400 tokens, ≥ 16 tokens). 'expected' (KGW) is the rate an "
         "exact Binomial(T, γ) null gives for the observed numbers of scored tokens T; the test is discrete, so it is at or "
         "below the threshold. Unigram's p is a Bonferroni-doubled minimum of a binomial tail and a tail bound, so its rate "
         "is at most the threshold and usually well below. z is the z of the statistic `detect_ids` reports. The 95% bound is one-sided Clopper–Pearson (the rule of three, 3/n, when the count is 0).")
    emit("")
    emit("| scheme | text, key | n | median T | z mean ± sd | threshold | false positives | FPR | 95% upper bound | expected |")
    emit("|---|---|---:|---:|---|---:|---:|---:|---:|---:|")
    fpr_notes = []
    for s_index, scheme in enumerate(SCHEMES):
        sets: list[tuple[str, list[tuple[int, float, float]]]] = [
            ("generated, one fixed key", [(int(r[5 * s_index]), r[5 * s_index + 1], r[5 * s_index + 2]) for r in null_rows]),
            ("generated, fresh key per text", [(int(r[5 * s_index]), r[5 * s_index + 3], r[5 * s_index + 4]) for r in null_rows]),
            ("human corpus, one fixed key", [(int(r[3 * s_index]), r[3 * s_index + 1], r[3 * s_index + 2]) for r in human_rows]),
        ]
        for label, rows in sets:
            zs = [z for _, z, _ in rows]
            for alpha in THRESHOLDS:
                fp = sum(p < alpha for _, _, p in rows)
                expected = (f"{float(np.mean([exact_size(t, alpha) for t, _, _ in rows])):.1e}" if scheme == "kgw"
                            else f"≤ {alpha:g}")
                emit(f"| {scheme} | {label} | {len(rows):,} | {np.median([t for t, _, _ in rows]):.0f} "
                     f"| {np.mean(zs):+.2f} ± {np.std(zs):.2f} | {alpha:g} | {fp} | {fp / len(rows):.2e} "
                     f"| {upper_95(fp, len(rows)):.1e} | {expected} |")
            if label.startswith("generated, one"):
                fp6 = sum(p < DEFAULT_THRESHOLD for _, _, p in rows)
                fpr_notes.append(f"- **{scheme}**: {fp6} false positives in {len(rows):,} unmarked texts at 1e-6 "
                                 f"(FPR ≤ {upper_95(fp6, len(rows)):.1e} at 95% confidence with the fixed key).")
    emit("")
    lines.extend(fpr_notes)
    emit("")
    emit(f"With one fixed key the texts are not independent draws of the null: they share frequent tokens (Unigram) or "
         "pairs (KGW) whose colour is fixed by the key, so the z-scores can be shifted or spread (sd > 1) for a given key; "
         f"the fresh-key rows are the calibration the p-value promises. A {len(null_rows):,}-text sample can only bound the rate "
         f"at 1e-6 (≈ {3 / len(null_rows):.0e}); calibration is visible at 1e-3 and 1e-2.")

    emit("")
    emit(f"**Key to key.** The same first {n_spread_texts:,} unmarked texts scored with {n_spread_keys} other keys "
         "(`org:spread-<r>`): how far one key's mean z over many texts sits from 0, and each key's false-positive rate at the "
         "looser thresholds. A key-level shift means a provider's FPR at its one production key differs from the nominal "
         "rate, which holds on average over keys.")
    emit("")
    emit("| scheme | keys | mean z per key: min / median / max | sd of the per-key mean z | sd of z within a key (median) "
         "| FPR at 1e-2 per key: min / median / max | FPR at 1e-3 per key: min / median / max |")
    emit("|---|---:|---|---:|---:|---|---|")
    for scheme in SCHEMES:
        means = [m for m, _, _, _ in spread[scheme]]
        within = [sd for _, sd, _, _ in spread[scheme]]
        fp2 = [a / n_spread_texts_used for _, _, a, _ in spread[scheme]]
        fp3 = [b / n_spread_texts_used for _, _, _, b in spread[scheme]]
        emit(f"| {scheme} | {len(means)} | {min(means):+.2f} / {np.median(means):+.2f} / {max(means):+.2f} | {np.std(means):.2f} "
             f"| {np.median(within):.2f} | {min(fp2):.1e} / {np.median(fp2):.1e} / {max(fp2):.1e} "
             f"| {min(fp3):.1e} / {np.median(fp3):.1e} / {max(fp3):.1e} |")

    emit("")
    emit("## 3. Quality cost: perplexity under the unmarked demo model")
    emit("")
    emit(f"The {n_prompts} twins' first 200 tokens; log-probs from the plain trigram distribution (`next_token_probs`, without "
         "the prompt boost the sampler adds, identical for all three).")
    emit("")
    emit("| text | token-weighted perplexity | median per-text perplexity | vs unmarked |")
    emit("|---|---:|---:|---:|")
    base_ppl = math.exp(-sum(s for s, _ in ppl["unmarked"]) / sum(n for _, n in ppl["unmarked"]))
    for source in ("unmarked", *SCHEMES):
        total = math.exp(-sum(s for s, _ in ppl[source]) / sum(n for _, n in ppl[source]))
        per_text = float(np.median([math.exp(-s / n) for s, n in ppl[source]]))
        emit(f"| {source} | {total:.1f} | {per_text:.1f} | {total / base_ppl - 1:+.0%} |")
    emit("")
    emit("Task accuracy: not measured — the demo model is a word-level trigram LM with no task ability (its GSM8K/MMLU "
         "answers are fluent-ish word salad, marked or not), so there is no accuracy to lose. Perplexity is the only "
         "quality signal this model offers.")

    emit("")
    emit("## 4. Robustness: edits to marked 200-token texts")
    emit("")
    emit("The edited positions are a uniform random subset of round(share × 200) positions; substitutes are uniform over "
         "the vocabulary (any id ≥ 3, i.e. not <unk>/<s>/</s>). One edit draw per text.")
    emit("")
    emit("| scheme | edit | share edited | median distinct scored | median z | median p | detected at 1e-6 | detected at 1e-3 |")
    emit("|---|---|---:|---:|---:|---:|---:|---:|")
    for (scheme, kind, rate), edited in robust.items():
        ps = [r["p"] for r in edited]
        emit(f"| {scheme} | {kind} | {rate:.0%} | {np.median([r['scored'] for r in edited]):.0f} "
             f"| {np.median([r['z'] for r in edited]):.2f} "
             f"| {fmt_p(float(np.median(ps)))} | {sum(p < 1e-6 for p in ps)}/{len(ps)} | {sum(p < 1e-3 for p in ps)}/{len(ps)} |")
    report = "\n".join(lines) + "\n"
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    log(f"wrote {args.out} ({elapsed:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
