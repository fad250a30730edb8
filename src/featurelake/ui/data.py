"""What the pages show, read through the existing read APIs (the ``api`` facade, history, the audit and stats
logs, the registry, the online store's watermarks, the monitoring state); nothing here writes.

Each reader returns plain data for :mod:`featurelake.ui.pages`; an unknown view, run, snapshot or model is a
:class:`~featurelake.errors.NotFoundError` naming it (the app answers 404 with that message).
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurelake.errors import FeaturelakeError, NotFoundError, UsageError
from featurelake.features.definitions import shown
from featurelake.lakehouse import lineage, wap
from featurelake.lakehouse.history import SnapshotInfo, snapshot_info

if TYPE_CHECKING:
    import pyarrow as pa
    from pyiceberg.table import Table

    from featurelake.api import Featurelake
    from featurelake.auditing.audit_log import LoggedAudit
    from featurelake.features.definitions import FeatureView
    from featurelake.registry.records import Event, ModelSummary, ModelVersion
    from featurelake.serving.base import OnlineStore

#: Snapshots of main shown on a view's page unless ``?limit=`` asks for more.
TIMELINE = 100
PREVIEW_ROWS = 20
#: Runs drawn per snapshot in a version's lineage graph (older ones are one "N older runs" node).
LINEAGE_RUNS = 8
#: Quantiles drawn per run in the statistics charts.
QUANTILES = (0.05, 0.5, 0.95)


# --- views --------------------------------------------------------------------------------------------


def known_view(fl: Featurelake, name: str) -> FeatureView:
    """The feature view ``name`` (NotFoundError naming it and the defined views otherwise)."""
    views = fl.definitions.views
    if name not in views:
        known = ", ".join(sorted(views)) or "none"
        raise NotFoundError(f"no feature view {shown(name)}: features.py defines {known}")
    return views[name]


def _table(fl: Featurelake, name: str) -> Table | None:
    """The view's table, or None when it was not applied yet."""
    try:
        return fl.project.load_table(name)
    except UsageError:
        return None


def ancestry(tbl: Table, snapshot_id: int | None) -> list[tuple[int, dict[str, str]]]:
    """``snapshot_id`` and its ancestors, newest first, each with its summary properties (as
    ``wap.ancestors``, with one index of the snapshots instead of a search per step: a long history stays
    linear)."""
    by_id = {s.snapshot_id: s for s in tbl.metadata.snapshots}
    out: list[tuple[int, dict[str, str]]] = []
    current = snapshot_id
    while current is not None and current in by_id:
        snap = by_id[current]
        out.append((current, dict(snap.summary.additional_properties) if snap.summary else {}))
        current = snap.parent_snapshot_id
    return out


def main_timeline(tbl: Table, limit: int) -> tuple[list[SnapshotInfo], int]:
    """The newest ``limit`` snapshots of main with their lineage, and how many main has in all."""
    ids = ancestry(tbl, wap.main_snapshot_id(tbl))
    return [snapshot_info(tbl, i, True) for i, _ in ids[:limit]], len(ids)


@dataclass
class OnlineState:
    """A view's state in the online store: keys, the snapshot it was synced from, and how far behind main."""

    keys: int | None = None
    snapshot_id: int | None = None
    synced_at: str | None = None
    lag_snapshots: int | None = None
    lag_seconds: float | None = None
    problem: str | None = None


def online_state(fl: Featurelake, store: OnlineStore, view: str, now: float | None = None) -> OnlineState:
    from featurelake.monitoring.collect import sync_lag

    try:
        mark = store.get_watermark(view)
        if mark is None:
            return OnlineState(problem="never synced")
        behind, seconds = sync_lag(fl.project, view, mark.snapshot_id, time.time() if now is None else now)
        return OnlineState(store.count(view), mark.snapshot_id, mark.synced_at, behind, seconds)
    except FeaturelakeError as exc:
        return OnlineState(problem=str(exc))


@dataclass
class ViewSummary:
    definition: FeatureView
    applied: bool
    snapshot_id: int | None = None
    snapshots: int = 0
    last_publish: datetime | None = None
    data_through: str | None = None
    last_audit: LoggedAudit | None = None
    online: OnlineState | None = None
    branches: int = 0


