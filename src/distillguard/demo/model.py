"""The demo model: a word-level trigram language model with interpolated absolute discounting.

It exists so that the demo, the tests, the benchmarks and the watermark work
have a model with *real* next-token distributions on any CPU, with no weights
to download. It is trained at start-up (about a second) on the answers and
replies in the bundled corpora and cached on disk.

The probability of ``w`` after context ``(u, v)`` is interpolated Kneser-Ney's
simpler sibling, absolute discounting with back-off weights::

    P(w | u v) = max(c(u v w) - D, 0) / c(u v ·) + γ(u v) · P(w | v)
    P(w | v)   = max(c(v w) - D, 0) / c(v ·)     + γ(v)   · P(w)
    P(w)       = (c(w) + 1) / (N + V)

where γ gives back exactly the mass taken by the discount, so every level is a
proper distribution. Counts are stored in CSR form (sorted arrays plus offset
tables), so the full-vocabulary distribution for a context is one vector scale
plus two sparse scatter-adds.

What it is not: a useful assistant. Its answers are fluent-ish word salad drawn
from the same distribution family as the corpora, biased towards the prompt's
words so that they relate to the question.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.resources
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from distillguard.demo.tokenizer import NEWLINE, WordTokenizer

__all__ = ["DemoModel", "Generation", "LogitsProcessor", "training_texts"]

MODEL_VERSION = "trigram-ad-1"
DISCOUNT = 0.75
PROMPT_BOOST = 2.0
LogitsProcessor = Callable[[list[int], np.ndarray], np.ndarray]
_REASONING_CUE = re.compile(r"\b(why|explain|how many|how much|calculate|solve|prove|compute|step)\b|\d+\s*[-+*/x×]\s*\d+", re.I)
_STOPWORDS = frozenset(
    ["a", "an", "the", "and", "or", "of", "to", "in", "on", "for", "with", "is", "are", "was", "were", "be", "been", "it", "this", "that", "these", "those", "i", "you", "he", "she", "we", "they", "what", "which", "who", "whom", "how", "why", "when", "where", "do", "does", "did", "can", "could", "would", "should", "will", "shall", "may", "might", "must", "my", "your", "me", "us", "them", "his", "her", "its", "our", "their", "as", "at", "by", "from", "about", "into", "than", "then", "so", "if", "not", "no", "yes", "please", "tell", "give", "write"]
)


def _read_corpus(name: str) -> Iterator[dict]:
    resource = importlib.resources.files("distillguard.data.corpora").joinpath(name)
    with resource.open("rb") as raw:
        stream = gzip.open(raw) if name.endswith(".gz") else raw  # noqa: SIM115 - closed with ``raw``
        for line in stream:
            if line.strip():
                yield json.loads(line)


def training_texts() -> list[str]:
    """Assistant-side text from the bundled corpora: what a model's answers look like."""
    texts: list[str] = []

    def walk(node: dict) -> None:
        if node.get("role") == "assistant" and node.get("text"):
            texts.append(node["text"])
        for reply in node.get("replies") or []:
            walk(reply)

    for tree in _read_corpus("oasst_en_100_tree.jsonl.gz"):
        walk(tree["prompt"])
    for row in _read_corpus("gsm8k_test.jsonl.gz"):
        texts.append(re.sub(r"<<[^>]*>>", "", row["answer"]).replace("####", "The answer is"))
    for row in _read_corpus("mbpp.jsonl.gz"):
        texts.append(row["code"])
    for row in _read_corpus("selfinstruct_seed_tasks.jsonl.gz"):
        texts.extend(inst.get("output", "") for inst in row.get("instances", []))
    for row in _read_corpus("selfinstruct_user_oriented.jsonl.gz"):
        texts.extend(inst.get("output", "") for inst in row.get("instances", []))
    return [t for t in texts if t and t.strip()]


@dataclass
class _Level:
    """Counts of one n-gram order in CSR form: context index → slice of (next ids, discounted probs)."""

    context_index: dict[int, int]
    offsets: np.ndarray
    next_ids: np.ndarray
    probs: np.ndarray
    gamma: np.ndarray


