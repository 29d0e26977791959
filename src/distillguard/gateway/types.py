"""The gateway's vocabulary: the ASGI types, and one ``Protocol`` per collaborator it is handed.

The hot path is the gateway's "transport layer" (STYLE.md): it must not know
how keys are stored, how signals are collected, how the policy decides or how
events are written, only what it may ask of each. Every such seam is stated
here once, as a structural type, so that

- a reader sees each contract in one place (what ``Gateway`` calls, and nothing
  more), and ``Gateway.__init__`` needs no ``Any`` and no ``hasattr`` probes;
- tests and benchmarks can hand the gateway in-process fakes without patching:
  a fake that subclasses a protocol here explicitly inherits its no-op
  defaults for the optional capabilities (``start``, ``close``, ``stats`` …);
- the real implementations (store/registry.py, signals/collector.py,
  policy/engine.py, watermark/gateway.py, store/sink.py, state/) are checked
  against these by mypy (``_conformance`` at the end of this module), without
  importing any of them at run time.

The shared limits state has had its seam since the fleet work:
:class:`distillguard.state.StateBackend`, re-exported here as ``SharedState``.
This module imports nothing beyond the standard library and ``state.types``
at run time, so any module may import it without a cycle.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, MutableMapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from distillguard.state.types import StateBackend as SharedState

if TYPE_CHECKING:
    from distillguard.canary.stream import AnswerShape
    from distillguard.gateway.upstream_http import Origin
    from distillguard.store.registry import KeyDelta, KeyRecord, NewAccount

__all__ = [
    "ASGIApp",
    "AdminPluginProtocol",
    "CanaryPlanterProtocol",
    "ClientSignals",
    "EventSinkProtocol",
    "KeyRegistryProtocol",
    "Message",
    "PolicyDecision",
    "PolicyEngineProtocol",
    "Receive",
    "Scope",
    "Send",
    "SharedState",
    "SignalCollectorProtocol",
    "StreamCanaryProtocol",
    "UpstreamResponseProtocol",
    "UpstreamTransportProtocol",
    "WatermarkerProtocol",
]

# -- ASGI (https://asgi.readthedocs.io/en/latest/specs/www.html) -----------------------------------------
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# -- what a request carries through the seams --------------------------------------------------------------
class ClientSignals(Protocol):
    """What :meth:`SignalCollectorProtocol.collect` found out about one request (signals.collector.SignalResult)."""

    @property
    def client(self) -> dict[str, Any]:
        """The event's ``client`` object (address already protected per ``privacy.ip_mode``)."""

    @property
    def attestation(self) -> dict[str, Any] | None:
        """The event's ``attestation`` object (``status``: valid, invalid, replayed …), ``None`` without one."""

    @property
    def region_denied(self) -> str | None:
        """Why the request's region is refused (a 403 ``region_not_supported``), or ``None``."""

    @property
    def signals(self) -> list[dict[str, Any]]:
        """Consistency signals for the event (``name`` and ``evidence``); empty when there are none."""

    @property
    def nonce(self) -> str | None:
        """With a shared nonce cache: the valid attestation's nonce, recorded in the request's admission."""


class PolicyDecision(Protocol):
    """One request's decision (policy.decision.Decision): what the gateway does with it and records."""

    @property
    def action(self) -> str:
        """``allow``, ``flag``, ``throttle``, ``degrade``, ``challenge`` or ``block``."""

    @property
    def rule(self) -> str | None: ...

    @property
    def message(self) -> str | None:
        """The refusal message for ``block`` / ``challenge`` (``None``: the gateway's default)."""

    @property
    def reasoning(self) -> str:
        """``keep``, ``strip`` or ``summarize``: what happens to the answer's reasoning."""

    @property
    def max_top_logprobs(self) -> int | None: ...

    @property
    def throttle_rpm(self) -> int | None:
        """A throttle's requests per minute (``None``: ``detection.throttle_requests_per_min``)."""

    def as_event(self) -> dict[str, Any]:
        """The event's ``policy`` object."""


