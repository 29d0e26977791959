"""Radioactivity: is a student trained on a little KGW-watermarked teacher output detectably marked? (CPU-sized replication)

    .venv/bin/python bench/radioactivity.py [--seeds 3] [--train-tokens 900000] [--query-tokens 100000] [--quick]

After Sander et al. 2024, "Watermarking Makes Language Models Radioactive".
Per seed: the teacher (the demo model with the KGW processor at default δ, γ
and a per-seed key K) answers prompts from the bundled pools' development half;
a student is trained on ``--train-tokens`` tokens of which 0% (control), 1%, 5%
and 20% are those watermarked answers and the rest unmarked text (the bundled
human corpus answers plus unmarked demo-model answers to other prompts). Each
student is tested with K and with a wrong key K'.

The student is a word-level trigram LM with absolute discounting (the demo
model's own class, ``DemoModel.train``, with its own vocabulary built from its
training text). A tiny transformer was the first choice; when torch is
importable the script times one on this vocabulary and reports why it does not
fit the budget (see the report).

Tests (every p-value is one-sided; "pairs" are KGW's (previous token, token)):

* Black-box — the student answers held-out prompts (``--query-tokens`` tokens);
  its text is re-tokenised with the teacher's tokenizer.
  A. all distinct pairs, binomial test (Sander et al.'s de-duplication);
  B. the same, only pairs whose previous token occurs as a context in the
     provider's watermarked outputs (their filter on scored k-grams; the
     watermark window here is one token);
  C. only distinct pairs the student emits MORE often than the teacher's
     unmarked model predicts in the same contexts (a key-independent filter, so
     the binomial test stays exact) — ours;
  D. all pairs, no de-duplication: Σ over green pairs of (student count − the
     unmarked teacher's expected count), standardised with its exact variance
     over the random choice of green lists (sampling without replacement) — ours.
* Open model ("white-box") — the student's next-token distribution in contexts
  taken from the provider's watermarked outputs (up to 16 per previous token):
  E. reading mode: the student's top-1 prediction per context, distinct pairs,
     binomial test (Sander et al.);
  F1. green probability mass vs its expectation γ;
  F2. green probability mass vs the unmarked teacher's green mass in the same
     contexts (paired) — same exact-variance z as D.
* INVALID on purpose: pairs of the student's text that also occur in the
  watermarked outputs. Filtering on the whole pair selects pairs the watermark
  made green, so even the control "detects" — shown once, to say why B filters on
  the context only.

Validity check: on the control student of the first seed, the tests are re-run
with ``--calibration-keys`` random keys; z should be ≈ N(0, 1) and p ≈ uniform.

The markdown report goes to stdout and to ``bench/out/radioactivity.md``
(``--quick``: smaller data, one seed, ``bench/out/radioactivity-quick.md``).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distillguard.config import WatermarkSettings
from distillguard.demo.model import DemoModel, training_texts
from distillguard.sim.corpora import SWEEP_POOLS, PromptPools
from distillguard.watermark import KGW, derive_key
from distillguard.watermark.detect import binomial_tail

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
SECRET = "bench-radioactivity-secret"
SHARES = (0.0, 0.01, 0.05, 0.2)
SETTINGS = WatermarkSettings()
GAMMA, DELTA = SETTINGS.gamma, SETTINGS.delta
ANSWER_MIN, ANSWER_MAX = 100, 200
CONTEXTS_PER_TOKEN = 16
BINOMIAL_TESTS = ("A", "B", "C", "E", "H")
Z_TESTS = ("D", "F1", "F2")
VALID_TESTS = ("A", "B", "C", "D", "E", "F1", "F2")
TEST_NAMES = {
    "A": "A black-box, dedup",
    "B": "B black-box, dedup + context filter",
    "C": "C black-box, over-represented pairs",
    "D": "D black-box, counts vs unmarked teacher",
    "E": "E open, reading mode top-1",
    "F1": "F1 open, green mass vs γ",
    "F2": "F2 open, green mass vs unmarked teacher",
    "H": "H INVALID pair filter",
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- statistics ---------------------------------------------------------------------------------------------------

def log10_binomial_tail(k: int, n: int, p: float) -> float:
    """log10 P(Binomial(n, p) ≥ k), without underflow for very small tails."""
    tail = binomial_tail(k, n, p)
    if tail > 1e-290:
        return math.log10(tail)
    ratio, term, total = p / (1 - p), 1.0, 1.0
    for j in range(k, n):
        term *= (n - j) / (j + 1) * ratio
        total += term
        if term < 1e-17 * total:
            break
    log_pmf = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(p) + (n - k) * math.log1p(-p)
    return (log_pmf + math.log(total)) / math.log(10)


def log10_normal_tail(z: float) -> float:
    """log10 P(N(0, 1) ≥ z)."""
    if z < 30:
        return math.log10(max(0.5 * math.erfc(z / math.sqrt(2)), 1e-300))
    return (-z * z / 2 - math.log(z * math.sqrt(2 * math.pi)) + math.log1p(-1 / (z * z))) / math.log(10)


def fmt_log10p(lp: float) -> str:
    if lp > -2:
        return f"{10 ** lp:.2f}"
    exponent = math.floor(lp)
    mantissa = round(10 ** (lp - exponent))
    if mantissa >= 10:  # 9.7e-5 rounds to 1e-4, not "10e-5"
        mantissa, exponent = 1, exponent + 1
    return f"{mantissa}e{exponent}"


# -- workers ----------------------------------------------------------------------------------------------------

def _answers(job: tuple[list[str], list[int], bytes | None]) -> list[list[int]]:
    """The teacher's answers (token ids), KGW-marked with the given key, or unmarked when it is None."""
    prompts, seeds, key = job
    model = DemoModel.load()
    processors = [KGW(key, model.vocab_size, gamma=GAMMA, delta=DELTA)] if key is not None else None
    return [model.generate(model.tokenizer.encode(p), max_tokens=ANSWER_MAX, min_tokens=ANSWER_MIN, seed=s,
                           logits_processors=processors).ids for p, s in zip(prompts, seeds, strict=True)]