def view_summaries(fl: Featurelake, store: OnlineStore) -> list[ViewSummary]:
    out = []
    for name, definition in sorted(fl.definitions.views.items()):
        tbl = _table(fl, name)
        if tbl is None:
            out.append(ViewSummary(definition, applied=False))
            continue
        recent, total = main_timeline(tbl, 20)
        published = [s for s in recent if s.run_id and s.featurelake_operation != "create"]
        audits = fl.audits(name)
        out.append(
            ViewSummary(
                definition,
                applied=True,
                snapshot_id=wap.main_snapshot_id(tbl),
                snapshots=total,
                last_publish=recent[0].published_at if recent else None,
                data_through=max((s.window_end for s in published if s.window_end), default=None),
                last_audit=audits[0] if audits else None,
                online=online_state(fl, store, name),
                branches=sum(1 for ref in tbl.metadata.refs if ref.startswith(wap.BRANCH_PREFIX)),
            )
        )
    return out


@dataclass
class Branch:
    name: str
    run_id: str
    snapshot_id: int
    info: SnapshotInfo | None


@dataclass
class ViewDetail:
    definition: FeatureView
    schema: list[tuple[str, str, bool, str]]
    timeline: list[SnapshotInfo]
    total_snapshots: int
    branches: list[Branch]
    audits: list[LoggedAudit]
    stats: dict[str, list[tuple[str, Any]]]
    """Feature -> [(run id, ColumnStats)] for each published run with recorded statistics, oldest first."""
    preview_snapshot: int | None
    preview: pa.Table | None
    online: OnlineState


def view_detail(
    fl: Featurelake, store: OnlineStore, name: str, *, limit: int = TIMELINE, snapshot: int | None = None
) -> ViewDetail:
    from featurelake.auditing import stats_log

    definition = known_view(fl, name)
    tbl = _table(fl, name)
    if tbl is None:
        raise NotFoundError(f"feature view {name} has no table yet: run `featurelake apply`")
    schema = [(f.name, str(f.field_type), f.required, f.doc or "") for f in tbl.schema().fields]
    timeline, total = main_timeline(tbl, limit)
    branches = []
    for ref_name, ref in sorted(tbl.metadata.refs.items()):
        if ref_name.startswith(wap.BRANCH_PREFIX):
            info = (
                snapshot_info(tbl, ref.snapshot_id, False)
                if tbl.metadata.snapshot_by_id(ref.snapshot_id)
                else None
            )
            branches.append(Branch(ref_name, ref_name[len(wap.BRANCH_PREFIX) :], ref.snapshot_id, info))
    audits = fl.audits(name)
    runs = [a.run_id for a in reversed(audits)]  # oldest first
    logged = stats_log.logged_runs(fl.project, name, set(runs))
    stats: dict[str, list[tuple[str, Any]]] = {}
    seen: set[str] = set()
    for run in runs:
        if run in logged and run not in seen:
            seen.add(run)
            for column, st in logged[run].items():
                stats.setdefault(column, []).append((run, st))
    sid = snapshot if snapshot is not None else wap.main_snapshot_id(tbl)
    preview = None
    if snapshot is not None:  # on demand: planning a scan reads every manifest of the snapshot
        if tbl.metadata.snapshot_by_id(snapshot) is None:
            raise NotFoundError(
                f"snapshot {snapshot} does not exist in {fl.project.table_name(name)} (expired or never committed); "
                f"see its timeline"
            )
        preview = tbl.scan(snapshot_id=snapshot, limit=PREVIEW_ROWS).to_arrow().slice(0, PREVIEW_ROWS)
    return ViewDetail(
        definition,
        schema,
        timeline,
        total,
        branches,
        audits,
        stats,
        sid,
        preview,
        online_state(fl, store, name),
    )


# --- runs ---------------------------------------------------------------------------------------------


@dataclass
class RunDetail:
    view: str
    run_id: str
    state: str
    """``published``, ``refused and kept``, ``kept`` (audited, not published) or ``discarded``."""
    branch: str
    snapshot_id: int | None
    info: SnapshotInfo | None
    audits: list[LoggedAudit]
    report_html: str | None


