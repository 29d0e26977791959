"""What several detectors read of one event's prompt, worked out once per event.

The Scanner feeds every detector the same event, and five of them read its
prompt: the last user turn (``user_text``), whether the request carries an
earlier answer (``is_follow_up``) and whether that turn builds on the answer
(``builds_on_earlier``: coverage's unbuilt share, sustained extraction's
built-on answers, relay sharing's real conversations). Each used to work these
out for itself; an :class:`EventContext` holds them for one event, so the
Scanner extracts the text once and asks "built on earlier?" at most once, and
a detector fed alone (``update(event)``) builds its own context and computes
exactly the same thing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from distillguard.detect.base import user_text
from distillguard.detect.followups import builds_on_earlier, is_follow_up

__all__ = ["ContextReader", "EventContext"]


class EventContext:
    """One event and what is read of its prompt: ``text`` and ``follow_up`` at once, ``builds_on_earlier`` when asked."""

    __slots__ = ("_builds", "event", "follow_up", "text")

    def __init__(self, event: Mapping[str, Any]) -> None:
        self.event = event
        self.text = user_text(event)
        self.follow_up = is_follow_up(event)
        self._builds: bool | None = None

    @property
    def builds_on_earlier(self) -> bool:
        """:func:`~distillguard.detect.followups.builds_on_earlier` of ``text``, computed on first use only: most
        events are no follow-up, and no detector asks about them."""
        builds = self._builds
        if builds is None:
            builds = self._builds = builds_on_earlier(self.text)
        return builds


class ContextReader(Protocol):
    """A detector that reads the prompt: the Scanner hands it the event's shared :class:`EventContext`."""

    def update_with(self, context: EventContext) -> None:
        """``update(context.event)``, reading the prompt from ``context``."""
