"""Watermark keys: one master secret, many derived keys, each with a public id.

``global`` marks every response ("was this model trained on our outputs?");
``org:<id>`` and ``cluster:<id>`` mark an organisation's or a detected hydra
cluster's responses, so a positive test also says *whose* outputs leaked.
Per-account keys are deliberately absent: against a hydra of 20,000 accounts
each account key would mark too little text to test, and testing 20,000 keys
would spend the whole significance budget on the multiple-testing correction.
A cluster key pools the whole hydra's traffic under one key.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["derive_key", "key_for", "valid_key_id"]


def derive_key(master_secret: str, key_id: str) -> bytes:
    """HMAC-SHA256(master, "distillguard-watermark:" + key_id): keys never stored, always re-derived."""
    return hmac.new(master_secret.encode(), b"distillguard-watermark:" + key_id.encode(), hashlib.sha256).digest()


def key_for(*, org_id: str | None = None, cluster_id: str | None = None) -> str:
    """The most specific key id that applies: cluster, then org, then global."""
    if cluster_id:
        return f"cluster:{cluster_id}"
    if org_id:
        return f"org:{org_id}"
    return "global"


def valid_key_id(key_id: str) -> bool:
    return key_id == "global" or (key_id.startswith(("org:", "cluster:")) and len(key_id.split(":", 1)[1]) > 0)
