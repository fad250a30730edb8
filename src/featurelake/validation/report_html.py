"""The audit report as one self-contained HTML page: verdicts, and per feature the new rows vs the reference.

No scripts, fonts, stylesheets or images are loaded from anywhere: styles are inline and every histogram is
an inline SVG, so the page opens from disk, in a CI artifact viewer or attached to a ticket. Numeric
features get a histogram of the audited rows (bars) over the reference's (outline), both as shares of their
rows, so windows of different sizes compare; categorical features get their most frequent values side by side.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from featurelake.lakehouse.storage import write_atomic, writing

if TYPE_CHECKING:
    from featurelake.validation.audit import AuditReport
    from featurelake.validation.checks import CheckResult
    from featurelake.validation.colstats import ColumnStats

BINS = 24
W, H, PAD_L, PAD_B, PAD_T = 540, 210, 46, 34, 12
NEW, REF = "#2563eb", "#ea580c"
_VERDICT_COLOURS = {"pass": "#15803d", "FAIL": "#b91c1c", "warn": "#b45309"}

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#111827;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px} h3{font-size:15px;margin:0 0 6px}
.meta{color:#4b5563;font-size:13px} .badge{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff;
font-weight:600;font-size:13px} table{border-collapse:collapse;font-size:13px} td,th{border-bottom:1px solid #e5e7eb;
padding:4px 8px;text-align:left;vertical-align:top} th{background:#f9fafb} .num{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:flex;flex-wrap:wrap;gap:18px} .card{border:1px solid #e5e7eb;border-radius:8px;padding:12px;width:560px}
.card.fired{border-color:#b91c1c;box-shadow:0 0 0 1px #b91c1c} .legend span{display:inline-block;width:12px;height:12px;
margin:0 4px -1px 10px;border-radius:2px} .small{font-size:12px;color:#4b5563}
"""


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value))


def _fmt(v: float | None) -> str:
    if v is None:
        return ""
    if v == 0 or 1e-3 <= abs(v) < 1e6:
        return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    return f"{v:.3e}"


def _range(new: ColumnStats | None, ref: ColumnStats | None) -> tuple[float, float] | None:
    sides = [s for s in (new, ref) if s is not None and s.quantiles]
    if not sides:
        return None
    lo_q = min(s.quantile(0.01) or 0.0 for s in sides)
    hi_q = max(s.quantile(0.99) or 0.0 for s in sides)
    lo = min(s.min if s.min is not None else lo_q for s in sides)
    hi = max(s.max if s.max is not None else hi_q for s in sides)
    # A few extreme values would squash every bar into one: fall back to the 1st..99th percentile.
    if hi_q > lo_q and (hi - lo) > 4 * (hi_q - lo_q):
        lo, hi = lo_q, hi_q
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


def _shares(stats: ColumnStats | None, edges: np.ndarray) -> np.ndarray:
    if stats is None or not stats.quantiles:
        return np.zeros(len(edges) - 1)
    return stats.bin_shares(edges[1:-1])


def histogram_svg(column: str, new: ColumnStats | None, ref: ColumnStats | None) -> str:
    """An SVG histogram of ``new`` (bars) over ``ref`` (outline), each as shares of its finite values."""
    span = _range(new, ref)
    if span is None:
        return '<p class="small">no finite values on either side</p>'
    edges = np.linspace(span[0], span[1], BINS + 1)
    sides = [s for s in (new, ref) if s is not None and s.quantiles]
    if all(float(q).is_integer() for s in sides for q in s.quantiles) and span[1] - span[0] <= 60:
        # Integer-valued (counts): one bar per value instead of bins straddling the integers.
        edges = np.arange(np.floor(span[0]) - 0.5, np.ceil(span[1]) + 1.0, 1.0)
    nbins = len(edges) - 1
    a, b = _shares(new, edges), _shares(ref, edges)
    top = float(max(a.max(initial=0.0), b.max(initial=0.0))) or 1.0
    pw, ph = W - PAD_L - 8, H - PAD_B - PAD_T
    bw = pw / nbins

    def y(share: float) -> float:
        return PAD_T + ph - share / top * ph

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
        f'role="img" aria-label="histogram of {_e(column)}">',
        f'<rect x="{PAD_L}" y="{PAD_T}" width="{pw}" height="{ph}" fill="#f9fafb"/>',
    ]
    for i, share in enumerate(a):
        if share > 0:
            parts.append(
                f'<rect x="{PAD_L + i * bw + 1:.1f}" y="{y(share):.1f}" width="{bw - 2:.1f}" '
                f'height="{PAD_T + ph - y(share):.1f}" fill="{NEW}" fill-opacity="0.75"/>'
            )
    if ref is not None and ref.quantiles:
        pts = [f"{PAD_L:.1f},{PAD_T + ph:.1f}"]
        for i, share in enumerate(b):
            pts += [f"{PAD_L + i * bw:.1f},{y(share):.1f}", f"{PAD_L + (i + 1) * bw:.1f},{y(share):.1f}"]
        pts.append(f"{PAD_L + pw:.1f},{PAD_T + ph:.1f}")
        parts.append(
            f'<polyline points="{" ".join(pts)}" fill="{REF}" fill-opacity="0.12" stroke="{REF}" stroke-width="2"/>'
        )
    axis_y = PAD_T + ph
    parts.append(f'<line x1="{PAD_L}" y1="{axis_y}" x2="{PAD_L + pw}" y2="{axis_y}" stroke="#6b7280"/>')
    for frac, anchor in ((0.0, "start"), (0.5, "middle"), (1.0, "end")):
        value = span[0] + frac * (span[1] - span[0])
        parts.append(
            f'<text x="{PAD_L + frac * pw:.1f}" y="{axis_y + 16}" font-size="11" text-anchor="{anchor}" '
            f'fill="#374151">{_e(_fmt(value))}</text>'
        )
    parts.append(
        f'<text x="{PAD_L - 6}" y="{PAD_T + 10}" font-size="11" text-anchor="end" fill="#374151">{top:.0%}</text>'
        f'<text x="{PAD_L - 6}" y="{axis_y}" font-size="11" text-anchor="end" fill="#374151">0</text>'
        f'<text x="{PAD_L + pw / 2:.1f}" y="{H - 4}" font-size="11" text-anchor="middle" fill="#6b7280">'
        f"{_e(column)} (share of finite values per bin; outer bins include the tails)</text></svg>"
    )
    return "".join(parts)


