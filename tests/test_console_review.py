"""One review item per hydra even when its heads were flagged one by one before the cluster was found."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distillguard.config import Settings
from distillguard.policy import PolicyEngine
from distillguard.store import Registry


def _entry(account: str, score: float, cluster: str | None = None) -> dict[str, Any]:
    return {"account_id": account, "distillation_score": score, "reseller_score": 0.0, "risk": "medium", "cluster_id": cluster,
            "evidence": [{"detector": "cot_elicitation", "score": score, "detail": "5 of 5 prompts ask for reasoning"}]}


def test_member_items_are_merged_into_the_cluster_item(tmp_path: Path) -> None:
    registry = Registry(f"sqlite:///{tmp_path / 'dg.db'}")
    engine = PolicyEngine(Settings(), registry=registry)
    heads = [f"acct_h{i}" for i in range(4)]
    engine._on_report({"accounts": [_entry(a, 0.7) for a in heads[:2]] + [_entry("acct_solo", 0.7)], "clusters": []})
    engine._flush_audit()
    assert sorted(r["subject"] for r in registry.list_reviews("open")) == ["acct_h0", "acct_h1", "acct_solo"]
    cluster = {"cluster_id": "cl_1", "accounts": heads, "score": 0.9, "shared": ["system prompt"]}
    engine._on_report({"accounts": [_entry(a, 0.75, "cl_1") for a in heads] + [_entry("acct_solo", 0.7)], "clusters": [cluster]})
    engine._flush_audit()
    open_items = registry.list_reviews("open")
    assert sorted(r["subject"] for r in open_items) == ["acct_solo", "cl_1"]
    cluster_item = next(r for r in open_items if r["subject"] == "cl_1")
    merged = registry.list_reviews("merged")
    assert sorted(r["subject"] for r in merged) == ["acct_h0", "acct_h1"]
    assert all(r["note"] == f"merged into {cluster_item['review_id']} (cluster cl_1)" for r in merged)
