"""Charts as inline SVG, rendered on the server: no chart library, no JavaScript, nothing to vendor.

Each function returns SVG markup (escaped where it holds text) for a template
to embed with ``|safe``. They draw what they are given: aggregation is the
caller's job.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

__all__ = ["PALETTE", "cluster_graph", "risk_line", "stacked_bars"]

PALETTE = {
    "allow": "#9bb7d4", "requests": "#9bb7d4", "flag": "#e7c15a", "throttle": "#e79a4a", "degrade": "#b07cc6",
    "challenge": "#6fb5a8", "block": "#d0584f", "refused": "#d0584f", "other": "#999999",
}


def stacked_bars(labels: Sequence[str], layers: Mapping[str, Sequence[float]], *, width: int = 720, height: int = 160,
                 title: str = "") -> str:
    """One bar per label, its layers stacked in the order given, with a legend and the maximum on the axis."""
    n = max(1, len(labels))
    totals = [sum(layer[i] for layer in layers.values()) for i in range(len(labels))]
    top = max(totals, default=0) or 1
    plot_h, left = height - 34, 40
    bar_w = (width - left - 10) / n
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
             f'<text x="4" y="12" class="axis">{_short(top)}</text><text x="4" y="{plot_h + 4}" class="axis">0</text>',
             f'<line x1="{left}" y1="{plot_h + 0.5}" x2="{width - 10}" y2="{plot_h + 0.5}" class="base"/>']
    for i, label in enumerate(labels):
        y = float(plot_h)
        for name, layer in layers.items():
            value = layer[i]
            if value <= 0:
                continue
            h = value / top * (plot_h - 6)
            y -= h
            parts.append(f'<rect x="{left + i * bar_w + 1:.1f}" y="{y:.1f}" width="{max(1.0, bar_w - 2):.1f}" height="{h:.1f}" '
                         f'fill="{PALETTE.get(name, PALETTE["other"])}"><title>{escape(label)}: {value:g} {escape(name)}</title></rect>')
    step = max(1, n // 6)
    for i in range(0, len(labels), step):
        parts.append(f'<text x="{left + i * bar_w:.1f}" y="{height - 18}" class="axis">{escape(labels[i])}</text>')
    x = float(left)
    for name in layers:
        parts.append(f'<rect x="{x:.0f}" y="{height - 11}" width="9" height="9" fill="{PALETTE.get(name, PALETTE["other"])}"/>'
                     f'<text x="{x + 12:.0f}" y="{height - 3}" class="legend">{escape(name)}</text>')
        x += 14 + 7 * len(name) + 12
    parts.append("</svg>")
    return "".join(parts)


def risk_line(points: Sequence[tuple[float, float | None, str]], *, width: int = 720, height: int = 140) -> str:
    """Requests over time as ticks coloured by policy action, and the risk behind them as a line (0 to 1).

    ``points`` are ``(unix time, risk or None, action)``, any order.
    """
    if not points:
        return '<p class="muted">No requests stored for this account.</p>'
    points = sorted(points)
    t0, t1 = points[0][0], points[-1][0]
    span = max(t1 - t0, 1.0)
    left, plot_h = 30, height - 30

    def x(t: float) -> float:
        return left + (t - t0) / span * (width - left - 10)

    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="requests and risk over time">',
             f'<text x="2" y="12" class="axis">1.0</text><text x="2" y="{plot_h}" class="axis">0</text>',
             f'<line x1="{left}" y1="{plot_h + 0.5}" x2="{width - 10}" y2="{plot_h + 0.5}" class="base"/>']
    for t, _risk, action in points:
        parts.append(f'<line x1="{x(t):.1f}" y1="{plot_h + 3}" x2="{x(t):.1f}" y2="{plot_h + 12}" '
                     f'stroke="{PALETTE.get(action, PALETTE["other"])}"/>')
    line = [f"{x(t):.1f},{plot_h - r * (plot_h - 8):.1f}" for t, r, _a in points if r is not None]
    if line:
        parts.append(f'<polyline points="{" ".join(line)}" class="risk"/>')
    parts.append(f'<text x="{left}" y="{height - 2}" class="axis">{escape(_clock(t0))}</text>'
                 f'<text x="{width - 10}" y="{height - 2}" class="axis" text-anchor="end">{escape(_clock(t1))}</text></svg>')
    return "".join(parts)


def cluster_graph(members: Sequence[tuple[str, str, str]], indicators: Sequence[str], *, width: int = 720) -> str:
    """Members (id, label, risk) on the left, the indicators they share on the right, a link for each pair.

    A cluster is formed because its members share these indicators, so every
    member is drawn linked to every one of them; the picture shows how wide
    the shared footprint is and how many heads hang off it.
    """
    rows = max(len(members), len(indicators), 1)
    row_h = 26
    height = rows * row_h + 20
    left_x, right_x = 230, width - 260
    parts = [f'<svg class="graph" viewBox="0 0 {width} {height}" role="img" aria-label="cluster members and shared indicators">']

    def y(i: int, count: int) -> float:
        return 10 + (rows * row_h) / max(count, 1) * (i + 0.5)

    for i in range(len(members)):
        for j in range(len(indicators)):
            parts.append(f'<line x1="{left_x}" y1="{y(i, len(members)):.1f}" x2="{right_x}" y2="{y(j, len(indicators)):.1f}" class="link"/>')
    for i, (account_id, label, risk) in enumerate(members):
        cy = y(i, len(members))
        parts.append(f'<a href="accounts/{escape(account_id)}"><circle cx="{left_x}" cy="{cy:.1f}" r="7" class="node {escape(risk)}"/>'
                     f'<text x="{left_x - 12}" y="{cy + 4:.1f}" text-anchor="end" class="label">{escape(label)}</text></a>')
    for j, indicator in enumerate(indicators):
        cy = y(j, len(indicators))
        parts.append(f'<rect x="{right_x - 6}" y="{cy - 6:.1f}" width="12" height="12" class="indicator"/>'
                     f'<text x="{right_x + 12}" y="{cy + 4:.1f}" class="label">{escape(indicator)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _short(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:g}" if value == math.floor(value) else f"{value:.2f}"


def _clock(t: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))
