"""The pages: each turns what :mod:`featurelake.ui.data` read into HTML (see :mod:`featurelake.ui.html`)."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from featurelake.ui import data
from featurelake.ui.html import badge, button_form, chart, data_block, duration, e, num, page, table, when
from featurelake.ui.routes import model_href, report_href, run_href, version_href, view_href

if TYPE_CHECKING:
    from featurelake.auditing.audit_log import LoggedAudit
    from featurelake.lakehouse.history import SnapshotInfo
    from featurelake.registry.records import ModelSummary, ModelVersion

STAGES = ("None", "Staging", "Production", "Archived")


@dataclass
class Context:
    """What every page needs besides its data."""

    prefix: str
    project: str
    csrf: str
    can_act: bool
    commit_base: str | None
    asset: str
    notice: str | None = None

    def page(self, title: str, body: str, crumbs: list[tuple[str, str]] | None = None) -> str:
        return page(
            self.prefix,
            title,
            body,
            crumbs=crumbs or [],
            notice=self.notice,
            project=self.project,
            asset=self.asset,
        )

    def home(self) -> tuple[str, str]:
        return (self.prefix or "/", "Overview")


def _ttl(ttl: timedelta | None) -> str:
    return duration(ttl) if ttl else "none"


def _verdict(audit: LoggedAudit | None) -> str:
    if audit is None:
        return '<span class="muted">no audit</span>'
    return badge(audit.status)


def _code(ctx: Context, code: str | None) -> str:
    if not code:
        return "-"
    link = data.commit_link(ctx.commit_base, code)
    short = e(code[:12] + ("-dirty" if code.endswith("-dirty") else ""))
    return (
        f'<a href="{e(link)}" title="{e(code)}"><code>{short}</code></a>'
        if link
        else f'<code title="{e(code)}">{short}</code>'
    )


def _window(s: SnapshotInfo | LoggedAudit) -> str:
    return f"{e(s.window_start)} .. {e(s.window_end)}" if s.window_start else "-"


def _lag(online: data.OnlineState | None) -> str:
    if online is None:
        return "-"
    if online.problem:
        return f'<span class="muted">{e(online.problem)}</span>'
    if not online.lag_snapshots:
        return badge("in sync", "ok")
    return badge(f"{online.lag_snapshots} snapshots, {duration(online.lag_seconds)} behind", "warn")


# --- overview -------------------------------------------------------------------------------------------


def overview(
    ctx: Context,
    views: list[data.ViewSummary],
    rules: list[data.RuleState],
    jobs: list[data.JobRun],
) -> str:
    rows = []
    for v in views:
        d = v.definition
        name = f'<a href="{e(view_href(ctx.prefix, d.name))}">{e(d.name)}</a>'
        fields = ", ".join(f"{e(k)}:{e(t)}" for k, t in d.fields.items())
        if not v.applied:
            rows.append(
                [name, e(d.entity.name), fields, _ttl(d.ttl), e(d.partition), "not applied", "-", "-", "-"]
            )
            continue
        rows.append(
            [
                name,
                f"{e(d.entity.name)} <small>({e(', '.join(d.join_keys))})</small>",
                fields,
                _ttl(d.ttl),
                e(d.partition),
                f"data through {e(v.data_through or '-')}<br><small>published {when(v.last_publish)}</small>",
                _verdict(v.last_audit)
                + (
                    f' <a href="{e(run_href(ctx.prefix, d.name, v.last_audit.run_id))}">{e(v.last_audit.run_id)}</a>'
                    if v.last_audit
                    else ""
                ),
                _lag(v.online),
                str(v.branches),
            ]
        )
    firing = [(r, i) for r in rules for i in r.instances if i["state"] == "firing"]
    alerts = table(
        ["alert", "severity", "labels", "value", "since"],
        (
            [badge(r.name, "bad"), e(r.severity), e(_labels(i["labels"])), num(i["value"]), when(i["since"])]
            for r, i in firing
        ),
        caption="firing alerts",
        empty="no alert is firing",
    )
    job_rows = table(
        ["finished (UTC)", "job", "view", "outcome", "duration"],
        (
            [
                when(j.at),
                e(j.job),
                e(j.view),
                badge(j.outcome) + (f" <small>{e(j.reason)}</small>" if j.reason else ""),
                duration(j.seconds),
            ]
            for j in jobs
        ),
        caption="recent jobs",
        empty="no job recorded yet (jobs record into the monitoring state)",
    )
    body = (
        '<section aria-labelledby="h-views"><h2 id="h-views">Feature views</h2>'
        + table(
            [
                "view",
                "entity",
                "fields",
                "ttl",
                "partitioning",
                "freshness",
                "last audit",
                "online sync",
                "kept branches",
            ],
            rows,
            empty="features.py defines no feature view",
        )
        + '</section><div class="two"><section aria-labelledby="h-alerts"><h2 id="h-alerts">Firing alerts</h2>'
        + alerts
        + f'<p><a href="{e(ctx.prefix)}/online">all rules and their history</a></p></section>'
        + '<section aria-labelledby="h-jobs"><h2 id="h-jobs">Recent jobs</h2>'
        + job_rows
        + "</section></div>"
    )
    return ctx.page("Overview", body)


def _labels(labels: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))


# --- a view ---------------------------------------------------------------------------------------------


def view(ctx: Context, d: data.ViewDetail, limit: int) -> str:
    fv = d.definition
    facts = [
        ("entity", f"{e(fv.entity.name)} ({e(', '.join(fv.join_keys))})"),
        ("timestamp", e(fv.timestamp_field)),
        ("ttl", _ttl(fv.ttl)),
        ("partitioning", e(fv.partition)),
        ("description", e(fv.description) or '<span class="muted">none</span>'),
        (
            "online",
            _lag(d.online)
            + (
                f" <small>{num(d.online.keys)} keys, synced {e(d.online.synced_at)}</small>"
                if d.online.keys is not None
                else ""
            ),
        ),
    ]
    dl = "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>"
    schema = table(
        ["field", "type", "required", "description"],
        ([f"<code>{e(n)}</code>", e(t), "yes" if r else "no", e(doc)] for n, t, r, doc in d.schema),
        caption="schema of the Iceberg table",
    )
    timeline = table(
        [
            "snapshot",
            "published (UTC)",
            "operation",
            "code version",
            "run",
            "user",
            "window",
            "rows added",
            "preview",
        ],
        (
            [
                f"<code>{s.snapshot_id}</code>",
                when(s.published_at or s.committed_at),
                e(s.featurelake_operation or s.operation),
                _code(ctx, s.code_version),
                _run_cell(ctx, fv.name, s),
                e(s.pipeline_user or "-"),
                _window(s),
                num(s.added_records),
                f'<a href="{e(view_href(ctx.prefix, fv.name, snapshot=s.snapshot_id))}">rows</a>',
            ]
            for s in d.timeline
        ),
        caption=f"main, newest first ({len(d.timeline)} of {d.total_snapshots} snapshots)",
        empty="main has no snapshot yet",
    )
    more = ""
    if d.total_snapshots > len(d.timeline):
        more = f'<p><a href="{e(view_href(ctx.prefix, fv.name))}?limit={min(d.total_snapshots, limit * 5)}">show more snapshots</a></p>'
    branches = table(
        ["branch", "tip", "committed (UTC)", "window", "rows", "run"],
        (
            [
                f"<code>{e(b.name)}</code>",
                f"<code>{b.snapshot_id}</code>",
                when(b.info.committed_at) if b.info else "-",
                _window(b.info) if b.info else "-",
                num(b.info.added_records) if b.info else "-",
                f'<a href="{e(run_href(ctx.prefix, fv.name, b.run_id))}">{e(b.run_id)}</a>',
            ]
            for b in d.branches
        ),
        caption="kept audit branches (refused or not yet published runs)",
        empty="no kept audit_* branch",
    )
    preview = _preview(ctx, d)
    stats = _stats_charts(d)
    drift = _drift(ctx, fv.name, d.audits)
    audits = table(
        ["audited (UTC)", "run", "verdict", "rows", "window", "failures", "warnings"],
        (
            [
                when(a.audited_at),
                f'<a href="{e(run_href(ctx.prefix, fv.name, a.run_id))}">{e(a.run_id)}</a>',
                badge(a.status),
                num(a.rows),
                _window(a),
                str(len(a.failures)),
                str(len(a.warnings)),
            ]
            for a in d.audits
        ),
        caption="audits, newest first",
        empty="no audit yet",
    )
    sync = ""
    if ctx.can_act:
        sync = button_form(
            f"{ctx.prefix}/online/{fv.name}/sync", f"Sync {fv.name} to the online store", ctx.csrf
        )
    body = (
        f'<div class="two"><section aria-labelledby="h-about"><h2 id="h-about">About</h2>{dl}{sync}</section>'
        f'<section aria-labelledby="h-schema"><h2 id="h-schema">Schema</h2>{schema}</section></div>'
        f'<section aria-labelledby="h-timeline"><h2 id="h-timeline">Snapshot timeline</h2>{timeline}{more}</section>'
        f'<section aria-labelledby="h-branches"><h2 id="h-branches">Kept branches</h2>{branches}</section>'
        f'<section aria-labelledby="h-audits"><h2 id="h-audits">Audits</h2>{audits}</section>'
        f'<section aria-labelledby="h-stats"><h2 id="h-stats">Feature statistics per published run</h2>{stats}</section>'
        f'<section aria-labelledby="h-drift"><h2 id="h-drift">Drift per run</h2>{drift}</section>'
        f'<section id="preview" aria-labelledby="h-preview"><h2 id="h-preview">Time travel</h2>{preview}</section>'
    )
    return ctx.page(fv.name, body, [ctx.home(), ("", fv.name)])


def _run_cell(ctx: Context, view: str, s: SnapshotInfo) -> str:
    if not s.run_id:
        return "-"
    if s.featurelake_operation == "create":  # `apply` created the table: no run page to show
        return f'<span class="muted">{e(s.run_id)}</span>'
    return f'<a href="{e(run_href(ctx.prefix, view, s.run_id))}">{e(s.run_id)}</a>'


def _preview(ctx: Context, d: data.ViewDetail) -> str:
    form = (
        f'<form method="get" action="{e(view_href(ctx.prefix, d.definition.name))}#preview" class="inline">'
        f'<label for="snapshot">snapshot id</label> <input id="snapshot" name="snapshot" inputmode="numeric" '
        f'value="{e(d.preview_snapshot or "")}"> <button>Show rows</button></form>'
    )
    if d.preview_snapshot is None:
        return form + '<p class="muted">main has no snapshot to read</p>'
    if d.preview is None:
        href = view_href(ctx.prefix, d.definition.name, snapshot=d.preview_snapshot)
        return form + (
            f'<p><a href="{e(href)}">Show the first rows at main (snapshot {d.preview_snapshot})</a>, or pick '
            "a snapshot of the timeline (its <em>rows</em> link). Rows are read on demand.</p>"
        )
    cols = d.preview.column_names
    rows = ([_cell(v) for v in r.values()] for r in d.preview.to_pylist())
    return form + table(
        cols,
        rows,
        caption=f"first {d.preview.num_rows} rows at snapshot {d.preview_snapshot}",
        empty="no rows",
    )


def _cell(value: object) -> str:
    if value is None:
        return '<span class="muted">null</span>'
    if isinstance(value, float):
        return e(f"{value:.6g}")  # shortest readable form; the full value is a read away (fl.read)
    return e(value)


def _stats_charts(d: data.ViewDetail) -> str:
    if not d.stats:
        return '<p class="muted">no statistics recorded yet (they are kept in _stats when a run is published)</p>'
    out = []
    for column, runs in sorted(d.stats.items()):
        nulls = [(run, (st.missing / st.rows) if st.rows else None) for run, st in runs]
        means = [(run, st.mean) for run, st in runs]
        quants = {f"p{int(p * 100)}": [(run, st.quantile(p)) for run, st in runs] for p in data.QUANTILES}
        alt_rows = [
            [e(run), num(n), num(m), *(num(st.quantile(p)) for p in data.QUANTILES)]
            for (run, n), (_, m), (_, st) in zip(nulls, means, runs, strict=True)
        ]
        alt = table(["run", "null rate", "mean", *(f"p{int(p * 100)}" for p in data.QUANTILES)], alt_rows)
        out.append(
            '<div class="card">'
            + chart(f"{column}: null rate per run", {"null rate": nulls}, alt)
            + chart(f"{column}: mean and quantiles per run", {"mean": means, **quants}, alt)
            + "</div>"
        )
    return '<div class="cards">' + "".join(out) + "</div>"


def _drift(ctx: Context, view: str, audits: list[LoggedAudit]) -> str:
    rows = []
    series: dict[str, list[tuple[str, float | None]]] = {}
    for a in reversed(audits):
        for c in a.checks:
            if c["check"] != "drift":
                continue
            observed = c["observed"]
            score = observed.get("score") if isinstance(observed, dict) else observed
            value = float(score) if isinstance(score, int | float) else None
            series.setdefault(str(c["column"]), []).append((a.run_id, value))
            rows.append(
                [
                    f'<a href="{e(run_href(ctx.prefix, view, a.run_id))}">{e(a.run_id)}</a>',
                    e(c["column"]),
                    badge(c["status"]),
                    num(value) if value is not None else e(json.dumps(observed)),
                    e(c["limit"]),
                    e(c["message"]),
                ]
            )
    if not rows:
        return '<p class="muted">the view has no drift check, or no audit ran one yet</p>'
    alt = table(["run", "feature", "verdict", "score", "limit", "message"], rows)
    return chart("drift score per run", series, alt)


# --- a run ----------------------------------------------------------------------------------------------


def run(ctx: Context, r: data.RunDetail) -> str:
    cmd_publish = f"featurelake publish {shlex.quote(r.view)} --run-id {shlex.quote(r.run_id)}"
    cmd_discard = f"featurelake discard {shlex.quote(r.view)} --run-id {shlex.quote(r.run_id)}"
    state = {
        "published": f"published to main as snapshot <code>{r.snapshot_id}</code>",
        "refused and kept": f"refused by its audit; kept on branch <code>{e(r.branch)}</code> (tip <code>{r.snapshot_id}</code>)",
        "kept": f"audited, not published; kept on branch <code>{e(r.branch)}</code> (tip <code>{r.snapshot_id}</code>)",
        "discarded": f"not on main; its branch <code>{e(r.branch)}</code> was discarded",
    }[r.state]
    actions = ""
    if r.state in ("refused and kept", "kept"):
        actions = (
            "<p>To publish it (it is audited again first) or throw it away:</p>"
            f"<pre><code>{e(cmd_publish)}</code></pre><pre><code>{e(cmd_discard)}</code></pre>"
        )
        if ctx.can_act:
            base = run_href(ctx.prefix, r.view, r.run_id)
            actions += (
                button_form(f"{base}/publish", "Publish", ctx.csrf)
                + " "
                + button_form(f"{base}/discard", "Discard branch", ctx.csrf, danger=True)
            )
    info = ""
    if r.info is not None:
        s = r.info
        info = (
            f"<dl><dt>window</dt><dd>{_window(s)}</dd><dt>rows</dt><dd>{num(s.added_records)}</dd>"
            f"<dt>code version</dt><dd>{_code(ctx, s.code_version)}</dd><dt>user</dt><dd>{e(s.pipeline_user)}</dd>"
            f"<dt>committed</dt><dd>{when(s.committed_at)}</dd></dl>"
        )
    audits = []
    for a in r.audits:
        checks = table(
            ["check", "column", "severity", "verdict", "observed", "limit", "message"],
            (
                [
                    e(c["check"]),
                    e(c["column"]),
                    e(c["severity"]),
                    badge(c["status"]),
                    e(json.dumps(c["observed"])),
                    e(c["limit"]),
                    e(c["message"]),
                ]
                for c in a.checks
            ),
        )
        audits.append(
            f"<h3>Audit of {when(a.audited_at)} UTC: {badge(a.status)}</h3>"
            f"<p>{num(a.rows)} rows, window {_window(a)}, reference snapshot <code>{e(a.reference_snapshot_id)}</code></p>{checks}"
        )
    report = '<p class="muted">no HTML audit report on this machine</p>'
    if r.report_html:
        href = report_href(ctx.prefix, r.view, r.run_id)
        report = (
            f'<p><a href="{e(href)}" id="report-link">Open the audit report (histograms, drift)</a></p>'
            f'<iframe class="report" src="{e(href)}" title="audit report of run {e(r.run_id)}" sandbox></iframe>'
        )
    body = (
        f"<p>{badge(r.state)} {state}</p>{info}{actions}"
        f'<section aria-labelledby="h-verdicts"><h2 id="h-verdicts">Audit verdicts</h2>{"".join(audits) or "<p>no audit recorded</p>"}</section>'
        f'<section aria-labelledby="h-report"><h2 id="h-report">Audit report</h2>{report}</section>'
    )
    return ctx.page(
        f"Run {r.run_id} of {r.view}",
        body,
        [ctx.home(), (view_href(ctx.prefix, r.view), r.view), ("", r.run_id)],
    )


# --- models ---------------------------------------------------------------------------------------------


def models(ctx: Context, rows: list[ModelSummary]) -> str:
    body = table(
        ["model", "versions", "latest", "Production", "Staging", "aliases", "description"],
        (
            [
                f'<a href="{e(model_href(ctx.prefix, m.name))}">{e(m.name)}</a>',
                str(m.versions),
                e(m.latest or "-"),
                e(m.production or "-"),
                e(", ".join(m.staging) or "-"),
                e(", ".join(f"{a} -> {v}" for a, v in m.aliases.items()) or "-"),
                e(m.description),
            ]
            for m in rows
        ),
        empty="no model is registered (featurelake models register)",
    )
    return ctx.page("Models", body, [ctx.home(), ("", "Models")])


def model(ctx: Context, m: data.ModelDetail) -> str:
    versions = table(
        ["version", "stage", "aliases", "flavor", "created (UTC)", "by", "metrics", "trained on"],
        (
            [
                f'<a href="{e(version_href(ctx.prefix, m.name, v.version))}">{e(v.version)}</a>',
                badge(v.stage.value),
                e(", ".join(v.aliases) or "-"),
                e(v.flavor),
                when(v.created_at),
                e(v.created_by),
                e(", ".join(f"{k}={x:g}" for k, x in v.metrics.items()) or "-"),
                e(", ".join(f"{view}@{sid}" for view, sid in v.snapshots.items()) or "-"),
            ]
            for v in m.versions
        ),
        caption="versions, newest first",
    )
    history = table(
        ["at (UTC)", "version", "change", "user", "outcome", "reason / detail"],
        (
            [
                when(ev.at),
                e(ev.version or "-"),
                e(_change(ev)),
                e(ev.user),
                badge(ev.outcome, "ok" if ev.outcome == "applied" else "bad"),
                e(" / ".join(x for x in (ev.reason, ev.detail) if x)),
            ]
            for ev in reversed(m.history)
        ),
        caption="transition history, newest first",
    )
    runs = table(
        ["snapshot", "committed (UTC)", "run", "window", "rows", "user", "code version"],
        (
            [
                f"<code>{s.snapshot_id}</code>",
                when(s.committed_at),
                e(s.run_id),
                _window(s),
                num(s.added_records),
                e(s.pipeline_user),
                _code(ctx, s.code_version),
            ]
            for s in m.predictions
        ),
        caption=f"batch prediction runs into predictions.{m.name}",
        empty="no batch prediction run yet",
    )
    body = (
        f'<section aria-labelledby="h-versions"><h2 id="h-versions">Versions</h2>{versions}</section>'
        f'<section aria-labelledby="h-history"><h2 id="h-history">Stage and alias history</h2>{history}</section>'
        f'<section aria-labelledby="h-predictions"><h2 id="h-predictions">Batch predictions</h2>{runs}</section>'
    )
    return ctx.page(f"Model {m.name}", body, [ctx.home(), (f"{ctx.prefix}/models", "Models"), ("", m.name)])


def _change(ev: Any) -> str:
    if ev.from_stage or ev.to_stage:
        return f"{ev.from_stage} -> {ev.to_stage}"
    if ev.alias:
        return f"{ev.kind} {ev.alias}"
    return str(ev.kind)


def version(ctx: Context, mv: ModelVersion, record: Any, graph: data.Lineage) -> str:
    ts = mv.training_set or {}
    facts = [
        ("stage", badge(mv.stage.value)),
        ("aliases", e(", ".join(mv.aliases) or "-")),
        ("description", e(mv.description) or "-"),
        ("flavor", e(mv.flavor)),
        (
            "artifact",
            f"<code>{e(mv.artifact_key)}</code> ({num(mv.artifact_size)} bytes, sha256 <code>{e(mv.artifact_sha256[:16])}</code>)",
        ),
        (
            "created",
            f"{when(mv.created_at)} UTC by {e(mv.created_by)}, run {e(mv.run_id)}, code {_code(ctx, mv.code_version)}",
        ),
        (
            "training set",
            f"{e(ts.get('entities_rows', '-'))} entity rows, sha256 <code>{e((record.sha256 if record else ts.get('entities_sha256')) or '-')}</code>"
            if ts
            else "-",
        ),
    ]
    dl = "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>"
    signature = table(
        ["input", "type", "feature", "filled with when missing"],
        (
            [
                f"<code>{e(f.name)}</code>",
                e(f.type),
                e(f.feature or "-"),
                e(f.default if f.default is not None else "-"),
            ]
            for f in mv.signature
        ),
        caption="input signature",
        empty="no signature recorded",
    )
    kinds = {n.id: n for n in graph.nodes}
    items = []
    for src, dst in graph.edges:
        a, b = kinds[src], kinds[dst]
        target = f'<a href="{e(b.href)}">{e(b.label)}</a>' if b.href else e(b.label)
        items.append(
            f"<li>{e(a.kind)} {e(a.label)} &rarr; {e(b.kind)} {target} <small>{e(b.detail)}</small></li>"
        )
    lineage = (
        f'<figure class="graph" data-graph="lineage-data" aria-label="lineage of {e(mv.ref)}">'
        f"<figcaption>Lineage: model &rarr; training set &rarr; feature snapshots &rarr; runs and audits</figcaption>"
        f"{data_block('lineage-data', graph.to_dict())}"
        f'<details open><summary>lineage as a list</summary><ul class="lineage">{"".join(items) or "<li>no training set recorded</li>"}</ul></details></figure>'
    )
    promote = ""
    if ctx.can_act:
        options = "".join(
            f"<option{' selected' if s == 'Production' else ''}>{s}</option>"
            for s in STAGES
            if s != mv.stage.value
        )
        promote = (
            f'<form method="post" action="{e(version_href(ctx.prefix, mv.name, mv.version))}/promote" class="inline">'
            f'<input type="hidden" name="csrf" value="{e(ctx.csrf)}"><label for="stage">Move to stage</label> '
            f'<select id="stage" name="stage">{options}</select> <label for="reason">reason</label> '
            f'<input id="reason" name="reason"> <button class="primary">Promote</button></form>'
        )
    body = (
        f'<div class="two"><section aria-labelledby="h-facts"><h2 id="h-facts">Version</h2>{dl}{promote}</section>'
        f'<section aria-labelledby="h-sig"><h2 id="h-sig">Inputs</h2>{signature}</section></div>'
        f'<section aria-labelledby="h-lineage"><h2 id="h-lineage">Lineage</h2>{lineage}</section>'
    )
    crumbs = [
        ctx.home(),
        (f"{ctx.prefix}/models", "Models"),
        (model_href(ctx.prefix, mv.name), mv.name),
        ("", mv.version),
    ]
    return ctx.page(f"Model {mv.ref}", body, crumbs)


# --- online and monitoring --------------------------------------------------------------------------------


def online(
    ctx: Context,
    views: list[tuple[str, data.OnlineState]],
    store: str,
    rules: list[data.RuleState],
    history: list[dict[str, Any]],
) -> str:
    rows = []
    for name, st in views:
        act = button_form(f"{ctx.prefix}/online/{name}/sync", "Sync", ctx.csrf) if ctx.can_act else ""
        rows.append(
            [
                f'<a href="{e(view_href(ctx.prefix, name))}">{e(name)}</a>',
                num(st.keys),
                f"<code>{e(st.snapshot_id or '-')}</code>",
                e(st.synced_at or "-"),
                _lag(st),
                act,
            ]
        )
    sync = table(
        ["view", "keys", "synced from snapshot", "synced at", "lag behind main", ""],
        rows,
        caption=f"online store: {store}",
    )
    rule_rows = table(
        ["rule", "severity", "condition", "state", "instances"],
        (
            [
                f"<code>{e(r.name)}</code>",
                e(r.severity),
                e(r.condition),
                badge(r.state),
                "<br>".join(
                    f"{badge(i['state'])} {e(_labels(i['labels']))} value {num(i['value'])} since {when(i['since'])}"
                    for i in r.instances
                )
                or "-",
            ]
            for r in rules
        ),
        caption="alert rules (states as the last featurelake monitor left them)",
    )
    events = table(
        ["at (UTC)", "alert", "status", "severity", "summary"],
        (
            [
                e(ev.get("at")),
                e(ev.get("alert")),
                badge(str(ev.get("status", ""))),
                e(ev.get("severity")),
                e(ev.get("summary")),
            ]
            for ev in history
        ),
        caption="alert history (file channels), newest first",
        empty="no alert event recorded",
    )
    body = (
        f'<section aria-labelledby="h-sync"><h2 id="h-sync">Online store</h2>{sync}</section>'
        f'<section aria-labelledby="h-rules"><h2 id="h-rules">Alert rules</h2>{rule_rows}</section>'
        f'<section aria-labelledby="h-events"><h2 id="h-events">Alert history</h2>{events}</section>'
    )
    return ctx.page("Online and monitoring", body, [ctx.home(), ("", "Online and monitoring")])


def login(prefix: str, asset: str, message: str = "") -> str:
    note = f'<p class="error" role="alert">{e(message)}</p>' if message else ""
    body = (
        f"{note}<p>This UI is behind <code>server.token</code>. Enter the token, or send "
        "<code>Authorization: Bearer &lt;token&gt;</code>.</p>"
        f'<form method="post" action="{e(prefix)}/login"><label for="token">token</label> '
        '<input id="token" name="token" type="password" autocomplete="current-password" required> '
        '<button class="primary">Sign in</button></form>'
    )
    return page(prefix, "Sign in", body, asset=asset)