def categories_svg(new: ColumnStats | None, ref: ColumnStats | None) -> str:
    """Horizontal bars: share of each frequent value in the new rows and in the reference."""
    sa = new.category_shares() if new is not None else {}
    sb = ref.category_shares() if ref is not None else {}
    labels = list(dict.fromkeys([*sb, *sa]))[:12]
    if not labels:
        return '<p class="small">no values on either side</p>'
    row_h, label_w, bar_w = 26, 150, W - 150 - 60
    top = max([*sa.values(), *sb.values(), 1e-9])
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{row_h * len(labels) + 6}">']
    for i, label in enumerate(labels):
        y0 = i * row_h + 3
        parts.append(
            f'<text x="{label_w - 6}" y="{y0 + 15}" font-size="11" text-anchor="end">{_e(label[:22])}</text>'
        )
        for j, (shares, colour) in enumerate(((sa, NEW), (sb, REF))):
            share = shares.get(label, 0.0)
            parts.append(
                f'<rect x="{label_w}" y="{y0 + j * 10}" width="{share / top * bar_w:.1f}" height="9" fill="{colour}"/>'
            )
        parts.append(
            f'<text x="{label_w + bar_w + 4}" y="{y0 + 15}" font-size="11">'
            f"{sa.get(label, 0.0):.1%} / {sb.get(label, 0.0):.1%}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _stats_table(new: ColumnStats | None, ref: ColumnStats | None, ref_label: str) -> str:
    rows = [
        ("rows", lambda s: f"{s.rows:,}"),
        ("nulls", lambda s: f"{s.nulls:,} ({s.nulls / s.rows:.1%})" if s.rows else "0"),
        ("NaN / inf", lambda s: f"{s.nan:,} / {s.pos_inf + s.neg_inf:,}"),
        ("min", lambda s: _fmt(s.min)),
        ("median", lambda s: _fmt(s.quantile(0.5))),
        ("mean", lambda s: _fmt(s.mean)),
        ("max", lambda s: _fmt(s.max)),
    ]
    if (new or ref) and (new or ref).kind != "numeric":  # type: ignore[union-attr]
        rows = rows[:2]
    head = f"<tr><th></th><th>new rows</th><th>{_e(ref_label)}</th></tr>"
    body = "".join(
        f'<tr><td>{name}</td><td class="num">{_e(fn(new)) if new else ""}</td>'
        f'<td class="num">{_e(fn(ref)) if ref else "none"}</td></tr>'
        for name, fn in rows
    )
    return f"<table>{head}{body}</table>"


def _results_table(results: list[CheckResult]) -> str:
    head = "<tr><th>check</th><th>column</th><th>severity</th><th>observed</th><th>limit</th><th>result</th><th>message</th></tr>"
    body = []
    for r in results:
        colour = _VERDICT_COLOURS.get(r.verdict, "#4b5563")
        body.append(
            f"<tr><td>{_e(r.check)}</td><td>{_e(r.column)}</td><td>{_e(r.severity)}</td>"
            f'<td class="num">{_e(r.observed)}</td><td>{_e(r.limit)}</td>'
            f'<td style="color:{colour};font-weight:600">{_e(r.verdict)}</td><td>{_e(r.message)}</td></tr>'
        )
    return f"<table>{head}{''.join(body)}</table>"


def render_html(report: AuditReport) -> str:
    """The whole page for ``report``."""
    colour = {"passed": "#15803d", "failed": "#b91c1c"}.get(report.status, "#b45309")
    ref_label = report.reference_label or "reference"
    window = (
        f"{(report.window_start or '')[:10]} .. {(report.window_end or '')[:10]}"
        if report.window_start
        else ""
    )
    drift_by_col: dict[str, list[CheckResult]] = {}
    for r in report.results:
        if r.check == "drift" and r.column:
            drift_by_col.setdefault(r.column, []).append(r)
    cards = []
    for col, new in report.profile.items():
        ref = report.reference_profile.get(col)
        fired = any(not r.passed for r in drift_by_col.get(col, []))
        drift_lines = "".join(
            f'<div class="small" style="color:{_VERDICT_COLOURS.get(r.verdict, "#4b5563")}">'
            f"drift: {_e(r.message)}</div>"
            for r in drift_by_col.get(col, [])
        )
        chart = histogram_svg(col, new, ref) if new.kind == "numeric" else categories_svg(new, ref)
        if new.kind == "other":
            chart = '<p class="small">(no distribution kept for this type)</p>'
        cards.append(
            f'<div class="card{" fired" if fired else ""}"><h3>{_e(col)} <span class="small">{_e(new.kind)}</span></h3>'
            f"{drift_lines}{chart}{_stats_table(new, ref, ref_label)}</div>"
        )
    warnings = "".join(f"<li>{_e(r.message)}</li>" for r in report.warnings)
    ref_text = (
        f"{_e(ref_label)} (snapshot {_e(report.reference_snapshot_id)})"
        if report.reference_snapshot_id is not None
        else "none: nothing published yet"
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>audit of {_e(report.view)} run {_e(report.run_id)}</title><style>{CSS}</style></head><body>"
        f'<h1>Audit of {_e(report.view)} run {_e(report.run_id)} <span class="badge" style="background:{colour}">'
        f"{_e(report.status)}</span></h1>"
        f'<div class="meta">{report.rows:,} rows in window {_e(window)} on branch {_e(report.branch)} '
        f"(snapshot {_e(report.snapshot_id)}); compared with {ref_text}; audited {_e(report.audited_at)} "
        f"in {report.seconds:.2f}s</div>"
        + (f"<h2>Warnings (published anyway)</h2><ul>{warnings}</ul>" if warnings else "")
        + f"<h2>Checks</h2>{_results_table(report.results)}"
        f'<h2>Features: new rows vs {_e(ref_label)}</h2><div class="legend small">'
        f'<span style="background:{NEW}"></span>new rows (bars)<span style="background:{REF}"></span>'
        f"{_e(ref_label)} (outline)</div>"
        f'<div class="grid">{"".join(cards)}</div></body></html>'
    )


def save_report(report: AuditReport, directory: Path, *, html: bool = True) -> Path:
    """Write ``<run_id>.json`` (and this HTML page beside it) atomically; returns the JSON path.

    The plain name belongs to the run now using the id: a new run first moves an earlier run's report aside
    (:func:`keep_earlier_report`), so this only ever replaces the same run's previous verdict (a re-audit).
    A path that cannot be written is one clear error naming it (``lakehouse.storage.io_failure``).
    """
    path = directory / f"{report.run_id}.json"
    with writing(path, "write the audit report"):
        _write_atomic(path, json.dumps(report.to_dict(), indent=2, default=str))
        if html:
            _write_atomic(path.with_suffix(".html"), render_html(report))
    return path


def _write_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))


