"""The gateway's side of canaries: append a keyed canary sentence to answers to configured trigger prompts.

Off by default (``canary.enabled``); the gateway then holds no planter and
pays one ``is None`` test per answer. On, it checks the last user message of
each chat, completions, Messages or Responses API request against the
configured triggers (case-insensitive substring tests; the canary strings
are computed once at start-up) and, on a match, appends the trigger's
sentence — ``Catalogue reference: amber-falcon-417.`` — to the answer:

- non-streamed, in place, before the answer is summarised for the event
  (:meth:`CanaryPlanter.plant`): every text choice (OpenAI chat and
  completions), the last text block (Anthropic), the first ``output_text``
  part (Responses API);
- streamed, by a filter on the relayed stream (:meth:`CanaryPlanter.for_stream`,
  canary/stream.py) that sends the sentence as one more text delta just before
  the stream says it is finished — nothing is held back but the partial SSE
  event at the end of a chunk.

Either way the event log holds the answer as the caller got it, plus
``"canary": {"key_id", "trigger"}``. With ``only_flagged`` only requests
whose policy decision is not ``allow`` are planted.
"""

from __future__ import annotations

from typing import Any

from distillguard.canary.stream import AnswerShape, StreamCanary, stream_canary
from distillguard.canary.variants import canary_for
from distillguard.config import CanarySettings

__all__ = ["AnswerShape", "CanaryPlanter"]

PLANTED_ENDPOINTS = frozenset({"openai.chat", "openai.completions", "openai.responses", "anthropic.messages"})


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _last_user_text(endpoint: str, payload: dict[str, Any]) -> str:
    if endpoint == "openai.completions":
        prompt = payload.get("prompt")
        return prompt if isinstance(prompt, str) else ""
    messages = payload.get("input") if endpoint == "openai.responses" else payload.get("messages")
    if isinstance(messages, str):  # a Responses API input given as one string is one user message
        return messages
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


class CanaryPlanter:
    """Matches trigger prompts and plants their canary sentence into the answer or its stream."""

    def __init__(self, settings: CanarySettings) -> None:
        self.key_id = settings.key_id
        self.only_flagged = settings.only_flagged
        self.triggers = [(t.id, t.match.lower(), " " + t.template.replace("{canary}", canary_for(settings.secret, settings.key_id, t.id)))
                         for t in settings.triggers]

    def _trigger(self, endpoint: str, payload: dict[str, Any] | None, action: str) -> tuple[str, str] | None:
        """``(trigger id, sentence)`` for a request that asks a trigger prompt (and may be planted), else None."""
        if endpoint not in PLANTED_ENDPOINTS or payload is None or (self.only_flagged and action == "allow"):
            return None
        text = _last_user_text(endpoint, payload).lower()
        if not text:
            return None
        for trigger_id, match, sentence in self.triggers:
            if match in text:
                return trigger_id, sentence
        return None

    def plant(self, endpoint: str, payload: dict[str, Any] | None, answer: dict[str, Any], *, shape: AnswerShape,
              action: str = "allow") -> dict[str, str] | None:
        """Append the canary sentence to a whole answer when the request matches a trigger; ``{"key_id", "trigger"}`` if planted.

        ``action`` is the policy's decision for the request; with ``only_flagged`` an ``allow`` gets no canary."""
        found = self._trigger(endpoint, payload, action)
        if found is None:
            return None
        trigger_id, sentence = found
        return {"key_id": self.key_id, "trigger": trigger_id} if _append(answer, sentence, shape) else None

    def for_stream(self, endpoint: str, payload: dict[str, Any] | None, text_parts: list[str], *, shape: AnswerShape,
                   action: str = "allow") -> StreamCanary | None:
        """A filter that plants the canary into a stream of ``shape`` (canary/stream.py), or None when the request is no trigger.

        ``text_parts`` is the event summary's text: the filter appends the
        sentence there too, wherever it plants it. Its ``planted`` says whether
        it did (a stream without text, or cut short, gets none); ``info`` is
        then the event's ``canary`` object.
        """
        found = self._trigger(endpoint, payload, action)
        if found is None:
            return None
        trigger_id, sentence = found
        return stream_canary(shape, sentence, {"key_id": self.key_id, "trigger": trigger_id}, text_parts)


def _append(answer: dict[str, Any], sentence: str, shape: AnswerShape) -> bool:
    if shape == "anthropic":
        blocks = answer.get("content")
        if not isinstance(blocks, list):
            return False
        texts = [b for b in blocks if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)]
        if not texts:
            return False
        texts[-1]["text"] += sentence
        return True
    if shape == "responses":
        for item in answer.get("output") or ():
            if isinstance(item, dict) and item.get("type") == "message" and isinstance(item.get("content"), list):
                for part in item["content"]:
                    if isinstance(part, dict) and part.get("type") == "output_text" and isinstance(part.get("text"), str):
                        part["text"] += sentence
                        return True
        return False
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