# -- the collaborators -------------------------------------------------------------------------------------
class KeyRegistryProtocol(Protocol):
    """The key and account registry (store.registry.Registry): the gateway's key table and the admin API read it.

    Every method is synchronous database work: callers run it in a thread,
    never on the event loop of a proxied request.
    """

    def change_counter(self) -> int:
        """A number that changes whenever keys, accounts or limits change (the key table's reload trigger)."""

    def key_snapshot(self) -> list[KeyRecord]:
        """Every key the gateway should know, with its account's status and limits."""

    def key_changes_since(self, counter: int) -> KeyDelta | None:
        """The keys changed after ``counter``, as they are now (``None``: too far behind, call :meth:`key_snapshot`)."""

    def create_accounts(self, items: Sequence[NewAccount], *, actor: str = "cli") -> list[dict[str, Any]]:
        """Many accounts (and keys) in one transaction (the bulk endpoint)."""

    def list_accounts(self) -> list[dict[str, Any]]: ...

    def get_account(self, account_id: str) -> dict[str, Any] | None: ...

    def create_account(self, name: str, org: str | None = None, limits: dict[str, Any] | None = None, *,
                       actor: str = "cli") -> dict[str, Any]: ...

    def set_account_limits(self, account_id: str, limits: dict[str, Any], *, actor: str = "cli") -> None: ...

    def set_account_status(self, account_id: str, status: str, *, actor: str = "cli", reason: str | None = None) -> None: ...

    def create_key(self, account_id: str, limits: dict[str, Any] | None = None, *, actor: str = "cli") -> dict[str, Any]: ...

    def revoke_key(self, key_id: str, *, actor: str = "cli") -> dict[str, Any]: ...

    def list_keys(self, account_id: str | None = None) -> list[dict[str, Any]]: ...


class SignalCollectorProtocol(Protocol):
    """Client and network signals (signals.collector.SignalCollector), collected once per model request."""

    @property
    def nonce_ttl_ms(self) -> int:
        """How long a shared nonce cache must remember an attestation's nonce."""

    def collect(self, method: str, path_qs: str, headers: list[tuple[bytes, bytes]], peer_ip: str | None, body: bytes,
                *, key_id: str | None = None, account_id: str | None = None) -> ClientSignals:
        """Verify the attestation, look up the address, derive the consistency signals: in memory, no I/O."""

    def mark_replayed(self, result: Any) -> None:
        """The shared nonce cache saw ``result``'s attestation before: record it as ``replayed``.

        ``result`` is what this collector's own :meth:`collect` returned (typed
        ``Any`` here because each collector knows its own result type).
        """

    def enroll(self, key_id: str, account_id: str, body: bytes, *, api_key_sha256: str) -> dict[str, Any]:
        """``POST /v1/distillguard/enroll``; raises :class:`distillguard.exceptions.EnrollmentError` with the HTTP status."""


class PolicyEngineProtocol(Protocol):
    """The policy engine (policy.engine.PolicyEngine): one decision per request, every event observed.

    ``decide`` and ``observe`` are on the hot path and must only read memory.
    An engine without background work inherits no-op ``start``/``close``/
    ``reload_overrides`` by subclassing this protocol.
    """

    @property
    def online(self) -> bool:
        """Whether online detection (the scorer process) is on; the admin status reports it."""
        return False

    def decide(self, account_id: str, key_id: str | None, signals: Any = None) -> PolicyDecision:
        """The decision for this request; ``signals`` is what the signal collector returned, or ``None``."""

    def observe(self, event: dict[str, Any]) -> None:
        """Every event the gateway emits, in order (the online scorer's input)."""

    def risk(self, account_id: str) -> dict[str, Any] | None:
        """The account's latest risk entry (``cluster_id`` picks a hydra's watermark key), or ``None``."""

    def decisions(self) -> Mapping[str, PolicyDecision]:
        """Accounts whose requests are not simply allowed now, for the admin API."""
        return {}

    def scorer_status(self) -> dict[str, Any] | None:
        """The online scorer's state for ``/readyz``, or ``None`` when this engine has no scorer."""
        return None

    def reload_overrides(self) -> None:
        """Re-read manual overrides after the registry changed (called with every key-table reload)."""

    def start(self) -> None:
        """Start background work (the scorer process, the decision publisher)."""

    def close(self) -> None:
        """Stop background work; called once, in a thread, at shutdown."""


class WatermarkerProtocol(Protocol):
    """The output watermark (watermark.gateway.GatewayWatermarker): a ``logit_bias`` per upstream and subject."""

    def bias_for(self, upstream_name: str, *, account_id: str | None = None, org_id: str | None = None,
                 cluster_id: str | None = None) -> tuple[str, dict[int, float]] | None:
        """``(watermark key id, token id → bias)``, or ``None`` when this upstream is not marked."""


class StreamCanaryProtocol(Protocol):
    """A filter on a relayed stream that plants a canary where the answer ends (canary.stream.StreamCanary)."""

    planted: bool
    info: dict[str, str]  # the event's ``canary`` object, once planted

    def feed(self, data: bytes) -> bytes:
        """The bytes to send on for ``data`` (whole SSE events; a partial one is held until it is whole)."""

    def flush(self) -> bytes:
        """What is left at the end of the stream."""