@dataclass
class StudentJob:
    seed: int
    share: float
    texts: list[str]
    query_prompts: list[str]
    query_tokens: int
    keys: list[tuple[str, bytes]]
    marked_ids: list[list[int]]


def _fp_var(x: np.ndarray, n_green: int) -> tuple[float, float]:
    """Mean and variance of the sum of ``x`` over a uniformly random ``n_green``-subset (sampling without replacement)."""
    size = len(x)
    mean = float(x.mean())
    fpc = n_green * (size - n_green) / (size * (size - 1))
    return n_green * mean, fpc * float(((x - mean) ** 2).sum())


def _student(job: StudentJob) -> dict[str, Any]:
    """Train one student and run every test with every key; returns the raw statistics."""
    started = time.time()
    teacher = DemoModel.load()
    vocab, ttok = teacher.vocab_size, teacher.tokenizer
    bos = ttok.bos_id
    n_green = int(round(GAMMA * vocab))
    student = DemoModel.train(job.texts)
    stok = student.tokenizer
    s2t = np.array([ttok.token_to_id.get(w, ttok.unk_id) for w in stok.id_to_token], dtype=np.int64)
    t2s = [stok.token_to_id.get(w, stok.unk_id) for w in ttok.id_to_token]
    train_s = time.time() - started

    # Black-box: the student's answers, re-tokenised by the provider; counts per (previous, token) and the
    # unmarked teacher's expected counts in the same (two-token) contexts.
    counts: dict[int, dict[int, int]] = {}
    d_counts: dict[int, np.ndarray] = {}  # becomes count − expected count, per previous token (−1: text start)
    query_tokens, i = 0, 0
    while query_tokens < job.query_tokens:
        prompt = job.query_prompts[i % len(job.query_prompts)]
        generation = student.generate(stok.encode(prompt), max_tokens=ANSWER_MAX, min_tokens=ANSWER_MIN, seed=700_000 + i)
        ids = ttok.encode(stok.decode(generation.ids))
        context = [bos, bos, *ids]
        for j, w in enumerate(ids):
            v = ids[j - 1] if j else -1
            q = teacher.next_token_probs(context[j:j + 2])
            acc = d_counts.get(v)
            if acc is None:
                d_counts[v] = -q
            else:
                acc -= q
            row = counts.setdefault(v, {})
            row[w] = row.get(w, 0) + 1
        query_tokens += len(ids)
        i += 1
    for v, row in counts.items():
        d_counts[v][list(row)] += np.fromiter(row.values(), dtype=np.float32, count=len(row))
    query_s = time.time() - started - train_s

    # What the provider knows: its watermarked outputs (teacher ids), as contexts and as pairs.
    marked_contexts: set[int] = set()
    marked_pairs: set[tuple[int, int]] = set()
    by_previous: dict[int, list[int]] = {}
    for ids in job.marked_ids:
        previous = -1
        context = [bos, bos, *ids]
        for j, w in enumerate(ids):
            marked_contexts.add(previous)
            marked_pairs.add((previous, w))
            if j:
                by_previous.setdefault(ids[j - 1], []).append(context[j])
            previous = w

    # Open model: the student's distribution (mapped to the teacher's vocabulary) in those contexts.
    rng = np.random.default_rng(job.seed)
    p_mean: dict[int, np.ndarray] = {}
    d_mass: dict[int, np.ndarray] = {}
    reading: dict[int, set[int]] = {}
    for v, us in by_previous.items():
        chosen = us if len(us) <= CONTEXTS_PER_TOKEN else [us[k] for k in rng.choice(len(us), CONTEXTS_PER_TOKEN, replace=False)]
        p_sum = np.zeros(vocab)
        q_sum = np.zeros(vocab)
        tops = reading.setdefault(v, set())
        for u in chosen:
            ps = student.next_token_probs([t2s[u], t2s[v]])
            p_sum += np.bincount(s2t, weights=ps, minlength=vocab)
            q_sum += teacher.next_token_probs([u, v])
            tops.add(int(s2t[int(np.argmax(ps))]))
        p_mean[v] = (p_sum / len(chosen)).astype(np.float32)
        d_mass[v] = ((p_sum - q_sum) / len(chosen)).astype(np.float32)
    open_s = time.time() - started - train_s - query_s

    # Key-independent parts: the pair sets of each test and the null mean/variance of the z statistics.
    emitted = {v: np.fromiter(row, dtype=np.int64, count=len(row)) for v, row in counts.items()}
    over = {v: ws[d_counts[v][ws] > 0] for v, ws in emitted.items()}
    in_marked = {v: np.array([(v, int(w)) in marked_pairs for w in ws], dtype=bool) for v, ws in emitted.items()}
    reading_ids = {v: np.fromiter(ws, dtype=np.int64, count=len(ws)) for v, ws in reading.items()}
    null: dict[str, list[float]] = {name: [0.0, 0.0, 0.0] for name in Z_TESTS}  # mean, variance, largest variance term
    heaviest: dict[str, str] = {}
    for name, arrays in (("D", d_counts), ("F1", p_mean), ("F2", d_mass)):
        for v, x in arrays.items():
            mean, var = _fp_var(x.astype(np.float64), n_green)
            null[name][0] += mean
            null[name][1] += var
            if var > null[name][2]:
                null[name][2] = var
                heaviest[name] = "<start>" if v < 0 else ttok.token_text(v)
    sizes = {
        "A": sum(len(ws) for ws in emitted.values()),
        "B": sum(len(ws) for v, ws in emitted.items() if v in marked_contexts),
        "C": sum(len(ws) for ws in over.values()),
        "E": sum(len(ws) for ws in reading_ids.values()),
        "H": int(sum(m.sum() for m in in_marked.values())),
        "D": query_tokens,
        "F1": sum(len(us) if len(us) <= CONTEXTS_PER_TOKEN else CONTEXTS_PER_TOKEN for us in by_previous.values()),
    }
    sizes["F2"] = sizes["F1"]
    previous_tokens = sorted(set(counts) | set(p_mean))

    results: dict[str, dict[str, float]] = {}
    zeros = np.zeros(vocab, dtype=np.float32)
    for key_name, key in job.keys:
        marker = KGW(key, vocab, gamma=GAMMA, delta=DELTA)
        green_counts = dict.fromkeys(BINOMIAL_TESTS, 0)
        sums = dict.fromkeys(Z_TESTS, 0.0)
        for v in previous_tokens:
            green = np.flatnonzero(marker([v], zeros) > 0)  # the processor's own green list for this context
            mask = np.zeros(vocab, dtype=bool)
            mask[green] = True
            if v in emitted:
                hits = mask[emitted[v]]
                green_counts["A"] += int(hits.sum())
                if v in marked_contexts:
                    green_counts["B"] += int(hits.sum())
                green_counts["C"] += int(mask[over[v]].sum())
                green_counts["H"] += int(hits[in_marked[v]].sum())
                sums["D"] += float(d_counts[v][green].sum())
            if v in p_mean:
                green_counts["E"] += int(mask[reading_ids[v]].sum())
                sums["F1"] += float(p_mean[v][green].sum())
                sums["F2"] += float(d_mass[v][green].sum())
        del marker  # its green-list cache is large
        out: dict[str, float] = {}
        for name in BINOMIAL_TESTS:
            out[name] = log10_binomial_tail(green_counts[name], sizes[name], GAMMA) if sizes[name] else 0.0
            out[f"{name}_green"] = green_counts[name] / sizes[name] if sizes[name] else float("nan")
        for name in Z_TESTS:
            z = (sums[name] - null[name][0]) / math.sqrt(null[name][1]) if null[name][1] > 0 else 0.0
            out[name] = log10_normal_tail(z)
            out[f"{name}_z"] = z
        results[key_name] = out
    return {
        "seed": job.seed, "share": job.share, "results": results, "sizes": sizes,
        "contexts": {"query_previous_tokens": len(counts), "open_previous_tokens": len(p_mean),
                     "marked_contexts_in_queries": sum(1 for v in counts if v in marked_contexts)},
        "largest_variance_share": {name: null[name][2] / null[name][1] if null[name][1] else float("nan") for name in Z_TESTS},
        "heaviest_context": heaviest,
        "student_vocab": stok.vocab_size,
        "timing": {"train": train_s, "query": query_s, "open": open_s, "total": time.time() - started},
    }


