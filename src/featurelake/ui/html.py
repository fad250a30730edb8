"""HTML building blocks of the UI: escaping, the page frame, tables, badges and chart/graph placeholders.

Pages are plain server-rendered HTML; the one script (``static/ui.js``) draws the charts and lineage graphs
from JSON embedded in the page (``<script type="application/json">``, never executed), and every chart or
graph also has a text alternative rendered here (a table or a list), so a page reads without scripts too.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

NAV = (("", "Overview"), ("/models", "Models"), ("/online", "Online & monitoring"))

_BADGES = {
    "pass": "ok",
    "passed": "ok",
    "published": "ok",
    "ok": "ok",
    "success": "ok",
    "Production": "ok",
    "warn": "warn",
    "passed with warnings": "warn",
    "pending": "warn",
    "Staging": "warn",
    "kept": "warn",
    "FAIL": "bad",
    "fail": "bad",
    "failed": "bad",
    "failure": "bad",
    "firing": "bad",
    "refused and kept": "bad",
    "critical": "bad",
    "error": "bad",
}


def e(value: object) -> str:
    """``value`` as HTML text (``None`` is empty)."""
    return html.escape("" if value is None else str(value))


def q(segment: str) -> str:
    """One URL path segment."""
    return quote(segment, safe="")


def badge(text: str, kind: str | None = None) -> str:
    return f'<span class="badge {kind or _BADGES.get(text, "info")}">{e(text)}</span>'


def when(value: datetime | float | None) -> str:
    """A UTC time as ``YYYY-MM-DD HH:MM:SS`` (``-`` when unknown)."""
    if value is None:
        return "-"
    if not isinstance(value, datetime):
        value = datetime.fromtimestamp(value, UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: float | timedelta | None) -> str:
    if seconds is None:
        return "-"
    s = seconds.total_seconds() if isinstance(seconds, timedelta) else float(seconds)
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def num(value: float | int | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    if value == 0 or 1e-3 <= abs(value) < 1e6:
        return f"{value:,.4g}"
    return f"{value:.3e}"


def table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], *, caption: str = "", empty: str = "none"
) -> str:
    """A table whose cells are already HTML (escape text with :func:`e`)."""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="muted">{e(empty)}</p>'
    head = "".join(f'<th scope="col">{e(h)}</th>' for h in headers)
    cap = f"<caption>{e(caption)}</caption>" if caption else ""
    return (
        f'<div class="scroll"><table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
    )


def data_block(element_id: str, data: Any) -> str:
    """JSON for the script, inert (``</`` cannot close the element)."""
    text = json.dumps(data, default=str, separators=(",", ":")).replace("</", "<\\/")
    return f'<script type="application/json" id="{e(element_id)}">{text}</script>'


def chart(title: str, series: dict[str, list[tuple[str, float | None]]], alt_table: str) -> str:
    """A line chart drawn by ui.js from ``series`` (name -> [(x label, y)]), with ``alt_table`` as its text
    alternative (shown in a disclosure under it)."""
    payload = {"title": title, "series": series}
    return (
        f'<figure class="chart" data-chart="{e(json.dumps(payload, default=str))}" '
        f'aria-label="{e(title)}"><figcaption>{e(title)}</figcaption>'
        f"<details><summary>data as a table</summary>{alt_table}</details></figure>"
    )


def button_form(
    action: str, label: str, csrf: str, fields: dict[str, str] | None = None, danger: bool = False
) -> str:
    hidden = "".join(
        f'<input type="hidden" name="{e(k)}" value="{e(v)}">'
        for k, v in {"csrf": csrf, **(fields or {})}.items()
    )
    cls = "danger" if danger else "primary"
    return f'<form method="post" action="{e(action)}" class="inline">{hidden}<button class="{cls}">{e(label)}</button></form>'


def page(
    prefix: str,
    title: str,
    body: str,
    *,
    crumbs: Sequence[tuple[str, str]] = (),
    notice: str | None = None,
    project: str = "",
    asset: str = "",
) -> str:
    """The frame of every page: a skip link, navigation, breadcrumbs, an optional notice, then ``body``."""
    nav = "".join(f'<a href="{e(prefix + path or "/")}">{e(label)}</a>' for path, label in NAV)
    trail = ""
    if crumbs:
        parts = [
            f'<a href="{e(href)}">{e(text)}</a>' if href else f"<span>{e(text)}</span>"
            for href, text in crumbs
        ]
        trail = f'<nav class="crumbs" aria-label="breadcrumbs">{" / ".join(parts)}</nav>'
    flash = f'<p class="notice" role="status">{e(notice)}</p>' if notice else ""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)} - featurelake</title>"
        '<link rel="icon" href="data:,">'
        f'<link rel="stylesheet" href="{e(prefix)}/static/ui.css?v={e(asset)}">'
        f'<script defer src="{e(prefix)}/static/ui.js?v={e(asset)}"></script></head><body>'
        '<a class="skip" href="#main">Skip to content</a>'
        f'<header><a class="brand" href="{e(prefix or "/")}">featurelake</a>'
        f'<span class="muted">{e(project)}</span><nav aria-label="main">{nav}</nav></header>'
        f'<main id="main" tabindex="-1">{trail}{flash}<h1>{e(title)}</h1>{body}</main></body></html>'
    )


def error_page(prefix: str, status: int, title: str, message: str, *, asset: str = "") -> str:
    body = f'<p class="error" role="alert">{e(message)}</p><p><a href="{e(prefix or "/")}">Back to the overview</a></p>'
    return page(prefix, f"{status} {title}", body, asset=asset)
