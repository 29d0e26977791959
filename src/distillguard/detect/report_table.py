"""A scan report (DESIGN §5) as a ranked, human-readable table for a terminal.

`scan` on a terminal prints this instead of 36 KB of JSON: the accounts worth a
look first (high, then medium risk, by score), each with its strongest piece of
evidence in plain words, then the clusters and what their members share. The
JSON report stays the machine interface (``--out`` or ``--format json``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["account_score", "format_report_table"]

RISK_ORDER = {"high": 0, "medium": 1, "low": 2}


def account_score(entry: Mapping[str, Any]) -> float:
    """The score the risk band comes from: the larger of the distillation and reseller scores."""
    return max(float(entry.get("distillation_score") or 0.0), float(entry.get("reseller_score") or 0.0))


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: max(1, width - 1)] + "…"


def format_report_table(
    report: Mapping[str, Any],
    *,
    names: Mapping[str, str] | None = None,
    width: int = 120,
    max_rows: int = 25,
) -> str:
    """The report as text: a header line, ranked accounts, clusters, and what was left out.

    ``names`` maps account ids to display names (from ``scan --accounts``); an
    entry's own ``name`` field is used when present. Low-risk accounts are
    listed only while there is room within ``max_rows`` — a count says how many
    were left out and where the full list is.
    """
    names = names or {}
    accounts = sorted(report.get("accounts", []), key=lambda e: (RISK_ORDER.get(e.get("risk", "low"), 3), -account_score(e),
                                                                 str(e.get("account_id"))))
    by_risk = {band: sum(1 for e in accounts if e.get("risk") == band) for band in RISK_ORDER}
    clusters = list(report.get("clusters", []))
    lines = [
        f"{report.get('events', 0):,} events, {report.get('accounts_seen', len(accounts)):,} accounts: "
        f"{by_risk['high']} high, {by_risk['medium']} medium, {by_risk['low']} low risk; {len(clusters)} cluster(s)",
        "",
    ]
    shown = [e for e in accounts if e.get("risk") in ("high", "medium")]
    room = max(0, max_rows - len(shown))
    shown = shown[:max_rows] + [e for e in accounts if e.get("risk") not in ("high", "medium")][:room]
    label_width = min(32, max([len("account"), *(len(_label(e, names)) for e in shown)]))
    cluster_width = max([len("cluster"), *(len(str(e.get("cluster_id") or "-")) for e in shown)])
    head = f"{'#':>3}  {'account':<{label_width}}  {'risk':<6}  {'distill':>7}  {'resell':>6}  {'cluster':<{cluster_width}}  top evidence"
    lines.append(head)
    lines.append("-" * min(width, len(head) + 40))
    evidence_width = max(20, width - len(head) + len("top evidence"))
    for rank, entry in enumerate(shown, start=1):
        evidence = entry.get("evidence") or []
        top = f"{evidence[0].get('detector')}: {evidence[0].get('detail', '')}" if evidence else "no evidence above zero"
        lines.append(
            f"{rank:>3}  {_clip(_label(entry, names), label_width):<{label_width}}  {entry.get('risk', '?'):<6}  "
            f"{float(entry.get('distillation_score') or 0):>7.2f}  {float(entry.get('reseller_score') or 0):>6.2f}  "
            f"{(entry.get('cluster_id') or '-'):<{cluster_width}}  {_clip(top, evidence_width)}"
        )
    left_out = len(accounts) - len(shown)
    if left_out:
        lines.append(f"     … {left_out} more low-risk account(s) not shown (the JSON report lists every account)")
    if clusters:
        lines += ["", "clusters:"]
        for cluster in sorted(clusters, key=lambda c: -float(c.get("score") or 0)):
            members = [names.get(a, a) for a in cluster.get("accounts", [])]
            shared = ", ".join(cluster.get("shared", [])) or "no shared indicator named"
            lines.append(f"  {cluster.get('cluster_id')}  score {float(cluster.get('score') or 0):.2f}  "
                         f"{len(members)} accounts: {_clip(', '.join(members), max(30, width - 40))}")
            lines.append(f"      shared: {_clip(shared, max(30, width - 14))}")
    problems = report.get("problems")
    if problems:
        lines += ["", f"{problems.get('skipped_lines', 0)} malformed line(s) skipped (see the warnings above)"]
    return "\n".join(lines) + "\n"


def _label(entry: Mapping[str, Any], names: Mapping[str, str]) -> str:
    account_id = str(entry.get("account_id"))
    name = entry.get("name") or names.get(account_id)
    return f"{name} ({account_id})" if name and name != account_id else account_id