# -- the transformer probe -----------------------------------------------------------------------------------

def transformer_probe(vocab: int, seconds: float = 12.0) -> dict[str, float] | None:
    """Training throughput of a tiny causal transformer (2 layers, d=128, context 64) on this vocabulary, or None."""
    try:
        import torch
        from torch import nn
    except ImportError:
        return None
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    d, layers, ctx, batch = 128, 2, 64, 32

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(vocab, d)
            self.pos = nn.Embedding(ctx, d)
            block = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
            self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(d)
            self.register_buffer("causal", torch.triu(torch.full((ctx, ctx), float("-inf")), 1))

        def forward(self, x: Any) -> Any:
            h = self.emb(x) + self.pos(torch.arange(x.shape[1]))
            h = self.blocks(h, mask=self.causal, is_causal=True)
            return self.norm(h) @ self.emb.weight.T

    model = Tiny()
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = torch.randint(0, vocab, (batch, ctx + 1))
    steps, started = 0, 0.0
    while True:
        logits = model(data[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, vocab), data[:, 1:].reshape(-1))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if steps == 0:
            started = time.time()  # the first step warms up allocations; not timed
        steps += 1
        if time.time() - started > seconds and steps > 3:
            break
    rate = (steps - 1) * batch * ctx / (time.time() - started)
    return {"tokens_per_s": rate, "params": float(sum(p.numel() for p in model.parameters())), "vocab": float(vocab)}