def _build_level(keys: np.ndarray, next_ids: np.ndarray) -> _Level:
    order = np.lexsort((next_ids, keys))
    keys, next_ids = keys[order], next_ids[order]
    pair = keys.astype(np.int64) * (1 << 24) + next_ids
    boundaries = np.flatnonzero(np.diff(pair)) + 1
    starts = np.concatenate(([0], boundaries))
    counts = np.diff(np.concatenate((starts, [len(pair)]))).astype(np.float64)
    uniq_keys, uniq_next = keys[starts], next_ids[starts]
    ctx_boundaries = np.flatnonzero(np.diff(uniq_keys)) + 1
    ctx_starts = np.concatenate(([0], ctx_boundaries))
    offsets = np.concatenate((ctx_starts, [len(uniq_keys)])).astype(np.int64)
    totals = np.add.reduceat(counts, ctx_starts)
    distinct = np.diff(offsets).astype(np.float64)
    per_entry_total = np.repeat(totals, np.diff(offsets))
    probs = (np.maximum(counts - DISCOUNT, 0.0) / per_entry_total).astype(np.float32)
    gamma = (DISCOUNT * distinct / totals).astype(np.float32)
    index = {int(k): i for i, k in enumerate(uniq_keys[ctx_starts])}
    return _Level(index, offsets, uniq_next.astype(np.int32), probs, gamma)


@dataclass
class Generation:
    """One sampled continuation."""

    ids: list[int]
    finish_reason: str
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)


