"""A policy decision: what the gateway does with one request, and what the event records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ACTIONS", "Decision", "ALLOW"]

ACTIONS = ("allow", "flag", "throttle", "challenge", "degrade", "block")


@dataclass(frozen=True)
class Decision:
    action: str = "allow"
    rule: str | None = None
    message: str | None = None
    retry_after: float | None = None
    strip_reasoning: bool = False
    max_top_logprobs: int | None = None
    throttle_rpm: int | None = None
    risk: float | None = None

    def as_event(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.action, "rule": self.rule}
        if self.risk is not None:
            out["risk"] = round(self.risk, 4)
        if self.strip_reasoning:
            out["strip_reasoning"] = True
        if self.max_top_logprobs is not None:
            out["max_top_logprobs"] = self.max_top_logprobs
        return out


ALLOW = Decision()
