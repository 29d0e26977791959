"""Settings: a YAML file plus ``DG_*`` environment variables (DESIGN §3).

Precedence, highest first: explicit keyword arguments, ``DG_*`` environment
variables (nested with ``__``, e.g. ``DG_LIMITS__REQUESTS_PER_MIN=60``), the
YAML file named by ``--config`` or ``DG_CONFIG``, then the defaults below.
The keys ``listen``, ``database``, ``admin_token`` and ``upstreams`` are a
contract; each concern owns one nested section and may add keys to it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from distillguard.exceptions import ConfigError

__all__ = [
    "AttestationSettings",
    "DetectionSettings",
    "LimitSettings",
    "NetworkSettings",
    "PrivacySettings",
    "Settings",
    "UpstreamSettings",
    "WatermarkSettings",
    "load_settings",
]


class UpstreamSettings(BaseModel):
    """A model server the gateway forwards to."""

    name: str
    base_url: str = Field(description="where the model server listens, e.g. http://127.0.0.1:8701/v1")
    protocol: Literal["openai", "anthropic"] = "openai"
    api_key: str | None = None
    models: list[str] = Field(default_factory=lambda: ["*"])
    timeout_s: float = Field(default=120.0, gt=0, description="longest the upstream may stay silent (read timeout)")
    connect_timeout_s: float = Field(default=5.0, gt=0)
    watermark: Literal["none", "logit_bias"] = "none"
    tokenizer: str | None = Field(default=None, description="local tokenizer.json for black-box logit_bias watermarks")

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")


class LimitSettings(BaseModel):
    """Default limits; keys and accounts may override them. ``None`` means unlimited."""

    requests_per_min: int | None = 600
    tokens_per_min: int | None = 400_000
    concurrent_requests: int | None = 32
    daily_tokens: int | None = 20_000_000


class AttestationSettings(BaseModel):
    """Client attestation verification (docs/attestation.md)."""

    required_for_accounts: list[str] = Field(default_factory=list)
    require_all: bool = False
    clock_skew_s: float = 300.0
    nonce_ttl_s: float | None = Field(default=None, gt=0, description="how long signature nonces are remembered; "
                                      "unset: 3 × clock_skew_s, the shortest safe value (a smaller one is refused at start-up)")


class NetworkSettings(BaseModel):
    """Server-side network signals (docs/signals.md)."""

    trusted_proxies: list[str] = Field(default_factory=list, description="CIDRs whose X-Forwarded-For is believed")
    geoip_country_db: str | None = None
    geoip_asn_db: str | None = None
    hosting_asns: list[int] = Field(default_factory=list)
    allow_countries: list[str] = Field(default_factory=list)
    deny_countries: list[str] = Field(default_factory=list)
    region_source: Literal["ip", "timezone", "both"] = "ip"
    region_action: Literal["flag", "block"] = "block"


class PrivacySettings(BaseModel):
    """What the event log keeps (docs/signals.md)."""

    ip_mode: Literal["full", "truncate", "hash"] = "full"
    prompt_mode: Literal["keep", "hash", "drop"] = "keep"
    hash_key: str = "change-me-too"
    retention_days: int | None = 90


class DetectionSettings(BaseModel):
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


class WatermarkSettings(BaseModel):
    """Provenance watermarks (docs/watermark.md)."""

    master_secret: str = "change-me-watermark"
    enabled: bool = False
    delta: float = 2.0
    gamma: float = 0.25


class Settings(BaseSettings):
    """Everything distillguard reads from its configuration."""

    model_config = SettingsConfigDict(env_prefix="DG_", env_nested_delimiter="__", extra="forbid")

    listen: str = "127.0.0.1:8700"
    database: str = "sqlite:///distillguard.db"
    admin_token: str = "change-me"
    viewer_token: str | None = Field(default=None, description="read-only sign-in to the console (/admin/ui); unset: admin only")
    upstreams: list[UpstreamSettings] = Field(
        default_factory=lambda: [UpstreamSettings(name="local", base_url="http://127.0.0.1:8701/v1")]
    )
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    spill_dir: str = "./spill"
    log_level: str = "info"
    limits: LimitSettings = Field(default_factory=LimitSettings)
    attestation: AttestationSettings = Field(default_factory=AttestationSettings)
    network: NetworkSettings = Field(default_factory=NetworkSettings)
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    detection: DetectionSettings = Field(default_factory=DetectionSettings)
    watermark: WatermarkSettings = Field(default_factory=WatermarkSettings)

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

    @property
    def listen_host(self) -> str:
        return self.listen.rsplit(":", 1)[0] or "127.0.0.1"

    @property
    def listen_port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


def _format_validation_error(source: str, exc: ValidationError) -> str:
    first = exc.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or "(top level)"
    return f"{source}: {location}: {first['msg']} (got {first.get('input')!r})"


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Load settings from ``path`` (or ``$DG_CONFIG``), the environment and ``overrides``.

    Raises :class:`ConfigError` naming the file and the offending key.
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
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML ({exc})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: expected a mapping at the top level, got {type(loaded).__name__}")
        data = loaded
    data.update(overrides)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(source, exc)) from None