class DemoModel:
    """A trigram LM over :class:`WordTokenizer` ids. Use :meth:`load` to get the cached instance."""

    _instance: DemoModel | None = None

    def __init__(self, tokenizer: WordTokenizer, unigram: np.ndarray, bigram: _Level, trigram: _Level) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.vocab_size
        self.unigram = unigram.astype(np.float32)
        self.bigram = bigram
        self.trigram = trigram
        self._unk = tokenizer.unk_id
        self.newline_id = tokenizer.token_to_id.get(NEWLINE, tokenizer.unk_id)

    # -- training and caching -------------------------------------------------------------
    @classmethod
    def train(cls, texts: Sequence[str]) -> DemoModel:
        tokenizer = WordTokenizer.build(texts)
        bos, eos = tokenizer.bos_id, tokenizer.eos_id
        sequences = [[bos, bos, *tokenizer.encode(t), eos] for t in texts]
        flat = np.fromiter((i for s in sequences for i in s), dtype=np.int64)
        is_bos = flat == bos
        v = tokenizer.vocab_size
        counts = np.bincount(flat[~is_bos], minlength=v).astype(np.float64)
        counts[tokenizer.unk_id] = max(counts[tokenizer.unk_id], 1.0)
        unigram = (counts + 1.0) / (counts.sum() + v)
        unigram[bos] = 0.0
        unigram /= unigram.sum()
        # Positions whose target is a real token (not a padding <s>).
        targets = np.flatnonzero(~is_bos)
        targets = targets[targets >= 2]
        bigram = _build_level(flat[targets - 1], flat[targets])
        trigram = _build_level(flat[targets - 2] * v + flat[targets - 1], flat[targets])
        return cls(tokenizer, unigram, bigram, trigram)

    @staticmethod
    def _cache_path(texts_digest: str) -> Path:
        root = Path(os.environ.get("DG_CACHE_DIR") or Path.home() / ".cache" / "distillguard")
        return root / f"demo-model-{MODEL_VERSION}-{texts_digest[:16]}.npz"

    @classmethod
    def load(cls, *, cache: bool = True) -> DemoModel:
        """The model trained on the bundled corpora, from the disk cache when present."""
        if cls._instance is not None:
            return cls._instance
        texts = training_texts()
        digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()
        path = cls._cache_path(digest)
        model = None
        if cache and path.exists():
            try:
                model = cls._from_npz(path)
            except (OSError, ValueError, KeyError):
                model = None
        if model is None:
            model = cls.train(texts)
            if cache:
                with contextlib.suppress(OSError):  # a read-only home only costs a retrain next time
                    model._to_npz(path)
        cls._instance = model
        return model

    def _to_npz(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {"unigram": self.unigram, "vocab": np.array(json.dumps(self.tokenizer.id_to_token))}
        for name, level in (("bi", self.bigram), ("tri", self.trigram)):
            arrays[f"{name}_keys"] = np.fromiter(level.context_index.keys(), dtype=np.int64, count=len(level.context_index))
            arrays[f"{name}_offsets"] = level.offsets
            arrays[f"{name}_next"] = level.next_ids
            arrays[f"{name}_probs"] = level.probs
            arrays[f"{name}_gamma"] = level.gamma
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
        tmp.replace(path)

    @classmethod
    def _from_npz(cls, path: Path) -> DemoModel:
        data = np.load(path)
        tokenizer = WordTokenizer(json.loads(str(data["vocab"])))
        levels = []
        for name in ("bi", "tri"):
            keys = data[f"{name}_keys"]
            levels.append(_Level({int(k): i for i, k in enumerate(keys.tolist())}, data[f"{name}_offsets"],
                                 data[f"{name}_next"], data[f"{name}_probs"], data[f"{name}_gamma"]))
        return cls(tokenizer, data["unigram"], levels[0], levels[1])

    # -- the distribution ---------------------------------------------------------------------
    def next_token_probs(self, context: Sequence[int]) -> np.ndarray:
        """Full-vocabulary next-token probabilities (float32, sums to 1)."""
        bos = self.tokenizer.bos_id
        v2 = context[-1] if len(context) >= 1 else bos
        v1 = context[-2] if len(context) >= 2 else bos
        bi, tri = self.bigram, self.trigram
        bi_row = bi.context_index.get(v2)
        tri_row = tri.context_index.get(v1 * self.vocab_size + v2) if bi_row is not None else None
        g_bi = float(bi.gamma[bi_row]) if bi_row is not None else 1.0
        g_tri = float(tri.gamma[tri_row]) if tri_row is not None else 1.0
        probs = self.unigram * (g_bi * g_tri)
        if bi_row is not None:
            lo, hi = bi.offsets[bi_row], bi.offsets[bi_row + 1]
            probs[bi.next_ids[lo:hi]] += g_tri * bi.probs[lo:hi]
        if tri_row is not None:
            lo, hi = tri.offsets[tri_row], tri.offsets[tri_row + 1]
            probs[tri.next_ids[lo:hi]] += tri.probs[lo:hi]
        return probs

    def next_token_logits(self, context: Sequence[int]) -> np.ndarray:
        """Log-probabilities used as logits (what watermark schemes and processors act on)."""
        with np.errstate(divide="ignore"):
            return np.log(self.next_token_probs(context))

    def prompt_bias(self, prompt_ids: Sequence[int]) -> dict[int, float]:
        """A gentle boost for the prompt's content words, so answers stay on topic."""
        special = {self.tokenizer.unk_id, self.tokenizer.bos_id, self.tokenizer.eos_id, self.newline_id}
        bias: dict[int, float] = {}
        for i in prompt_ids:
            token = self.tokenizer.id_to_token[i]
            if i not in special and token.lower() not in _STOPWORDS and (len(token) > 2 or token.isdigit()):
                bias[i] = PROMPT_BOOST
        return bias

    @staticmethod
    def wants_reasoning(prompt: str) -> bool:
        return bool(_REASONING_CUE.search(prompt))

    # -- sampling -------------------------------------------------------------------------------
    def generate(
        self,
        prompt_ids: Sequence[int] = (),
        *,
        max_tokens: int = 128,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        logit_bias: dict[int, float] | None = None,
        logits_processors: Sequence[LogitsProcessor] | None = None,
        stop: Sequence[str] | None = None,
        top_logprobs: int = 0,
        rng: np.random.Generator | None = None,
        condition_on_prompt: bool = True,
        min_tokens: int = 0,
    ) -> Generation:
        """Sample a continuation; the context starts fresh, steered by the prompt's words.

        ``min_tokens`` (as in vLLM) forbids end-of-text before that many tokens.
        """
        return self._sample(
            list(prompt_ids), max_tokens, temperature, top_p, rng or np.random.default_rng(seed),
            logit_bias, logits_processors, stop, top_logprobs, condition_on_prompt, min_tokens,
        )

    def stream(self, prompt_ids: Sequence[int] = (), **kwargs: object) -> Iterator[tuple[int, float, list[tuple[int, float]]]]:
        """Yield ``(token id, logprob, top logprobs)`` one token at a time (for streaming servers)."""
        generation = self.generate(prompt_ids, **kwargs)  # type: ignore[arg-type]
        tops = generation.top_logprobs or [[] for _ in generation.ids]
        yield from zip(generation.ids, generation.logprobs, tops, strict=False)

    def _sample(
        self,
        prompt_ids: list[int],
        max_tokens: int,
        temperature: float,
        top_p: float,
        rng: np.random.Generator,
        logit_bias: dict[int, float] | None,
        processors: Sequence[LogitsProcessor] | None,
        stop: Sequence[str] | None,
        top_logprobs: int,
        condition_on_prompt: bool,
        min_tokens: int = 0,
    ) -> Generation:
        bias = self.prompt_bias(prompt_ids) if condition_on_prompt else {}
        for token_id, value in (logit_bias or {}).items():
            if 0 <= int(token_id) < self.vocab_size:
                bias[int(token_id)] = bias.get(int(token_id), 0.0) + float(value)
        bias_ids = np.fromiter(bias.keys(), dtype=np.int64, count=len(bias))
        bias_factors = np.exp(np.fromiter(bias.values(), dtype=np.float64, count=len(bias))).astype(np.float32)
        eos, bos = self.tokenizer.eos_id, self.tokenizer.bos_id
        context: list[int] = [bos, bos]
        out = Generation(ids=[], finish_reason="length")
        greedy = temperature <= 1e-6
        inverse_t = 1.0 / temperature if not greedy else 1.0
        for _ in range(max_tokens):
            # Probability space is cheaper than logits: a bias is a multiplication, temperature a power.
            weights = self.next_token_probs(context)
            if len(bias_ids):
                weights[bias_ids] *= bias_factors
            weights[bos] = 0.0
            weights[self._unk] = 0.0  # never emit <unk>: it only stands for words too rare to learn
            if len(out.ids) < min_tokens:
                weights[eos] = 0.0
            if processors:
                with np.errstate(divide="ignore"):
                    logits = np.log(weights)
                for processor in processors:
                    logits = processor(context[2:], logits)
                weights = np.exp(logits - np.max(logits)).astype(np.float32)
            if not greedy and inverse_t != 1.0:
                weights = weights ** np.float32(inverse_t)
            total = float(weights.sum())
            if greedy:
                choice = int(np.argmax(weights))
            elif top_p < 1.0:
                order = np.argsort(-weights)
                cumulative = np.cumsum(weights[order])
                keep = order[: int(np.searchsorted(cumulative, top_p * total)) + 1]
                kept = weights[keep]
                choice = int(keep[min(int(np.searchsorted(np.cumsum(kept), rng.random() * float(kept.sum()))), len(keep) - 1)])
            else:
                choice = min(int(np.searchsorted(np.cumsum(weights), rng.random() * total)), self.vocab_size - 1)
            logprob = float(np.log(max(float(weights[choice]), 1e-38) / total))
            if choice == eos:
                out.finish_reason = "stop"
                break
            out.ids.append(choice)
            out.logprobs.append(logprob)
            if top_logprobs:
                best = np.argpartition(-weights, top_logprobs)[:top_logprobs]
                best = best[np.argsort(-weights[best])]
                out.top_logprobs.append([(int(b), float(np.log(max(float(weights[b]), 1e-38) / total))) for b in best])
            context.append(choice)
            if stop:
                tail = self.tokenizer.decode(out.ids[-12:])
                if any(s and s in tail for s in stop):
                    out.finish_reason = "stop"
                    break
        return out