def run_detail(fl: Featurelake, view: str, run_id: str) -> RunDetail:
    known_view(fl, view)
    try:
        lineage.check_run_id(run_id)
    except UsageError:
        raise NotFoundError(f"view {view} has no run {shown(run_id)} (not a valid run id)") from None
    tbl = _table(fl, view)
    if tbl is None:
        raise NotFoundError(f"feature view {view} has no table yet: run `featurelake apply`")
    audits = fl.audits(view, run_id=run_id)
    branch = wap.branch_name(run_id)
    tip = wap.ref_snapshot_id(tbl, branch)
    on_main = next(
        (i for i, props in ancestry(tbl, wap.main_snapshot_id(tbl)) if props.get(lineage.RUN_ID) == run_id),
        None,
    )
    sid: int | None
    if tip is not None:
        state = "refused and kept" if audits and not audits[0].passed else "kept"
        sid = tip
    elif on_main is not None:
        state, sid = "published", on_main
    elif audits:
        state, sid = "discarded", audits[0].snapshot_id
    else:
        raise NotFoundError(
            f"view {view} has no run {shown(run_id)}: no audit, branch or snapshot of main names it; "
            f"see the runs on the view's page"
        )
    info = snapshot_info(tbl, sid, state == "published") if sid and tbl.metadata.snapshot_by_id(sid) else None
    report = next((a.report for a in audits if a.report), None)
    html_path = None
    if report:
        candidate = fl.project.root / Path(report).with_suffix(".html")
        html_path = str(candidate) if candidate.is_file() else None
    return RunDetail(view, run_id, state, branch, sid, info, audits, html_path)


def report_file(fl: Featurelake, view: str, run_id: str) -> Path:
    """The run's HTML audit report, which must lie inside the project's audit directory."""
    detail = run_detail(fl, view, run_id)
    if detail.report_html is None:
        raise NotFoundError(
            f"run {run_id} of {view} has no HTML audit report on this machine: "
            f"`featurelake audit {view} --run-id {run_id}` renders it again"
        )
    path = Path(detail.report_html).resolve()
    if not path.is_relative_to(fl.project.audit_dir.resolve()):
        raise NotFoundError(
            f"the audit report of run {run_id} of {view} is outside the project's audit directory"
        )
    return path


# --- models -------------------------------------------------------------------------------------------


@dataclass
class ModelDetail:
    name: str
    versions: list[ModelVersion]
    history: list[Event]
    predictions: list[SnapshotInfo]


def models(fl: Featurelake) -> list[ModelSummary]:
    if not _registry_exists(fl):
        return []
    return fl.models.list_models()


def _registry_exists(fl: Featurelake) -> bool:
    """False for an embedded SQLite registry never created (the UI must not create it by looking)."""
    cfg = fl.project.config
    uri = cfg.sqlalchemy_uri(cfg.settings.registry.uri.get_secret_value())
    return not uri.startswith("sqlite:///") or cfg.path(uri[len("sqlite:///") :]).exists()


def model_detail(fl: Featurelake, name: str) -> ModelDetail:
    if not _registry_exists(fl):
        raise NotFoundError(f"no model {shown(name)}: the registry is empty")
    versions = fl.models.versions(name)  # NotFoundError naming the model
    return ModelDetail(name, versions, fl.models.history(name), prediction_runs(fl, name))


def prediction_runs(fl: Featurelake, model: str) -> list[SnapshotInfo]:
    """The batch prediction runs of ``model``: the snapshots of ``predictions.<model>``, newest first."""
    try:
        return [
            s for s in fl.history(f"predictions.{model}") if s.run_id and s.featurelake_operation != "create"
        ]
    except UsageError:
        return []


@dataclass
class LineageNode:
    id: str
    kind: str
    label: str
    detail: str = ""
    href: str | None = None


@dataclass
class Lineage:
    nodes: list[LineageNode] = field(default_factory=list)
    edges: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": [n.__dict__ for n in self.nodes],
            "edges": [list(edge) for edge in self.edges],
        }