class CanaryPlanterProtocol(Protocol):
    """Keyed canaries (canary.planter.CanaryPlanter): appended to answers to configured trigger prompts."""

    def plant(self, endpoint: str, payload: dict[str, Any] | None, answer: dict[str, Any], *,
              shape: AnswerShape, action: str = "allow") -> dict[str, str] | None:
        """Plant into ``answer`` in place when the request is a trigger; ``{"key_id", "trigger"}`` if planted."""

    def for_stream(self, endpoint: str, payload: dict[str, Any] | None, text_parts: list[str], *,
                   shape: AnswerShape, action: str = "allow") -> StreamCanaryProtocol | None:
        """A filter planting into the stream when the request is a trigger (it appends to ``text_parts`` too), else None."""


class AdminPluginProtocol(Protocol):
    """A component that owns admin endpoints (policy, watermark); offered each admin request the core did not take."""

    async def handle_admin(self, method: str, path: str, query: dict[str, str], body: bytes) -> tuple[int, object] | None:
        """``(status, JSON-able object)``, or ``None`` when the path is not this plugin's."""


class EventSinkProtocol(Protocol):
    """Where every event goes (store.sink.EventSink): ``submit`` never blocks and never drops.

    ``stats`` is ``None`` for a sink that keeps none (then ``/readyz`` cannot
    report on the store, and ``/metrics`` has no event gauges).
    """

    def submit(self, event: dict[str, Any]) -> None:
        """Queue one event; returns at once."""

    @property
    def durable_on_submit(self) -> bool:
        """Whether ``submit`` puts the event where a killed process keeps it (a write-ahead log): then the gateway
        submits a request's event before the response's last bytes, otherwise just after them (off its latency)."""
        return False

    @property
    def stats(self) -> Mapping[str, Any] | None:
        """Counters (``queued``, ``written``, ``spilled`` …) and ``store_ok`` / ``store_problem``."""
        return None

    def start(self) -> None:
        """Start writing (the writer thread)."""

    def close(self) -> None:
        """Write everything queued, then stop; called once, in a thread, at shutdown."""


class UpstreamResponseProtocol(Protocol):
    """One upstream response (gateway.upstream_http.UpstreamResponse): status and headers, then the body."""

    status: int
    headers: dict[str, str]

    @property
    def at_eof(self) -> bool:
        """The body is complete and every piece of it has been handed out."""

    async def read(self) -> bytes: ...

    async def next_chunk(self) -> bytes | None:
        """The next piece of the body as it arrives; ``None`` at its end."""

    async def __aenter__(self) -> UpstreamResponseProtocol: ...

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None: ...


class UpstreamTransportProtocol(Protocol):
    """How the gateway talks to model servers (gateway.upstream_http.UpstreamClient), as httpx's ``BaseTransport``.

    Plain primitives in (origin, method, path, header lines, body), a streamed
    response out; errors are :class:`distillguard.gateway.upstream_http.UpstreamError`
    subclasses or ``TimeoutError``.
    """

    async def request(self, origin: Origin, method: bytes, path: bytes, headers: bytes, body: bytes, *,
                      connect_timeout: float | None, read_timeout: float | None) -> UpstreamResponseProtocol:
        """Send one request; returns once the status and headers arrived."""

    async def close(self) -> None:
        """Close every connection."""


if TYPE_CHECKING:  # mypy checks that each real implementation satisfies its seam; nothing runs

    def _conformance(
        registry: distillguard.store.registry.Registry,
        collector: distillguard.signals.collector.SignalCollector,
        signal_result: distillguard.signals.collector.SignalResult,
        engine: distillguard.policy.engine.PolicyEngine,
        decision: distillguard.policy.decision.Decision,
        watermarker: distillguard.watermark.gateway.GatewayWatermarker,
        planter: distillguard.canary.planter.CanaryPlanter,
        sink: distillguard.store.sink.EventSink,
        client: distillguard.gateway.upstream_http.UpstreamClient,
        response: distillguard.gateway.upstream_http.UpstreamResponse,
        memory: distillguard.state.memory.MemoryState,
        resilient: distillguard.state.resilient.ResilientState,
    ) -> None:
        _registry: KeyRegistryProtocol = registry
        _collector: SignalCollectorProtocol = collector
        _signals: ClientSignals = signal_result
        _engine: PolicyEngineProtocol = engine
        _decision: PolicyDecision = decision
        _watermarker: WatermarkerProtocol = watermarker
        _planter: CanaryPlanterProtocol = planter
        _plugins: Sequence[AdminPluginProtocol] = (watermarker, engine)
        _sink: EventSinkProtocol = sink
        _client: UpstreamTransportProtocol = client
        _response: UpstreamResponseProtocol = response
        _states: Collection[SharedState] = (memory, resilient)

    import distillguard.canary.planter
    import distillguard.gateway.upstream_http
    import distillguard.policy.decision
    import distillguard.policy.engine
    import distillguard.signals.collector
    import distillguard.state.memory
    import distillguard.state.resilient
    import distillguard.store.registry
    import distillguard.store.sink
    import distillguard.watermark.gateway