# -- orchestration --------------------------------------------------------------------------------------------------

def generate_until(pool: ProcessPoolExecutor, prompts: list[str], seed_base: int, key: bytes | None, tokens: int,
                   workers: int) -> list[list[int]]:
    """Answers to ``prompts`` (in order, cycling) until they hold at least ``tokens`` tokens."""
    answers: list[list[int]] = []
    total, next_index = 0, 0
    while total < tokens:
        need = max(8, math.ceil((tokens - total) / (0.9 * (ANSWER_MIN + ANSWER_MAX) / 2)))
        indices = list(range(next_index, next_index + need))
        next_index += need
        step = math.ceil(len(indices) / (4 * workers))
        jobs = [([prompts[i % len(prompts)] for i in indices[k:k + step]], [seed_base + i for i in indices[k:k + step]], key)
                for k in range(0, len(indices), step)]
        for part in pool.map(_answers, jobs):
            for ids in part:
                if total < tokens:
                    answers.append(ids)
                    total += len(ids)
    return answers


def prefix_until(items: list[Any], sizes: list[int], tokens: float) -> tuple[list[Any], int]:
    chosen, total = [], 0
    for item, size in zip(items, sizes, strict=True):
        if total >= tokens:
            break
        chosen.append(item)
        total += size
    return chosen, total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--train-tokens", type=int, default=900_000)
    parser.add_argument("--query-tokens", type=int, default=100_000)
    parser.add_argument("--calibration-keys", type=int, default=40)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--quick", action="store_true", help="one seed, 300k training tokens, 30k query tokens")
    parser.add_argument("--out", type=Path, default=None, help="default bench/out/radioactivity.md")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.train_tokens, args.query_tokens, args.calibration_keys = 1, 300_000, 30_000, 10
    args.out = args.out or OUT / ("radioactivity-quick.md" if args.quick else "radioactivity.md")
    started = time.time()
    load_at_start = os.getloadavg()[0]
    teacher = DemoModel.load()
    ttok = teacher.tokenizer
    probe = transformer_probe(teacher.vocab_size)
    log(f"transformer probe: {probe}")
    human = training_texts()
    human_sizes = [len(ttok.encode(t)) for t in human]
    human_tokens = sum(human_sizes)
    pools = PromptPools.load()
    dev_prompts = [p for name in SWEEP_POOLS for p in pools.sweeps[name]] + [c[0] for c in pools.conversations]
    held_prompts = [p for name in SWEEP_POOLS for p in pools.sweeps_held_out[name]] + [c[0] for c in pools.conversations_held_out]
    unmarked_needed = max(0, args.train_tokens - human_tokens)
    records: list[dict[str, Any]] = []
    data_notes: dict[int, dict[Any, Any]] = {}

    with ProcessPoolExecutor(args.workers) as pool:
        for seed in range(args.seeds):
            t0 = time.time()
            key_id, wrong_id = f"org:teacher-{seed}", f"org:other-{seed}"
            key = derive_key(SECRET, key_id)
            prompts = list(dev_prompts)
            random.Random(seed).shuffle(prompts)
            half = len(prompts) // 2  # marked answers from one half of the prompts, unmarked from the other
            marked = generate_until(pool, prompts[:half], 1_000_000 * (seed + 1), key, math.ceil(max(SHARES) * args.train_tokens),
                                    args.workers)
            unmarked = generate_until(pool, prompts[half:], 1_000_000 * (seed + 1) + 500_000, None, unmarked_needed, args.workers)
            gen_s = time.time() - t0
            log(f"seed {seed}: {len(marked)} marked answers ({sum(map(len, marked)):,} tokens), {len(unmarked)} unmarked "
                f"({sum(map(len, unmarked)):,} tokens) in {gen_s:.0f}s")
            marked_texts = [ttok.decode(ids) for ids in marked]
            unmarked_texts = [ttok.decode(ids) for ids in unmarked]
            query = list(held_prompts)
            random.Random(10_000 + seed).shuffle(query)
            jobs = []
            for share in SHARES:
                mk, mk_tokens = prefix_until(marked_texts, [len(ids) for ids in marked], share * args.train_tokens)
                hu, hu_tokens = prefix_until(human, human_sizes, args.train_tokens - mk_tokens)
                um, um_tokens = prefix_until(unmarked_texts, [len(ids) for ids in unmarked], args.train_tokens - mk_tokens - hu_tokens)
                keys = [("K", key), ("K'", derive_key(SECRET, wrong_id))]
                if seed == 0 and share == 0.0:
                    keys += [(f"cal{r}", derive_key(SECRET, f"org:calibration-{r}")) for r in range(args.calibration_keys)]
                jobs.append(StudentJob(seed, share, mk + hu + um, query, args.query_tokens, keys, marked))
                data_notes.setdefault(seed, {})[share] = {"marked": mk_tokens, "human": hu_tokens, "unmarked": um_tokens}
            for record in pool.map(_student, jobs):
                records.append(record)
                log(f"seed {seed} share {record['share']:.0%}: " + ", ".join(
                    f"{t} {fmt_log10p(record['results']['K'][t])}" for t in VALID_TESTS) + f" ({record['timing']['total']:.0f}s)")
            data_notes[seed]["generation_s"] = gen_s
            data_notes[seed]["marked_pool_tokens"] = sum(map(len, marked))
    elapsed = time.time() - started
    cpu = sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
              for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    print(render(records, data_notes, probe, args, elapsed, cpu, load_at_start, human_tokens))
    return 0


