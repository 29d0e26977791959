"""Prompt pools built from the bundled real corpora (licences in data/corpora/SOURCES.md).

Benign traffic draws on real conversations (OpenAssistant trees, MT-bench's two
turns, the user-oriented Self-Instruct set); distillation sweeps draw on the
instruction pools campaigns harvest (GSM8K, MBPP, HumanEval, MMLU-STEM, the
Self-Instruct seed tasks). Each pool is split by a fixed hash into a
*development* half and a *held-out* half, so scenarios used to evaluate
detection can use prompts the detectors were never looked at against.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

__all__ = ["PromptPools", "SWEEP_POOLS"]

SWEEP_POOLS = ("gsm8k", "mbpp", "humaneval", "mmlu", "seed_tasks")
_HUMANEVAL_FRAME = "Complete this Python function:\n\n"


def _rows(name: str) -> Iterator[dict]:
    resource = importlib.resources.files("distillguard.data.corpora").joinpath(name)
    with resource.open("rb") as raw:
        stream = gzip.open(raw) if name.endswith(".gz") else raw  # noqa: SIM115 - closed with ``raw``
        for line in stream:
            if line.strip():
                yield json.loads(line)


def _held_out(text: str) -> bool:
    return hashlib.sha256(text.encode()).digest()[0] % 2 == 1


def _split(items: list) -> tuple[list, list]:
    dev = [x for x in items if not _held_out(json.dumps(x, sort_keys=True))]
    held = [x for x in items if _held_out(json.dumps(x, sort_keys=True))]
    return dev, held


@dataclass
class PromptPools:
    """Conversations for benign users and task pools for sweeps, in two disjoint halves."""

    conversations: list[list[str]] = field(default_factory=list)
    conversations_held_out: list[list[str]] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    coding: list[str] = field(default_factory=list)
    sweeps: dict[str, list[str]] = field(default_factory=dict)
    sweeps_held_out: dict[str, list[str]] = field(default_factory=dict)
    eval_items: list[str] = field(default_factory=list)

    @classmethod
    def load(cls) -> PromptPools:
        cached = _CACHE.get("pools")
        if cached is not None:
            return cached
        conversations: list[list[str]] = []
        answers: list[str] = []

        def walk(node: dict, turns: list[str]) -> None:
            if node.get("role") == "prompter":
                turns = [*turns, node["text"]]
            elif node.get("text"):
                answers.append(node["text"])
            replies = node.get("replies") or []
            if not replies and len(turns) >= 1:
                conversations.append(turns)
            for reply in replies[:2]:
                walk(reply, turns)

        for tree in _rows("oasst_en_100_tree.jsonl.gz"):
            walk(tree["prompt"], [])
        for row in _rows("mt_bench_questions.jsonl"):
            conversations.append(list(row["turns"]))
        for row in _rows("selfinstruct_user_oriented.jsonl.gz"):
            for inst in row.get("instances", [])[:1]:
                conversations.append([row["instruction"] + ("\n\n" + inst["input"] if inst.get("input") else "")])
        for line in _rows("oasst_prompt_lottery_en_250.jsonl"):
            if isinstance(line, str):
                conversations.append([line])
        coding = [row["prompt"] for row in _rows("HumanEval.jsonl.gz")]
        sweeps = {
            "gsm8k": [row["question"] for row in _rows("gsm8k_test.jsonl.gz")],
            "mbpp": [row["text"] for row in _rows("mbpp.jsonl.gz")],
            "humaneval": [_HUMANEVAL_FRAME + row["prompt"] for row in _rows("HumanEval.jsonl.gz")],
            "mmlu": [row["question"] + "\n" + "\n".join(f"{'ABCD'[i]}. {c}" for i, c in enumerate(row["choices"]))
                     for row in _rows("mmlu_stem_test.jsonl.gz")],
            "seed_tasks": [row["instruction"] for row in _rows("selfinstruct_seed_tasks.jsonl.gz")],
        }
        conv_dev, conv_held = _split(conversations)
        pools = cls(conversations=conv_dev, conversations_held_out=conv_held, answers=answers, coding=coding,
                    eval_items=sweeps["mmlu"])
        for name, items in sweeps.items():
            pools.sweeps[name], pools.sweeps_held_out[name] = _split(items)
        _CACHE["pools"] = pools
        return pools

    @classmethod
    def for_split(cls, split: str) -> PromptPools:
        """The prompts of one split of the ``robust`` family: three disjoint parts of every pool, cut by keyed hashes.

        ``holdout`` gets a quarter of every pool (a keyed SHA-256 of the prompt: first byte < 64); ``dev``
        and ``test`` get their halves (``halves``) minus that quarter, so none of the three shares a prompt.
        Conversations go by their first turn (branches of one OpenAssistant tree, and the same question in
        two corpora, land on the same side); HumanEval tasks together with the coders' copy of them; every
        other item by its own text. Both halves of a pool also serve as its "held-out" half, so the older
        actors, which ask for ``held_out`` prompts, stay inside the split.
        """
        if split not in ("dev", "test", "holdout"):
            raise ValueError(f"split must be dev, test or holdout, got {split!r}")
        return cls._cut(f"robust:{split}", lambda key: _in_holdout(key) if split == "holdout"
                        else not _in_holdout(key) and _in_test_half(key) == (split == "test"))

    @classmethod
    def halves(cls, split: str) -> PromptPools:
        """The two halves the fixed scenarios have used since before the hold-out split (``dev`` or ``test``).

        Kept so that a fixed scenario on ``--split test`` stays byte-identical; they overlap the hold-out
        quarter, which is why the fixed scenarios do not run on ``holdout``.
        """
        return cls._cut(f"half:{split}", lambda key: _in_test_half(key) == (split == "test"))

    @classmethod
    def _cut(cls, name: str, keep: Callable[[bytes], bool]) -> PromptPools:
        cached = _CACHE.get(name)
        if cached is not None:
            return cached
        full = cls.load()
        conversations = [c for c in full.conversations + full.conversations_held_out if keep(_key(c[0]))]
        sweeps = {pool: [t for t in full.sweeps[pool] + full.sweeps_held_out[pool] if keep(_key(t))] for pool in full.sweeps}
        pools = cls(conversations=conversations, conversations_held_out=conversations,
                    answers=[a for a in full.answers if keep(_key(a))], coding=[c for c in full.coding if keep(_key(c))],
                    sweeps=sweeps, sweeps_held_out=sweeps, eval_items=sweeps["mmlu"])
        _CACHE[name] = pools
        return pools

    def conversation(self, rng: random.Random, held_out: bool = False) -> list[str]:
        return list(rng.choice(self.conversations_held_out if held_out else self.conversations))

    def sweep_task(self, rng: random.Random, pool: str | None = None, held_out: bool = False) -> str:
        pools = self.sweeps_held_out if held_out else self.sweeps
        return rng.choice(pools[pool or rng.choice(SWEEP_POOLS)])


_CACHE: dict[str, PromptPools] = {}


def _key(text: str) -> bytes:
    return text.removeprefix(_HUMANEVAL_FRAME).encode()  # a HumanEval task and the coders' copy of it go together


def _in_test_half(key: bytes) -> bool:
    return hashlib.sha256(b"distillguard-split-v1|" + key).digest()[0] % 2 == 1


def _in_holdout(key: bytes) -> bool:
    return hashlib.sha256(b"distillguard-holdout-v1|" + key).digest()[0] < 64
