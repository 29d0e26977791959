"""Settings: a YAML file plus ``DG_*`` environment variables (DESIGN §3).

Precedence, highest first: ``DG_*`` environment variables (nested with
``__``, e.g. ``DG_LIMITS__REQUESTS_PER_MIN=60``), the YAML file named by
``--config`` or ``DG_CONFIG`` (plus keyword overrides given to
:func:`load_settings`), then the defaults below. The keys ``listen``,
``database``, ``admin_token`` and ``upstreams`` are a contract; each concern
owns one nested section and may add keys to it.

Strict on purpose: an unknown key at any depth is an error naming its path
(with the closest known key as a hint), because a misspelt limit that is
silently ignored is a limit that silently does not exist. Strings in the YAML
file may take secrets from the environment (``${NAME}`` anywhere in a string,
or LiteLLM's ``os.environ/NAME`` as the whole value) so that credentials need
not be written into the file; a variable that is not set is an error.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from distillguard.exceptions import ConfigError

__all__ = [
    "AlertSettings",
    "AttestationSettings",
    "CanarySettings",
    "CanaryTrigger",
    "DetectionSettings",
    "EventWalSettings",
    "LimitSettings",
    "NetworkSettings",
    "PrivacySettings",
    "ServerSettings",
    "Settings",
    "UpstreamSettings",
    "WatermarkSettings",
    "WebhookSettings",
    "DEFAULT_ADMIN_TOKEN",
    "DEFAULT_WATERMARK_SECRET",
    "MAX_LIMIT",
    "load_settings",
    "new_database_notice",
    "parse_listen",
]

DEFAULT_ADMIN_TOKEN = "change-me"
DEFAULT_WATERMARK_SECRET = "change-me-watermark"
# The largest limit accepted (config, admin API, `accounts import`): 2**53, exact in every JSON reader and in Redis'
# Lua numbers. Larger values would be stored and then fail every later write of them (orjson and SQLite stop at
# 64 bits), so one such admin request once made `GET /admin/v1/accounts` a 500 for good; ``null`` is unlimited.
MAX_LIMIT = 2**53


class _Section(BaseModel):
    """A nested configuration section: unknown keys are errors (DESIGN §3), never silently ignored."""

    model_config = ConfigDict(extra="forbid")


def parse_listen(value: str, key: str = "listen") -> tuple[str, int]:
    """``HOST:PORT`` (or ``[IPv6]:PORT``) as ``(host, port)``; raises ``ValueError`` saying what is wrong.

    The port must be given and lie in 1–65535: ``localhost`` alone or
    ``127.0.0.1:80800`` are mistakes to report, not to guess at.
    """
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:8700, got {value!r} (no port)")
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            raise ValueError(f"expected [IPv6]:PORT such as [::1]:8700, got {value!r}")
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 address needs brackets, e.g. [::1]:8700; got {value!r}")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port must be a number from 1 to 65535, got {port_text!r} in {value!r}")
    return host, int(port_text)


class UpstreamSettings(_Section):
    """A model server the gateway forwards to."""

    name: str
    base_url: str = Field(description="where the model server listens, e.g. http://127.0.0.1:8701/v1")
    protocol: Literal["openai", "anthropic"] = "openai"
    api_key: str | None = None
    models: list[str] = Field(default_factory=lambda: ["*"])
    timeout_s: float = Field(default=120.0, gt=0, description="longest the upstream may stay silent (read timeout)")
    connect_timeout_s: float = Field(default=5.0, gt=0)
    idle_timeout_s: float = Field(default=4.0, gt=0, description="kept-alive connections idle longer are closed; keep it "
                                  "below the upstream's own keep-alive timeout (commonly 5 s)")
    max_connections: int = Field(default=256, ge=1, description="connections to this upstream's origin at most; "
                                 "further requests wait for one (up to timeout_s)")
    watermark: Literal["none", "logit_bias"] = "none"
    tokenizer: str | None = Field(default=None, description="local tokenizer.json for black-box logit_bias watermarks")

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @model_validator(mode="after")
    def _marking_needs_a_tokenizer(self) -> UpstreamSettings:
        # Without the upstream's tokenizer there is no green list: marking would silently not happen.
        if self.watermark == "logit_bias" and self.protocol == "openai" and not self.tokenizer:
            raise ValueError("watermark: logit_bias needs `tokenizer` (the upstream model's tokenizer.json) to draw its green list")
        return self


class LimitSettings(_Section):
    """Default limits; keys and accounts may override them. ``None`` means unlimited."""

    requests_per_min: int | None = Field(default=600, ge=0, le=MAX_LIMIT)
    tokens_per_min: int | None = Field(default=400_000, ge=0, le=MAX_LIMIT)
    concurrent_requests: int | None = Field(default=32, ge=0, le=MAX_LIMIT)
    daily_tokens: int | None = Field(default=20_000_000, ge=0, le=MAX_LIMIT)


class AttestationSettings(_Section):
    """Client attestation verification (docs/attestation.md)."""

    required_for_accounts: list[str] = Field(default_factory=list)
    require_all: bool = False
    clock_skew_s: float = 300.0
    nonce_ttl_s: float | None = Field(default=None, gt=0, description="how long signature nonces are remembered; "
                                      "unset: 3 × clock_skew_s, the shortest safe value (a smaller one is refused at start-up)")
    max_installs_per_key: int = Field(default=20, ge=1, description="installs one API key may enroll (a reseller's key "
                                      "is shared by many); past it enrollment answers 403 install_limit_reached")


class NetworkSettings(_Section):
    """Server-side network signals (docs/signals.md)."""

    trusted_proxies: list[str] = Field(default_factory=list, description="CIDRs whose X-Forwarded-For is believed")
    geoip_country_db: str | None = None
    geoip_asn_db: str | None = None
    hosting_asns: list[int] = Field(default_factory=list)
    allow_countries: list[str] = Field(default_factory=list)
    deny_countries: list[str] = Field(default_factory=list)
    region_source: Literal["ip", "timezone", "both"] = "ip"
    region_action: Literal["flag", "block"] = "block"


class EventWalSettings(_Section):
    """The event write-ahead log (docs/store.md, "Durability"): each event is appended to a local file before its
    response completes, so a killed process loses no acknowledged request's event."""

    enabled: bool = True
    dir: str | None = Field(default=None, description="where the segments go; default: the wal directory inside spill_dir "
                                                      "(each worker of serve --workers has its own)")
    segment_bytes: int = Field(default=8 * 1024 * 1024, ge=4096, description="a segment is rotated at this size and "
                               "deleted once all its events are stored or spilled")
    sync_interval_s: float | None = Field(default=None, gt=0, description="fdatasync the segment this often (the "
                                          "power-loss bound); unset: the kernel writes back (a kill loses nothing anyway)")