def render(records: list[dict[str, Any]], data_notes: dict[int, dict[Any, Any]], probe: dict[str, float] | None,
           args: argparse.Namespace, elapsed: float, cpu: float, load_at_start: float, human_tokens: int) -> str:
    lines: list[str] = []
    emit = lines.append
    seeds = sorted({r["seed"] for r in records})
    by = {(r["seed"], r["share"]): r for r in records}
    emit("# Radioactivity benchmark: does a student trained on watermarked teacher output carry the watermark?")
    emit("")
    emit(f"`.venv/bin/python bench/radioactivity.py{' --quick' if args.quick else ''}` — after Sander et al. 2024, on CPU. "
         f"Teacher: the demo model (word-level trigram LM) with the KGW processor, δ = {DELTA}, γ = {GAMMA} "
         f"(`WatermarkSettings`), one key K per seed. Each student is trained on {args.train_tokens:,} tokens: the share of "
         f"watermarked teacher answers shown, then the {human_tokens:,}-token human corpus (the bundled assistant answers), "
         f"then unmarked demo-model answers to other prompts. Black-box tests query {args.query_tokens:,} tokens of student "
         f"answers to held-out prompts. {len(seeds)} seed(s): each its own key, prompts, teacher data and student queries. "
         f"Runtime {elapsed / 60:.1f} min wall, {cpu / 60:.1f} min CPU (all processes), {args.workers} worker processes on "
         f"{os.cpu_count()} cores; load average {load_at_start:.1f} at the start (the machine was shared with other work).")
    emit("")
    emit("## Student model")
    emit("")
    emit("A word-level trigram LM with interpolated absolute discounting (`DemoModel.train` on the mixture, with its own "
         "vocabulary built from its training text; the provider re-tokenises the student's text with the teacher's tokenizer).")
    if probe is None:
        emit("torch is not importable here, so no transformer student was tried.")
    else:
        budget = 25 * 60 / (len(SHARES) * max(1, len(seeds)))
        emit(f"A tiny transformer was tried first: torch is importable, and a 2-layer, d = 128, context-64 causal transformer "
             f"({probe['params'] / 1e6:.1f} M parameters, tied embeddings over the teacher's {probe['vocab']:,.0f}-word "
             f"vocabulary) trains at **{probe['tokens_per_s']:,.0f} tokens/s** on this CPU (the softmax over the ~10k-word "
             f"vocabulary dominates). With {len(SHARES)} mixtures × {len(seeds)} seed(s) in the 30-minute budget, each "
             f"student could see about {probe['tokens_per_s'] * budget / 1e6:.2f} M tokens — under one pass over "
             f"{args.train_tokens / 1e6:.1f} M, so the 1% student would meet ~{0.01 * probe['tokens_per_s'] * budget:,.0f} "
             "marked tokens once. An undertrained student tests the training budget, not radioactivity, so the n-gram student "
             "(which learns the mixture's counts exactly, in seconds) is used.")
    emit("")
    emit("## p-values per mixture share")
    emit("")
    emit("One-sided p-values, one per seed (seed 0 / 1 / …). K = the teacher's key; K' = a different key that never marked "
         "anything. Targets: p < 1e-5 for the 5% student with K; no small p for the control (0%) with K or K', nor for the "
         "5% student with K'.")
    emit("")
    emit("| share | key | " + " | ".join(TEST_NAMES[t] for t in VALID_TESTS) + " |")
    emit("|---:|---|" + "---|" * len(VALID_TESTS))
    for share in SHARES:
        for key in ("K", "K'"):
            cells = [" / ".join(fmt_log10p(by[(s, share)]["results"][key][t]) for s in seeds) for t in VALID_TESTS]
            emit(f"| {share:.0%} | {key} | " + " | ".join(cells) + " |")
    emit("")
    emit("Binomial tails (A, B, C, E) are exact, computed in log space. D, F1 and F2 standardise with the exact variance "
         "over random green lists but take the tail from the normal curve: far out (z ≳ 8, p ≲ 1e-15) read those "
         "p-values as 'z is huge', not as literal probabilities; the z-scores are below.")
    emit("")
    emit("Green share among the scored pairs (γ = 0.25 under the null) and z of the z-tests, K, median over seeds:")
    emit("")
    emit("| share | A | B | C | E | D z | F1 z | F2 z |")
    emit("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for share in SHARES:
        rs = [by[(s, share)]["results"]["K"] for s in seeds]
        med = {name: float(np.median([r[name] for r in rs])) for name in
               ("A_green", "B_green", "C_green", "E_green", "D_z", "F1_z", "F2_z")}
        emit(f"| {share:.0%} | {med['A_green']:.4f} | {med['B_green']:.4f} | {med['C_green']:.4f} | {med['E_green']:.4f} "
             f"| {med['D_z']:.1f} | {med['F1_z']:.1f} | {med['F2_z']:.1f} |")

    emit("")
    emit("## Targets")
    emit("")
    for t in VALID_TESTS:
        hits = sum(by[(s, 0.05)]["results"]["K"][t] < -5 for s in seeds)
        emit(f"- 5% student, {TEST_NAMES[t]}: p < 1e-5 in **{hits}/{len(seeds)}** seeds "
             f"(p = {' / '.join(fmt_log10p(by[(s, 0.05)]['results']['K'][t]) for s in seeds)}).")
    for label, share, key in (("control (0%) with K", 0.0, "K"), ("control (0%) with K'", 0.0, "K'"), ("5% student with K'", 0.05, "K'")):
        ps = [by[(s, share)]["results"][key][t] for s in seeds for t in VALID_TESTS]
        emit(f"- {label}: smallest of {len(ps)} p-values = {fmt_log10p(min(ps))}; below 1e-3: {sum(p < -3 for p in ps)}, "
             f"below 1e-5: {sum(p < -5 for p in ps)}.")
    emit("- A false positive would be p < 1e-5; with this many tests some p-values near 0.05 are expected by chance "
         "(and tests on the same student are correlated).")

    emit("")
    emit("## What was scored (seed 0)")
    emit("")
    emit("| share | marked / human / unmarked training tokens | A distinct pairs | B kept | C over-represented | E reading pairs "
         "| D tokens | F contexts | heaviest previous token's share of Var (D / F1 / F2) |")
    emit("|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for share in SHARES:
        r = by[(seeds[0], share)]
        d = data_notes[seeds[0]][share]
        sz = r["sizes"]
        lv, hv = r["largest_variance_share"], r["heaviest_context"]
        heavy = " / ".join(f"{lv[t]:.3f} ({hv.get(t, '?')!r})" for t in Z_TESTS)
        emit(f"| {share:.0%} | {d['marked']:,} / {d['human']:,} / {d['unmarked']:,} | {sz['A']:,} | {sz['B']:,} | {sz['C']:,} "
             f"| {sz['E']:,} | {sz['D']:,} | {sz['F1']:,} | {heavy} |")
    emit("")
    emit(f"The provider's watermarked outputs (seed 0: {data_notes[seeds[0]]['marked_pool_tokens']:,} tokens, the 20% pool) "
         f"give the contexts for B, E, F and H. B's filter keeps previous tokens seen as contexts in them; with a one-token "
         "window nearly every frequent word qualifies, so B ≈ A here (Sander et al.'s filter pays off with longer windows).")

    emit("")
    emit("## Why the filter must be on the context only (H, invalid)")
    emit("")
    emit("Keeping only the student's pairs that also occur in the watermarked outputs selects pairs the watermark made "
         "green: the unmarked control then 'detects' with K but not with K'.")
    emit("")
    emit("| share | pairs kept | green share, K | p, K | p, K' |")
    emit("|---:|---:|---:|---:|---:|")
    for share in SHARES:
        r = by[(seeds[0], share)]
        own, wrong = r["results"]["K"], r["results"]["K'"]
        emit(f"| {share:.0%} | {r['sizes']['H']:,} | {own['H_green']:.3f} | {fmt_log10p(own['H'])} | {fmt_log10p(wrong['H'])} |")

    control = by[(seeds[0], 0.0)]["results"]
    cal = {k: v for k, v in control.items() if k.startswith("cal")}
    if cal:
        emit("")
        emit(f"## Calibration: the control student (seed {seeds[0]}) under {len(cal)} random keys")
        emit("")
        emit("| test | z mean | z sd | largest z | share p < 0.05 | share p < 0.01 | smallest p |")
        emit("|---|---:|---:|---:|---:|---:|---:|")
        for t in VALID_TESTS:
            lps = [r[t] for r in cal.values()]
            if t in Z_TESTS:
                zs = [r[f"{t}_z"] for r in cal.values()]
                zcells = f"{np.mean(zs):+.2f} | {np.std(zs, ddof=1):.2f} | {max(zs):.2f}"
            else:
                zcells = "— | — | —"
            emit(f"| {TEST_NAMES[t]} | {zcells} | {np.mean([p < math.log10(0.05) for p in lps]):.2f} "
                 f"| {np.mean([p < -2 for p in lps]):.2f} | {fmt_log10p(min(lps))} |")
        emit("")
        emit("For a valid test z ≈ N(0, 1) (sd ≈ 1), about 5% of p-values fall below 0.05 and 1% below 0.01 (the binomial "
             "tests are discrete and slightly conservative).")
    emit("")
    emit("## Timing")
    emit("")
    for s in seeds:
        ts = [by[(s, share)]["timing"]["total"] for share in SHARES]
        emit(f"- seed {s}: teacher data {data_notes[s]['generation_s']:.0f} s; students (train + queries + tests) "
             + ", ".join(f"{share:.0%} {t:.0f} s" for share, t in zip(SHARES, ts, strict=True)))
    report = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    return report


if __name__ == "__main__":
    raise SystemExit(main())
