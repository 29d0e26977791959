"""The install's identity and the signals the SDK discloses, all inspectable by the user.

An install is a random id plus an Ed25519 key pair, created once and kept in
the user's config directory (``$DG_CLIENT_DIR``, else ``$XDG_CONFIG_HOME/distillguard``
or ``~/.config/distillguard``), readable only by the user. Signal collection
never raises: a signal that cannot be read is reported as ``None``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import locale
import os
import platform
import secrets
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["Identity", "collect_signals", "config_dir"]

SDK_NAME = "distillguard-python/0.1.0"


def config_dir() -> Path:
    if os.environ.get("DG_CLIENT_DIR"):
        return Path(os.environ["DG_CLIENT_DIR"])
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "distillguard"


@dataclass
class Identity:
    install_id: str
    private_key: Ed25519PrivateKey
    directory: Path

    @property
    def public_key_b64(self) -> str:
        raw = self.private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    @classmethod
    def load_or_create(cls, directory: Path | None = None) -> Identity:
        directory = directory or config_dir()
        path = directory / "install.json"
        if path.exists():
            data = json.loads(path.read_text())
            key = serialization.load_pem_private_key(data["private_key"].encode(), password=None)
            assert isinstance(key, Ed25519PrivateKey)
            return cls(data["install_id"], key, directory)
        directory.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
        install_id = "inst_" + secrets.token_hex(12)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"install_id": install_id, "private_key": pem, "created": int(time.time())}, handle)
        tmp.replace(path)
        return cls(install_id, key, directory)

    def enrolled_for(self, base_url: str) -> bool:
        path = self.directory / "enrolled.json"
        try:
            return base_url in json.loads(path.read_text())
        except (OSError, ValueError):
            return False

    def mark_enrolled(self, base_url: str) -> None:
        path = self.directory / "enrolled.json"
        try:
            known = json.loads(path.read_text())
        except (OSError, ValueError):
            known = []
        if base_url not in known:
            known.append(base_url)
            path.write_text(json.dumps(known))


def _safe(read: Any) -> Any:
    try:
        return read()
    except Exception:
        return None


def _timezone() -> str | None:
    tz = os.environ.get("TZ")
    if tz and "/" in tz:
        return tz.lstrip(":")
    link = _safe(lambda: os.readlink("/etc/localtime"))
    if link and "zoneinfo/" in link:
        return str(link.split("zoneinfo/", 1)[1])
    name = _safe(lambda: Path("/etc/timezone").read_text().strip())
    return name or None


def _proxy() -> tuple[bool | None, str | None]:
    found = _safe(urllib.request.getproxies) or {}
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        if os.environ.get(name):
            found.setdefault(name.lower().replace("_proxy", ""), os.environ[name])
    host = next((v for k, v in found.items() if k in ("https", "http", "all") and v), None)
    return bool(host), host


def collect_signals(identity: Identity, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Exactly what the SDK sends in the ``DG-Client-Signals`` header (docs/signals.md)."""
    proxy, proxy_host = _proxy()
    offset = _safe(lambda: time.localtime().tm_gmtoff // 60)
    signals = {
        "v": 1,
        "install_id": identity.install_id,
        "tz": _timezone(),
        "utc_offset_min": offset,
        "locale": _safe(lambda: locale.getlocale()[0]) or os.environ.get("LANG", "").split(".")[0] or None,
        "proxy": proxy,
        "proxy_host_hash": (hmac.new(identity.install_id.encode(), proxy_host.encode(), hashlib.sha256).hexdigest()[:16]
                            if proxy_host else None),
        "os": _safe(lambda: platform.system().lower()) or None,
        "arch": _safe(platform.machine) or None,
        "sdk": SDK_NAME,
    }
    signals.update(overrides or {})
    signals["install_id"] = identity.install_id
    return signals
