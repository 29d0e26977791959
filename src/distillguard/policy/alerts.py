"""Alerts: webhooks when an account or cluster reaches a configured risk level or the policy acts.

``notify`` is called from the policy engine's background threads (the scorer
reader and the audit writer), never from a request: it only checks the
de-duplication table and appends to a queue. One sender thread posts each
alert to every configured webhook, signed (``X-Distillguard-Signature:
sha256=<HMAC-SHA256 of "<timestamp>.<body>" under the webhook's secret>``,
``X-Distillguard-Timestamp``), and retries a failed delivery with exponential
back-off; a delivery that still fails is logged and counted, never silently
dropped. The same alert (kind, subject, level or action) is sent at most once
per ``dedupe_s``.

Two payload formats: ``json`` (the alert object itself) and ``slack`` (an
incoming-webhook ``{"text": …}`` with the same facts in one line).
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from distillguard.config import AlertSettings, WebhookSettings

__all__ = ["Alert", "Alerter", "cluster_band", "sign"]

log = logging.getLogger("distillguard.alerts")
LEVELS = {"low": 0, "medium": 1, "high": 2}
MAX_QUEUE = 10_000
# The report's risk bands (detect.scanner.risk_band); repeated here because the gateway process must not import detect.
HIGH, MEDIUM = 0.8, 0.5


def cluster_band(score: float) -> str:
    """A cluster's score as a risk band, with the thresholds accounts use."""
    return "high" if score >= HIGH else "medium" if score >= MEDIUM else "low"


@dataclass(frozen=True)
class Alert:
    kind: str  # "account" | "cluster" | "policy"
    subject: str  # account or cluster id
    level: str  # risk band (account, cluster) or the policy action
    summary: str  # one sentence for a person
    detail: dict[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)

    def as_json(self) -> dict[str, Any]:
        return {"v": 1, "kind": self.kind, "subject": self.subject, "level": self.level, "summary": self.summary,
                "detail": self.detail, "ts": self.ts, "source": "distillguard"}


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value: ``sha256=`` + HMAC-SHA256 of ``timestamp.body`` (a receiver recomputes it)."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class Alerter:
    def __init__(self, settings: AlertSettings) -> None:
        self.settings = settings
        self._queue: collections.deque[Alert] = collections.deque()
        self._seen: dict[tuple[str, str, str], float] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats = {"queued": 0, "sent": 0, "failed": 0, "retries": 0, "deduplicated": 0, "dropped": 0}

    @property
    def enabled(self) -> bool:
        return bool(self.settings.webhooks)

    def start(self) -> None:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="distillguard-alerts", daemon=True)
            self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # -- what is worth an alert ---------------------------------------------------------------------
    def risk_reached(self, kind: str, subject: str, band: str, summary: str, detail: dict[str, Any]) -> None:
        """An account or cluster is at ``band``: alert when that is at or above ``min_risk``."""
        if LEVELS.get(band, 0) >= LEVELS[self.settings.min_risk]:
            self.notify(Alert(kind, subject, band, summary, detail))

    def policy_acted(self, account_id: str, action: str, rule: str | None, risk: float | None) -> None:
        if action in self.settings.policy_actions:
            summary = f"policy {action} on {account_id} (rule {rule or 'none'}" + (f", risk {risk:.2f})" if risk is not None else ")")
            self.notify(Alert("policy", account_id, action, summary, {"rule": rule, "risk": risk}))

    def notify(self, alert: Alert) -> None:
        if not self.enabled:
            return
        key = (alert.kind, alert.subject, alert.level)
        now = time.monotonic()
        last = self._seen.get(key)
        if last is not None and now - last < self.settings.dedupe_s:
            self.stats["deduplicated"] += 1
            return
        if len(self._queue) >= MAX_QUEUE:  # a receiver down for hours: say so instead of growing without bound
            self.stats["dropped"] += 1
            log.error("alert queue full (%d): alert %s %s %s not sent", MAX_QUEUE, *key)
            return
        self._seen[key] = now
        self._queue.append(alert)
        self.stats["queued"] += 1
        self._wake.set()

    # -- delivery -----------------------------------------------------------------------------------
    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=self.settings.timeout_s) as client:
            while not self._stop.is_set():
                self._wake.wait(1.0)
                self._wake.clear()
                while self._queue and not self._stop.is_set():
                    alert = self._queue.popleft()
                    for hook in self.settings.webhooks:
                        self._deliver(client, hook, alert)

    def _deliver(self, client: Any, hook: WebhookSettings, alert: Alert) -> bool:
        body = orjson.dumps(alert.as_json() if hook.format == "json" else {"text": f"distillguard: {alert.summary}"})
        delay = self.settings.backoff_s
        for attempt in range(1, self.settings.max_attempts + 1):
            timestamp = str(int(time.time()))
            headers = {"content-type": "application/json", "x-distillguard-timestamp": timestamp,
                       "x-distillguard-alert": f"{alert.kind}:{alert.subject}:{alert.level}"}
            if hook.secret:
                headers["x-distillguard-signature"] = sign(hook.secret, timestamp, body)
            problem: str
            try:
                response = client.post(hook.url, content=body, headers=headers)
                if response.status_code < 300:
                    self.stats["sent"] += 1
                    return True
                problem = f"HTTP {response.status_code}"
                if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                    break  # the receiver refuses this alert: retrying will not change its mind
            except Exception as exc:  # noqa: BLE001 - any transport failure is retried the same way
                problem = f"{type(exc).__name__}: {exc}"
            if attempt < self.settings.max_attempts:
                self.stats["retries"] += 1
                if self._stop.wait(delay):
                    break
                delay = min(delay * 2, 300.0)
        self.stats["failed"] += 1
        log.error("alert %s %s %s not delivered to %s after %d attempt(s): %s", alert.kind, alert.subject, alert.level,
                  hook.url, attempt, problem)
        return False
