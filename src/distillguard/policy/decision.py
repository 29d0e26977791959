"""A policy decision: what the gateway does with one request, and what the event records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["ACTIONS", "REASONING_MODES", "Decision", "ALLOW"]

ACTIONS = ("allow", "flag", "throttle", "challenge", "degrade", "block")
REASONING_MODES = ("keep", "strip", "summarize")


@dataclass(frozen=True)
class Decision:
    """One request's decision.

    ``reasoning`` is what happens to the answer's reasoning: ``keep`` (passed
    through), ``strip`` (removed) or ``summarize`` (replaced by a short
    extractive summary, ``gateway.responses.reasoning_summary``). Degrade
    decisions take it from ``detection.degrade_reasoning``.
    """

    action: str = "allow"
    rule: str | None = None
    message: str | None = None
    reasoning: Literal["keep", "strip", "summarize"] = "keep"
    max_top_logprobs: int | None = None
    throttle_rpm: int | None = None
    risk: float | None = None

    @property
    def strip_reasoning(self) -> bool:
        """Whether the full reasoning is withheld from the client (stripped or summarised)."""
        return self.reasoning != "keep"

    def as_event(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.action, "rule": self.rule}
        if self.risk is not None:
            out["risk"] = round(self.risk, 4)
        if self.reasoning != "keep":
            out["strip_reasoning"] = True  # the full reasoning did not reach the client, either way
            out["reasoning"] = self.reasoning
        if self.max_top_logprobs is not None:
            out["max_top_logprobs"] = self.max_top_logprobs
        return out


ALLOW = Decision()