class PrivacySettings(_Section):
    """What the event log keeps (docs/signals.md)."""

    ip_mode: Literal["full", "truncate", "hash"] = "full"
    prompt_mode: Literal["keep", "hash", "drop"] = "keep"
    hash_key: str = "change-me-too"
    retention_days: int | None = 90


class DetectionSettings(_Section):
    """Online scoring and the thresholds the policy acts on."""

    online: bool = True
    flag_threshold: float = 0.5
    throttle_threshold: float = 0.8
    block_threshold: float = 0.95
    throttle_requests_per_min: int = 10
    block_enabled: bool = False
    degrade_reasoning: Literal["strip", "summarize"] = Field(
        default="strip", description="what a degraded answer's reasoning becomes: removed (strip) or replaced by a short "
                                     "extractive summary (summarize); docs/policy.md")
    replay_max_events: int = Field(default=100_000, ge=0, description="on start the online scorer first replays at most this many "
                                   "of the store's most recent events (0: none); docs/policy.md")
    replay_max_age_h: float = Field(default=24.0, gt=0, description="... and only events younger than this many hours")
    snapshot_every_s: float = Field(default=1.0, gt=0, description="how often each gateway merges its flagged accounts and clusters "
                                    "into the store's risk snapshot and reads the others' (docs/policy.md)")
    scorer: Literal["local", "central"] = Field(
        default="local", description="local: each gateway process scores its own traffic in a child process; central (needs "
                                     "state: redis://…): every replica streams its events to one `distillguard scorer` (docs/deploy.md)")
    scorer_backlog_max: int = Field(default=50_000, ge=1, description="events waiting for the scorer at most (the child's queue, or "
                                    "the fleet's Redis stream); past it new events are shed from scoring, counted and logged "
                                    "(they are still in the event log)")
    indicator_action: Literal["evidence", "flag", "throttle", "block"] = Field(
        default="flag", description="what an account matching imported shared indicators gets by itself (its shared_indicators "
                                    "evidence at or above indicator_min_score): evidence (only its weight in the score), flag "
                                    "(flagged and a review item), throttle or block; the risk-based action wins when it is "
                                    "stronger (docs/policy.md, docs/indicators.md)")
    indicator_min_score: float = Field(default=0.5, ge=0.0, le=1.0, description="the shared_indicators evidence score at which "
                                       "indicator_action applies (0.5: about a fifth of the account's requests match, "
                                       "with several matching requests; docs/detection.md)")