def version_detail(
    fl: Featurelake, name: str, version: str, prefix: str = ""
) -> tuple[ModelVersion, Any, Lineage]:
    """A version, its training record, and its lineage graph: model -> training set -> snapshots -> runs."""
    if not _registry_exists(fl):
        raise NotFoundError(f"no model {shown(name)}: the registry is empty")
    try:
        mv = fl.models.get(name, version)
    except UsageError as exc:
        raise NotFoundError(str(exc)) from None
    record = fl.models.training_record(mv)
    return mv, record, lineage_graph(fl, mv, record, prefix)


def lineage_graph(fl: Featurelake, mv: ModelVersion, record: Any, prefix: str = "") -> Lineage:
    from featurelake.ui.routes import run_href, view_href

    g = Lineage()
    model_id = f"model:{mv.ref}"
    g.nodes.append(LineageNode(model_id, "model", mv.ref, f"{mv.stage.value}, {mv.flavor}"))
    ts = mv.training_set or {}
    if not ts:
        return g
    sha = (record.sha256 if record is not None else None) or ts.get("entities_sha256") or ""
    set_id = "training-set"
    g.nodes.append(
        LineageNode(
            set_id, "training set", f"{ts.get('entities_rows', '?')} entity rows", f"sha256 {str(sha)[:16]}"
        )
    )
    g.edges.append((model_id, set_id))
    for view, sid in sorted(mv.snapshots.items()):
        snap_id = f"snapshot:{view}:{sid}"
        info = None
        tbl = _table(fl, view) if view in fl.definitions.views else None
        if tbl is not None and sid is not None and tbl.metadata.snapshot_by_id(sid) is not None:
            info = snapshot_info(tbl, sid, False)
        code = (info.code_version or "")[:12] if info else "expired"
        g.nodes.append(
            LineageNode(
                snap_id, "snapshot", f"{view}@{sid}", f"code {code}", view_href(prefix, view, snapshot=sid)
            )
        )
        g.edges.append((set_id, snap_id))
        if info is None or tbl is None:
            continue
        # The runs whose data the snapshot holds: every backfill in its ancestry (the newest few drawn).
        verdicts: dict[str, str] = {}
        for audit in reversed(fl.audits(view)):  # newest last: the latest verdict of a run wins
            verdicts[audit.run_id] = audit.status
        runs: list[str] = []
        for _, props in ancestry(tbl, sid):
            run = props.get(lineage.RUN_ID)
            if run and props.get(lineage.OPERATION) != "create" and run not in runs:  # not `apply`'s
                runs.append(run)
        for run in runs[:LINEAGE_RUNS]:
            verdict = verdicts.get(run, "no audit")
            g.nodes.append(
                LineageNode(f"run:{view}:{run}", "run", run, f"audit {verdict}", run_href(prefix, view, run))
            )
            g.edges.append((snap_id, f"run:{view}:{run}"))
        if len(runs) > LINEAGE_RUNS:
            more = f"more:{view}"
            g.nodes.append(
                LineageNode(more, "run", f"{len(runs) - LINEAGE_RUNS} older runs", "see the view's timeline",
                            view_href(prefix, view))
            )  # fmt: skip
            g.edges.append((snap_id, more))
    return g


# --- jobs, alerts ---------------------------------------------------------------------------------------


@dataclass
class JobRun:
    job: str
    view: str
    at: float
    outcome: str
    reason: str | None
    seconds: float | None


_JOB_SAMPLES = (
    "featurelake_job_success_total",
    "featurelake_job_failure_total",
    "featurelake_job_duration_seconds_sum",
)


