"""The gateway's side of canaries: append a keyed canary sentence to answers to configured trigger prompts.

Off by default (``canary.enabled``); the gateway then holds no planter and
pays one ``is None`` test per answer. On, it checks the last user message of
each non-streamed chat, completions or Messages answer against the
configured triggers (case-insensitive substring tests; the canary strings
are computed once at start-up) and, on a match, appends the trigger's
sentence — ``Catalogue reference: amber-falcon-417.`` — to every text choice
of the answer, before the answer is summarised for the event, so the event
log holds the answer as the caller got it, plus ``"canary": {"key_id",
"trigger"}``. With ``only_flagged`` only requests whose policy decision is
not ``allow`` are planted. Streamed answers and the Responses API are not
planted (yet).
"""

from __future__ import annotations

from typing import Any

from distillguard.canary.variants import canary_for
from distillguard.config import CanarySettings

__all__ = ["CanaryPlanter"]

PLANTED_ENDPOINTS = frozenset({"openai.chat", "openai.completions", "anthropic.messages"})


def _last_user_text(endpoint: str, payload: dict[str, Any]) -> str:
    if endpoint == "openai.completions":
        prompt = payload.get("prompt")
        return prompt if isinstance(prompt, str) else ""
    messages = payload.get("messages")
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
            return ""
    return ""


class CanaryPlanter:
    """Matches trigger prompts and plants their canary sentence into the answer (in place)."""

    def __init__(self, settings: CanarySettings) -> None:
        self.key_id = settings.key_id
        self.only_flagged = settings.only_flagged
        self.triggers = [(t.id, t.match.lower(), " " + t.template.replace("{canary}", canary_for(settings.secret, settings.key_id, t.id)))
                         for t in settings.triggers]
        self.planted = 0

    def plant(self, endpoint: str, payload: dict[str, Any] | None, answer: dict[str, Any], *, anthropic_shape: bool,
              action: str = "allow") -> dict[str, str] | None:
        """Append the canary sentence when the request matches a trigger; ``{"key_id", "trigger"}`` if planted.

        ``action`` is the policy's decision for the request; with ``only_flagged`` an ``allow`` gets no canary."""
        if endpoint not in PLANTED_ENDPOINTS or payload is None or (self.only_flagged and action == "allow"):
            return None
        text = _last_user_text(endpoint, payload).lower()
        if not text:
            return None
        for trigger_id, match, sentence in self.triggers:
            if match in text:
                if _append(answer, sentence, anthropic_shape=anthropic_shape):
                    self.planted += 1
                    return {"key_id": self.key_id, "trigger": trigger_id}
                return None
        return None


def _append(answer: dict[str, Any], sentence: str, *, anthropic_shape: bool) -> bool:
    if anthropic_shape:
        blocks = answer.get("content")
        if not isinstance(blocks, list):
            return False
        texts = [b for b in blocks if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)]
        if not texts:
            return False
        texts[-1]["text"] += sentence
        return True
    planted = False
    for choice in answer.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            message["content"] += sentence
            planted = True
        elif isinstance(choice.get("text"), str):
            choice["text"] += sentence
            planted = True
    return planted