class ServerSettings(_Section):
    """The HTTP server's edge: deadlines and connection caps (docs/gateway.md, "HTTP server")."""

    keepalive_timeout_s: float = Field(default=5.0, gt=0, description="an idle keep-alive connection is closed after this")
    head_timeout_s: float = Field(default=10.0, gt=0, description="total time for a request head, from its first byte (408 after)")
    body_timeout_s: float = Field(default=30.0, gt=0, description="total time for a request body, from the end of its head (408 after)")
    send_timeout_s: float = Field(default=60.0, gt=0, description="a client that reads none of its answer for this long is disconnected")
    max_connections: int = Field(default=10_000, ge=1, description="open client connections in total (lowered to fit the open-file limit)")
    max_connections_per_ip: int = Field(default=256, ge=1, description="open connections per client IP "
                                        "(peers in network.trusted_proxies are exempt)")
    graceful_timeout_s: float = Field(default=30.0, ge=0, description="on SIGTERM, how long requests in flight may finish")


AlertAction = Literal["flag", "throttle", "degrade", "challenge", "block"]
DEFAULT_ALERT_ACTIONS: tuple[AlertAction, ...] = ("throttle", "degrade", "block")


class WebhookSettings(_Section):
    """One alert receiver (docs/console.md, "Alerts")."""

    url: str
    format: Literal["json", "slack"] = "json"
    secret: str | None = Field(default=None, description="HMAC-SHA256 key for the X-Distillguard-Signature header")


class AlertSettings(_Section):
    """Webhooks when an account or cluster reaches a risk level or the policy acts."""

    webhooks: list[WebhookSettings] = Field(default_factory=list)
    min_risk: Literal["medium", "high"] = "high"
    policy_actions: list[AlertAction] = Field(default_factory=lambda: list(DEFAULT_ALERT_ACTIONS))
    dedupe_s: float = Field(default=3600.0, ge=0, description="the same alert is sent at most once in this many seconds")
    max_attempts: int = Field(default=6, ge=1)
    backoff_s: float = Field(default=1.0, gt=0, description="first retry delay; doubles per attempt (at most 300 s)")
    timeout_s: float = Field(default=10.0, gt=0)


class WatermarkSettings(_Section):
    """Provenance watermarks (docs/watermark.md)."""

    master_secret: str = DEFAULT_WATERMARK_SECRET
    enabled: bool = False
    delta: float = 2.0
    gamma: float = 0.25


class CanaryTrigger(_Section):
    """One configured trigger prompt and the sentence that carries its canary (docs/watermark.md, "Canaries")."""

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    match: str = Field(min_length=3, description="planted when the last user message contains this (case-insensitive)")
    question: str | None = Field(default=None, description="what `canary probe` asks a suspect model (default: match)")
    template: str = Field(default="Catalogue reference: {canary}.", description="appended to the answer; must contain {canary} once")

    @field_validator("template")
    @classmethod
    def _one_placeholder(cls, value: str) -> str:
        if value.count("{canary}") != 1 or value.replace("{canary}", "").count("{") or value.replace("{canary}", "").count("}"):
            raise ValueError("must contain {canary} exactly once and no other braces, e.g. \"Catalogue reference: {canary}.\"")
        return value


DEFAULT_CANARY_SECRET = "change-me-canary"


