"""Token economics and sampling parameters: what harvesting looks like on the bill.

Distillation wants long outputs for short inputs, ``max_tokens`` pinned high,
several samples per prompt (``n > 1``) and sometimes logprobs. Evaluation jobs
also ask for logprobs, but for one-token answers, so length dominates here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from distillguard.detect.base import (
    AccountStates,
    Detector,
    Distinct,
    Evidence,
    add_distinct,
    confidence,
    logistic,
)

__all__ = ["TokenEconomics"]


@dataclass(slots=True)  # one per account: no per-instance __dict__ (docs/detection.md, "Memory")
class _State:
    requests: int = 0
    completion_tokens: int = 0
    prompt_tokens: int = 0
    pinned_high: int = 0
    multi_sample: int = 0
    logprobs: int = 0
    temperatures: Distinct[float] = ()  # a small tuple, then a set (base.add_distinct)


class TokenEconomics(Detector):
    name = "token_economics"

    def __init__(self) -> None:
        self.accounts: AccountStates[_State] = AccountStates(_State)

    def update(self, event: Mapping[str, Any]) -> None:
        state = self.accounts.of(event)
        if state is None:
            return
        response = event.get("response") or {}
        params = (event.get("request") or {}).get("params") or {}
        state.requests += 1
        state.completion_tokens += int(response.get("completion_tokens") or 0)
        state.prompt_tokens += int(response.get("prompt_tokens") or 0)
        max_tokens = params.get("max_tokens")
        if isinstance(max_tokens, int) and max_tokens >= 4000:
            state.pinned_high += 1
        n = params.get("n")
        if isinstance(n, int) and n > 1:
            state.multi_sample += 1
        if params.get("logprobs"):
            state.logprobs += 1
        temperature = params.get("temperature")
        if isinstance(temperature, int | float):
            state.temperatures = add_distinct(state.temperatures, round(float(temperature), 2), 32)

    def pooled(self, account_ids: Iterable[str]) -> Evidence | None:
        """The evidence of several accounts' requests counted together, as if one actor sent them all (a cluster).

        A fleet member sending six requests a day has too few for :func:`confidence` on its own; its fleet's long
        answers, counted together, do not.
        """
        pool = _State()
        temperatures: set[float] = set()
        for account in account_ids:
            s = self.accounts.get(account)
            if s is not None:
                pool.requests += s.requests
                pool.completion_tokens += s.completion_tokens
                pool.prompt_tokens += s.prompt_tokens
                pool.pinned_high += s.pinned_high
                pool.multi_sample += s.multi_sample
                pool.logprobs += s.logprobs
                if len(temperatures) < 32:
                    temperatures.update(s.temperatures)
        pool.temperatures = temperatures
        return self._evidence_of(pool)

    def evidence(self, account_id: str) -> Evidence | None:
        return self._evidence_of(self.accounts.get(account_id))

    def _evidence_of(self, s: _State | None) -> Evidence | None:
        if s is None or s.requests == 0:
            return None
        mean_out = s.completion_tokens / s.requests
        ratio = s.completion_tokens / max(1, s.prompt_tokens)
        pinned = s.pinned_high / s.requests
        multi = s.multi_sample / s.requests
        # Midpoint 450 output tokens per request: long answers are what a copy is trained on.
        length = logistic(mean_out, 450, 90)
        params = max(logistic(pinned, 0.5, 0.12), logistic(multi, 0.15, 0.05))
        score = (0.6 * length + 0.4 * params) * confidence(s.requests)
        if length < 0.2:
            score *= 0.5  # pinned parameters with short answers are a batch job's habit, not harvesting
        return Evidence(
            self.name, score,
            f"mean {mean_out:.0f} output tokens per request (output/input {ratio:.1f}); max_tokens ≥ 4000 on {pinned:.0%}, "
            f"n > 1 on {multi:.0%}, logprobs on {s.logprobs / s.requests:.0%}, {len(s.temperatures)} temperature values",
            numbers={"mean_output_tokens": round(mean_out, 1), "output_input_ratio": round(ratio, 2), "pinned_max_tokens": round(pinned, 3),
                     "multi_sample": round(multi, 3)},
        )