def keep_earlier_report(directory: Path, run_id: str) -> Path | None:
    """Before a new run with ``run_id`` writes its report: move the report an earlier run with the same id
    left at ``<run_id>.json`` (and its ``.html``) to ``<run_id>.<snapshot id>.json`` (the snapshot it audited,
    as the ``_audits`` log records it; a ``-2``, ``-3``, ... suffix if taken), so no run's report is ever
    overwritten by another's. Returns where it went, or None when there was none."""
    plain = directory / f"{run_id}.json"
    if not plain.is_file():
        return None
    with writing(plain, "keep the earlier run's audit report"):
        try:
            tag = str(json.loads(plain.read_text()).get("snapshot_id") or "")
        except (ValueError, AttributeError):  # not a report of ours: keep it under its modification time
            tag = ""
        tag = tag if tag.lstrip("-").isdigit() else f"earlier-{int(plain.stat().st_mtime)}"
        target, n = directory / f"{run_id}.{tag}.json", 1
        while target.exists() or target.with_suffix(".html").exists():
            n += 1
            target = directory / f"{run_id}.{tag}-{n}.json"
        os.replace(plain, target)  # the JSON first: the HTML can always be rendered again from it
        if plain.with_suffix(".html").is_file():
            os.replace(plain.with_suffix(".html"), target.with_suffix(".html"))
    return target