class CanarySettings(_Section):
    """Keyed canaries planted in answers to trigger prompts, and probed for in suspect models (docs/watermark.md)."""

    enabled: bool = False
    secret: str = DEFAULT_CANARY_SECRET
    key_id: str = Field(default="canary-1", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    triggers: list[CanaryTrigger] = Field(default_factory=list)
    only_flagged: bool = Field(default=False, description="plant only in answers to accounts the policy did not simply allow "
                                                           "(flag, throttle, degrade …); benign callers never see a canary")

    @model_validator(mode="after")
    def _usable(self) -> CanarySettings:
        ids = [t.id for t in self.triggers]
        if len(set(ids)) != len(ids):
            raise ValueError(f"triggers: ids must be unique, got {ids}")
        if self.enabled and not self.triggers:
            raise ValueError("enabled: true needs at least one entry in triggers")
        if self.enabled and self.secret == DEFAULT_CANARY_SECRET:
            raise ValueError("enabled: true needs a secret of your own (anyone who knows the default can forge or avoid the canaries)")
        return self


class Settings(BaseSettings):
    """Everything distillguard reads from its configuration."""

    model_config = SettingsConfigDict(env_prefix="DG_", env_nested_delimiter="__", extra="forbid")

    listen: str = "127.0.0.1:8700"
    admin_listen: str | None = Field(default=None, description="HOST:PORT serving only the admin API (/admin/); "
                                     "when set, the main listener answers /admin/ with 404")
    database: str = "sqlite:///distillguard.db"
    database_timeout_s: float = Field(default=5.0, gt=0, le=300, description="longest any one store call may take; "
                                      "past it the call fails and events spill (docs/store.md)")
    admin_token: str = DEFAULT_ADMIN_TOKEN
    viewer_token: str | None = Field(default=None, description="read-only sign-in to the console (/admin/ui); unset: admin only")
    upstreams: list[UpstreamSettings] = Field(
        default_factory=lambda: [UpstreamSettings(name="local", base_url="http://127.0.0.1:8701/v1")]
    )
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    spill_dir: str = "./spill"
    event_wal: EventWalSettings = Field(default_factory=EventWalSettings)
    log_level: str = "info"
    log_format: Literal["text", "json"] = Field(default="text", description="text lines, or one JSON object per line")
    limits: LimitSettings = Field(default_factory=LimitSettings)
    attestation: AttestationSettings = Field(default_factory=AttestationSettings)
    network: NetworkSettings = Field(default_factory=NetworkSettings)
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    detection: DetectionSettings = Field(default_factory=DetectionSettings)
    watermark: WatermarkSettings = Field(default_factory=WatermarkSettings)
    canary: CanarySettings = Field(default_factory=CanarySettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    state: str = Field(default="memory", description="where limits and attestation nonces live: memory (this process) or "
                                                     "redis://host:port/db (shared by every replica; docs/deploy.md)")
    state_failure: Literal["fail_open", "fail_closed"] = Field(
        default="fail_open", description="when Redis fails: serve with this replica's own limits, or refuse with 503")
    state_timeout_s: float = Field(default=0.25, gt=0, description="longest a Redis call may take before state_failure applies")
    state_headroom_ms: int = Field(default=500, ge=0, le=5000, description=(
        "with Redis: how long a replica may admit from a slice of headroom reserved far below every limit, without a "
        "round trip per request (0: every request asks Redis; docs/deploy.md)"))

    @field_validator("state")
    @classmethod
    def _state_url(cls, value: str) -> str:
        if value != "memory" and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("expected memory or a Redis URL (redis://host:port/db, rediss://…, unix:///path.sock)")
        return value

    @model_validator(mode="after")
    def _central_scorer_needs_redis(self) -> Settings:
        if self.detection.scorer == "central" and self.state == "memory":
            raise ValueError("detection.scorer: central needs state: redis://host:port/db (the replicas hand their events to the "
                             "scorer through Redis); with state: memory use detection.scorer: local")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the YAML file, which arrives through init kwargs at lower priority.
        return (env_settings, init_settings)

    @field_validator("listen", "admin_listen")
    @classmethod
    def _check_listen(cls, value: str | None) -> str | None:
        if value is not None:
            parse_listen(value)
        return value

    @property
    def listen_host(self) -> str:
        return parse_listen(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return parse_listen(self.listen)[1]


_ENV_REF = re.compile(r"\$(\$?)\{([A-Za-z_][A-Za-z0-9_]*)\}")
_LITELLM_REF = "os.environ/"


def _resolve_references(value: Any, where: str, source: str) -> Any:
    """Replace ``${NAME}`` (anywhere in a string) and ``os.environ/NAME`` (a whole string) with the variable's value.

    ``$${NAME}`` stays a literal ``${NAME}``. A variable that is not set is a
    :class:`ConfigError` naming the key and the variable: starting with an
    empty credential would fail later and further from the cause.
    """
    if isinstance(value, dict):
        return {k: _resolve_references(v, f"{where}.{k}" if where else str(k), source) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_references(v, f"{where}.{i}", source) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value
    if value.startswith(_LITELLM_REF):
        name = value[len(_LITELLM_REF):]
        if name not in os.environ:
            raise ConfigError(f"{source}: {where}: environment variable {name} is not set (referenced as {value!r})")
        return os.environ[name]

    def substitute(match: re.Match[str]) -> str:
        if match.group(1):  # $${NAME}: an escaped, literal ${NAME}
            return "${" + match.group(2) + "}"
        name = match.group(2)
        if name not in os.environ:
            raise ConfigError(f"{source}: {where}: environment variable {name} is not set (referenced as ${{{name}}})")
        return os.environ[name]

    return _ENV_REF.sub(substitute, value)


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed at ``loc`` (the parent of an unknown key), for a "did you mean" hint."""
    model: Any = Settings
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return []
        annotation = field.annotation
        for arg in (annotation, *getattr(annotation, "__args__", ())):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                model = arg
                break
        else:
            return []
    return list(model.model_fields)


def _env_variable(loc: tuple[Any, ...]) -> str | None:
    """The ``DG_*`` variable a value at ``loc`` came from, if one is set (``DG_LIMITS__X`` or a JSON ``DG_LIMITS``)."""
    names = {name.upper() for name in os.environ}
    parts = [str(p).upper() for p in loc]
    for depth in range(len(parts), 0, -1):
        candidate = "DG_" + "__".join(parts[:depth])
        if candidate in names:
            return candidate
    return None


def _describe(error: Any, file_source: str) -> str:
    loc = tuple(error["loc"])
    location = ".".join(str(part) for part in loc) or "(top level)"
    variable = _env_variable(loc)
    source = f"environment variable {variable}" if variable else file_source
    if error["type"] == "extra_forbidden":
        hint = difflib.get_close_matches(str(loc[-1]), _known_keys(loc[:-1]), n=1)
        suggestion = f" (did you mean {hint[0]}?)" if hint else ""
        return f"{source}: {location}: unknown key{suggestion}"
    if error["type"] == "value_error":  # our own validators' messages already quote the input
        return f"{source}: {location}: {str(error['msg']).removeprefix('Value error, ')}"
    return f"{source}: {location}: {error['msg']} (got {error.get('input')!r})"


def _format_validation_error(source: str, exc: ValidationError) -> str:
    return "; ".join(_describe(error, source) for error in exc.errors())


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Load settings from ``path`` (or ``$DG_CONFIG``), the environment and ``overrides``.

    Raises :class:`ConfigError` naming the file (or the ``DG_*`` variable) and
    the offending key path.
    """
    path = path or os.environ.get("DG_CONFIG")
    data: dict[str, Any] = {}
    source = "defaults"
    if path:
        source = str(path)
        file = Path(path)
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{source}: config file not found") from None
        except IsADirectoryError:
            raise ConfigError(f"{source}: is a directory, expected a YAML file") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{source}: not UTF-8 text (byte {exc.start})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML ({exc})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: expected a mapping at the top level, got {type(loaded).__name__}")
        data = _resolve_references(loaded, "", source)
    data.update(overrides)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(source, exc)) from None
    except SettingsError as exc:  # a DG_* value that is not valid JSON for a list or a section
        field = re.search(r'field "(\w+)"', str(exc))
        prefix = "DG_" + (field.group(1).upper() if field else "")
        variables = sorted(n for n in os.environ if n.upper() == prefix or n.upper().startswith(prefix + "__")) or [prefix]
        raise ConfigError(f"environment variable {' or '.join(variables)}: not valid JSON; lists and sections are given "
                          "as JSON, e.g. DG_NETWORK__TRUSTED_PROXIES='[\"10.0.0.0/8\"]'") from None


def new_database_notice(settings: Settings, config_path: str | os.PathLike[str] | None) -> str | None:
    """A sentence for stderr when opening ``settings.database`` would create a new SQLite file, else ``None``.

    A command run without the intended ``--config`` (or from another
    directory) would otherwise create an empty ``./distillguard.db`` and
    report no accounts, no keys, no events, as if that were the truth.
    """
    from sqlalchemy.engine import make_url

    try:
        url = make_url(settings.database)
    except Exception:
        return None  # make_engine reports a malformed URL with its own message
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    file = Path(url.database).resolve()
    if file.exists():
        return None
    config = f"configuration {config_path}" if config_path else "no configuration file (--config or DG_CONFIG): defaults"
    return f"{config}; database {settings.database} does not exist yet and will be created as {file}"