def recent_jobs(fl: Featurelake, limit: int = 20) -> list[JobRun]:
    """Job runs as the monitoring hooks recorded them in the local metrics state (``monitoring.state``): each
    increase of a job's success or failure counter is one run, its duration the increase of the duration
    histogram's sum flushed with it (docs/monitoring.md). Newest first."""
    from featurelake.monitoring.recorder import state_of

    path = state_of(fl.project).path
    if not path.is_file():
        return []
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        marks = ",".join("?" * len(_JOB_SAMPLES))
        rows = con.execute(
            f"SELECT s.sample, s.labels, x.ts, x.value FROM series s JOIN samples x ON x.series_id = s.id "
            f"WHERE s.sample IN ({marks}) ORDER BY x.ts, x.rowid",
            _JOB_SAMPLES,
        ).fetchall()
    except sqlite3.Error:
        return []
    finally:
        con.close()
    last: dict[tuple[str, str], float] = {}
    runs: list[JobRun] = []
    seconds: dict[tuple[str, float], float] = {}
    for sample, labels, ts, value in rows:
        delta = value - last.get((sample, labels), 0.0)
        last[(sample, labels)] = value
        if delta <= 0:
            continue
        lab = json.loads(labels)
        if sample.endswith("_sum"):
            seconds[(lab.get("job", ""), ts)] = delta
        else:
            outcome = "success" if sample == "featurelake_job_success_total" else "failure"
            runs.append(JobRun(lab.get("job", ""), lab.get("view", ""), ts, outcome, lab.get("reason"), None))
    for r in runs:
        r.seconds = seconds.get((r.job, r.at))
    return sorted(runs, key=lambda r: r.at, reverse=True)[:limit]


@dataclass
class RuleState:
    name: str
    metric: str
    severity: str
    condition: str
    state: str
    instances: list[dict[str, Any]]
    summary: str


def alert_rules(fl: Featurelake) -> list[RuleState]:
    """The rules in force, each with the state the last ``featurelake monitor`` left its instances in."""
    from featurelake.monitoring.alerts import project_rules
    from featurelake.monitoring.recorder import state_of

    states = state_of(fl.project).alert_states()
    out = []
    for rule in project_rules(fl.project):
        instances = [
            {
                "labels": dict(labels),
                "state": st.state,
                "value": st.value,
                "since": st.active_since,
                "fired": st.fired_at,
            }
            for (name, labels), st in sorted(states.items(), key=lambda kv: kv[0][1])
            if name == rule.name
        ]
        kinds = {i["state"] for i in instances}
        state = "firing" if "firing" in kinds else ("pending" if kinds else "ok")
        agg = rule.aggregate if rule.aggregate == "last" else f"{rule.aggregate}[{rule.window}]"
        cond = f"{agg}({rule.metric}) {rule.op} {rule.threshold:g}, for {rule.for_}"
        out.append(RuleState(rule.name, rule.metric, rule.severity, cond, state, instances, rule.summary))
    return out


def alert_history(fl: Featurelake, limit: int = 50) -> list[dict[str, Any]]:
    """The newest events of the file channels (the alert audit trail, JSONL), newest first."""
    events: list[dict[str, Any]] = []
    for channel in fl.project.config.settings.monitoring.channels:
        if not isinstance(channel, dict) or channel.get("type") != "file":
            continue
        path = fl.project.config.path(str(channel.get("path") or ".featurelake/alerts.jsonl"))
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines()[-limit:]:
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict):
                events.append(item)
    return sorted(events, key=lambda ev: str(ev.get("at", "")), reverse=True)[:limit]


# --- code versions ---------------------------------------------------------------------------------------

_SHA = re.compile(r"^[0-9a-f]{7,40}")


def commit_base(project_dir: Path) -> str | None:
    """The web address of the project's git remote (``origin``), where commits can be linked, else None."""
    try:
        url = subprocess.run(
            ["git", "-C", str(project_dir), "remote", "get-url", "origin"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.match(r"^(?:ssh://)?git@([^:/]+)[:/](.+?)(?:\.git)?/?$", url)
    if match:
        return f"https://{match.group(1)}/{match.group(2)}"
    match = re.match(r"^(https?://)(?:[^@/]+@)?(.+?)(?:\.git)?/?$", url)
    return f"{match.group(1)}{match.group(2)}" if match else None


def commit_link(base: str | None, code_version: str | None) -> str | None:
    """The commit page of ``code_version`` (a git sha, maybe ``-dirty``) under ``base``, else None."""
    if not base or not code_version:
        return None
    match = _SHA.match(code_version)
    return f"{base}/commit/{match.group(0)}" if match else None
