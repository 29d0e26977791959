"""Prometheus text-format metrics, kept as plain counters on the event loop.

Hand-rolled rather than ``prometheus_client`` because every update happens on
the single event-loop thread, so no locks are needed, and the exposition format
is a few lines of text.
"""

from __future__ import annotations

import bisect
import time
from collections import defaultdict, deque
from collections.abc import Callable, Mapping

__all__ = ["SAMPLE_EVERY_S", "Metrics"]

SAMPLE_EVERY_S = 10.0
HISTORY_SAMPLES = 8640  # 24 h of samples
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _Histogram:
    __slots__ = ("counts", "sum", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, value)] += 1
        self.sum += value
        self.count += 1


class Metrics:
    def __init__(self) -> None:
        self.requests: defaultdict[tuple[str, int], int] = defaultdict(int)
        self.latency: defaultdict[str, _Histogram] = defaultdict(_Histogram)
        self.upstream_errors: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.policy_actions: defaultdict[str, int] = defaultdict(int)
        self.attestations: defaultdict[str, int] = defaultdict(int)
        self.in_flight = 0
        self.gauges: list[tuple[str, str, Callable[[], float]]] = []
        self.counters: list[tuple[str, str, str, Callable[[], Mapping[str, int]]]] = []
        self.labeled_gauges: list[tuple[str, str, str, Callable[[], Mapping[str, float]]]] = []
        # (unix time, requests, refused, policy actions) every SAMPLE_EVERY_S: the console's traffic charts
        self.history: deque[tuple[float, int, int, dict[str, int]]] = deque(maxlen=HISTORY_SAMPLES)

    def snapshot(self, now: float | None = None) -> tuple[float, int, int, dict[str, int]]:
        """The running totals now: (unix time, requests, refused (4xx/5xx), policy actions)."""
        requests = sum(self.requests.values())
        refused = sum(n for (_endpoint, status), n in self.requests.items() if status >= 400)
        return (time.time() if now is None else now, requests, refused, dict(self.policy_actions))

    def sample(self, now: float | None = None) -> None:
        """Append :meth:`snapshot` to ``history`` (called off the request path, every ``SAMPLE_EVERY_S``)."""
        self.history.append(self.snapshot(now))

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests[(endpoint, status)] += 1
        self.latency[endpoint].observe(seconds)

    def add_gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.gauges.append((name, help_text, read))

    def add_labeled_gauge(self, name: str, help_text: str, label: str, read: Callable[[], Mapping[str, float]]) -> None:
        """A gauge with one series per ``label`` value: ``read()`` gives each value's number (read at scrape time)."""
        self.labeled_gauges.append((name, help_text, label, read))

    def add_counter(self, name: str, help_text: str, label: str, read: Callable[[], Mapping[str, int]]) -> None:
        """A counter kept elsewhere (the HTTP server's): ``read()`` gives its value per ``label`` value."""
        self.counters.append((name, help_text, label, read))

    def render(self) -> bytes:
        out: list[str] = [
            "# HELP distillguard_requests_total Requests handled, by endpoint and HTTP status.",
            "# TYPE distillguard_requests_total counter",
        ]
        for (endpoint, status), n in sorted(self.requests.items()):
            out.append(f'distillguard_requests_total{{endpoint="{endpoint}",status="{status}"}} {n}')
        out += [
            "# HELP distillguard_request_duration_seconds Time from request received to last byte sent.",
            "# TYPE distillguard_request_duration_seconds histogram",
        ]
        for endpoint, hist in sorted(self.latency.items()):
            cumulative = 0
            for bound, n in zip(LATENCY_BUCKETS, hist.counts, strict=False):
                cumulative += n
                out.append(f'distillguard_request_duration_seconds_bucket{{endpoint="{endpoint}",le="{bound}"}} {cumulative}')
            out.append(f'distillguard_request_duration_seconds_bucket{{endpoint="{endpoint}",le="+Inf"}} {hist.count}')
            out.append(f'distillguard_request_duration_seconds_sum{{endpoint="{endpoint}"}} {hist.sum:.6f}')
            out.append(f'distillguard_request_duration_seconds_count{{endpoint="{endpoint}"}} {hist.count}')
        out += [
            "# HELP distillguard_upstream_errors_total Upstream failures, by upstream and kind.",
            "# TYPE distillguard_upstream_errors_total counter",
        ]
        for (upstream, kind), n in sorted(self.upstream_errors.items()):
            out.append(f'distillguard_upstream_errors_total{{upstream="{upstream}",kind="{kind}"}} {n}')
        out += ["# HELP distillguard_policy_actions_total Policy decisions, by action.", "# TYPE distillguard_policy_actions_total counter"]
        for action, n in sorted(self.policy_actions.items()):
            out.append(f'distillguard_policy_actions_total{{action="{action}"}} {n}')
        out += ["# HELP distillguard_attestations_total Attestation results, by status.", "# TYPE distillguard_attestations_total counter"]
        for verdict, n in sorted(self.attestations.items()):
            out.append(f'distillguard_attestations_total{{status="{verdict}"}} {n}')
        out += ["# HELP distillguard_in_flight_requests Requests being served now.", "# TYPE distillguard_in_flight_requests gauge",
                f"distillguard_in_flight_requests {self.in_flight}"]
        for name, help_text, read in self.gauges:
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {read()}"]
        for name, help_text, label, read_values in self.labeled_gauges:
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
            out += [f'{name}{{{label}="{value}"}} {float(n)}' for value, n in sorted(read_values().items())]
        for name, help_text, label, read_counts in self.counters:
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
            out += [f'{name}{{{label}="{value}"}} {n}' for value, n in sorted(read_counts().items())]
        return ("\n".join(out) + "\n").encode()
