"""The alerting engine behind ``featurelake monitor``: evaluate every rule now, move alert states, notify.

Per alert instance (rule + labels) the state moves like Prometheus's: inactive -> ``pending`` when the
condition first holds -> ``firing`` once it has held for the rule's ``for`` -> resolved (forgotten) when it no
longer holds. Notifications: ``firing`` when it starts firing, again every ``repeat_interval`` while it keeps
firing (deduplicated in between, so one problem does not page every minute), ``resolved`` when it clears.

Order of work, so bad input loses nothing: rules and channels are loaded and checked, and every rule is
evaluated, before any state changes; then events are delivered; then the new states are saved. A channel
that fails after its retries does not stop the others; its undelivered events are appended to the file
channel(s) as ``delivery_failed`` records and reported in the result.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurelake.errors import ConfigError
from featurelake.monitoring.channels import AlertEvent, Channel, DeliveryError, load_channel
from featurelake.monitoring.channels.file import FileChannel
from featurelake.monitoring.evaluate import Active, LocalSource, PrometheusSource, RuleSource
from featurelake.monitoring.push import file_lock
from featurelake.monitoring.recorder import state_of
from featurelake.monitoring.rules import Rule, load_rules
from featurelake.monitoring.state import AlertState, LabelKey, MetricsState

if TYPE_CHECKING:
    from featurelake.project import Project

log = logging.getLogger("featurelake.monitoring")


@dataclass
class Instance:
    """One alert instance after this evaluation."""

    labels: dict[str, str]
    state: str
    value: float | None
    threshold: float | None
    active_since: float
    summary: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "labels": self.labels,
            "state": self.state,
            "value": self.value,
            "threshold": self.threshold,
            "active_since": _iso(self.active_since),
            "summary": self.summary,
        }


@dataclass
class RuleResult:
    """A rule's outcome: ``ok`` or the instances pending/firing now."""

    rule: Rule
    instances: list[Instance] = field(default_factory=list)

    @property
    def state(self) -> str:
        states = {i.state for i in self.instances}
        return "firing" if "firing" in states else ("pending" if states else "ok")

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule.name,
            "severity": self.rule.severity,
            "metric": self.rule.metric,
            "state": self.state,
            "instances": [i.to_dict() for i in self.instances],
        }


@dataclass
class MonitorResult:
    """What one ``monitor`` run found and sent."""

    evaluated_at: float
    evaluated_by: str
    rules: list[RuleResult]
    events: list[AlertEvent]
    delivery_errors: list[str]
    notified: bool

    @property
    def firing(self) -> list[tuple[Rule, Instance]]:
        return [(r.rule, i) for r in self.rules for i in r.instances if i.state == "firing"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "evaluated_at": _iso(self.evaluated_at),
            "evaluated_by": self.evaluated_by,
            "rules": [r.to_dict() for r in self.rules],
            "events": [e.to_dict() for e in self.events],
            "delivery_errors": self.delivery_errors,
            "notified": self.notified,
        }


def project_rules(project: Project) -> list[Rule]:
    """The enabled rules of ``project``: shipped defaults overlaid with ``monitoring.rules``."""
    cfg = project.config.settings.monitoring
    path = project.config.path(cfg.rules) if cfg.rules else None
    return load_rules(path, include_defaults=cfg.default_rules)


def rule_source(project: Project) -> RuleSource:
    cfg = project.config.settings.monitoring
    if cfg.prometheus_url:
        return PrometheusSource(cfg.prometheus_url.get_secret_value())
    return LocalSource(state_of(project))


def _to_ts(now: float | datetime | None) -> float:
    if now is None:
        return time.time()
    if isinstance(now, datetime):
        return now.timestamp()
    return float(now)


def deliver(channels: list[Channel], events: list[AlertEvent]) -> list[str]:
    """Send ``events`` to every channel; record failures on the file channels; return the error lines."""
    errors: list[str] = []
    undelivered: list[AlertEvent] = []
    broken: set[int] = set()
    for i, channel in enumerate(channels):
        wanted = [e for e in events if channel.accepts(e)]
        if not wanted:
            continue
        try:
            channel.send(wanted)
        except DeliveryError as exc:
            broken.add(i)
            errors.append(f"{channel.describe()}: {exc}")
            undelivered.extend(
                replace(e, status="delivery_failed", error=f"{channel.describe()}: {exc}") for e in exc.events
            )
        except Exception as exc:  # a channel bug must not cost the other channels their events
            broken.add(i)
            errors.append(f"{channel.describe()}: unexpected {type(exc).__name__}: {exc}")
            undelivered.extend(replace(e, status="delivery_failed", error=str(exc)) for e in wanted)
    if undelivered:
        files = [c for i, c in enumerate(channels) if isinstance(c, FileChannel) and i not in broken]
        for channel in files:
            try:
                channel.send(undelivered)
            except DeliveryError as exc:
                errors.append(f"{channel.describe()}: {exc}")
        if not files:
            for e in undelivered:
                log.error("undelivered alert (no file channel to record it): %s", e.headline())
    return errors


def _event(
    status: str,
    alert: str,
    severity: str,
    st: AlertState,
    value: float | None,
    threshold: float | None,
    summary: str,
    ts: float,
    project: str,
    evaluated_by: str,
    **kw: Any,
) -> AlertEvent:
    return AlertEvent(
        status,  # type: ignore[arg-type]
        alert,
        severity,
        dict(st.labels),
        value,
        threshold,
        summary,
        st.active_since,
        ts,
        project,
        evaluated_by=evaluated_by,
        **kw,
    )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def monitor(
    project: Project,
    *,
    now: float | datetime | None = None,
    notify: bool = True,
    rules: list[Rule] | None = None,
) -> MonitorResult:
    """Evaluate the rules at ``now`` (default: the current time), notify the channels and save the states.

    ``notify=False`` is a dry run: nothing is sent and no alert state changes.
    """
    ts = _to_ts(now)
    cfg = project.config.settings.monitoring
    rules = project_rules(project) if rules is None else rules
    # Channels first: a misconfigured or unwritable channel stops the run before any state moves.
    channels = [load_channel(c, i, project) for i, c in enumerate(cfg.channels)] if notify else []
    if cfg.collect:
        from featurelake.monitoring.collect import collect_live

        collect_live(project, cfg.collect, now=ts)
    source = rule_source(project)
    evaluated_by = "prometheus" if isinstance(source, PrometheusSource) else "local"
    found: list[tuple[Rule, list[Active]]] = [(rule, source.active(rule, ts)) for rule in rules]

    state = state_of(project)
    if not notify:
        return _advance(project, state, rules, found, ts, evaluated_by, channels, notify=False)
    stack = ExitStack()
    try:
        # One monitor at a time moves the alert states: two cron runs never both page for one alert.
        stack.enter_context(file_lock(state.path.with_name(state.path.name + ".monitorlock")))
        with stack:
            return _advance(project, state, rules, found, ts, evaluated_by, channels, notify=True)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(
            f"cannot use the metrics state {state.path} ({exc}): fix monitoring.state in featurelake.yaml; "
            "no alert state changed"
        ) from None


def _advance(
    project: Project,
    state: MetricsState,
    rules: list[Rule],
    found: list[tuple[Rule, list[Active]]],
    ts: float,
    evaluated_by: str,
    channels: list[Channel],
    *,
    notify: bool,
) -> MonitorResult:
    """Move every alert instance's state, deliver the events (if ``notify``) and save the states."""
    previous = state.alert_states()
    upserts: list[AlertState] = []
    events: list[AlertEvent] = []
    results: list[RuleResult] = []
    name = project.config.settings.project

    def event(rule: Rule, st: AlertState, status: str, value: float | None, thr: float, **kw: Any) -> None:
        labels = dict(st.labels)
        summary = rule.render(labels, value if value is not None else float("nan"), thr)
        run = runs.get(rule.name, {}).get(st.labels)
        if run is not None:
            summary, kw["extra"] = summary + run[0], run[1]
        events.append(
            _event(status, rule.name, rule.severity, st, value, thr, summary, ts, name, evaluated_by, **kw)
        )

    # Which run set each gauge an alert is about (e.g. a null rate), as the jobs noted it.
    runs = {rule.name: _run_notes(state, rule) for rule, _ in found}
    runs.update({st.rule: _run_notes(state, by) for st in previous.values() if (by := _rule(rules, st.rule))})
    for rule, actives in found:
        result = RuleResult(rule)
        for a in actives:
            key: tuple[str, LabelKey] = (rule.name, a.labels)
            st = previous.pop(key, None) or AlertState(rule.name, a.labels, "pending", ts)
            st.value = a.value
            if st.state == "pending" and ts - st.active_since >= rule.for_seconds:
                st.state, st.fired_at = "firing", ts
            if st.state == "firing":
                if st.last_notified is None:
                    event(rule, st, "firing", a.value, a.threshold)
                    st.last_notified = ts
                elif ts - st.last_notified >= rule.repeat_seconds:
                    event(rule, st, "firing", a.value, a.threshold, repeat=True)
                    st.last_notified = ts
            upserts.append(st)
            summary = rule.render(dict(a.labels), a.value, a.threshold)
            if (run := runs[rule.name].get(a.labels)) is not None:
                summary += run[0]
            result.instances.append(
                Instance(dict(a.labels), st.state, a.value, a.threshold, st.active_since, summary)
            )
        results.append(result)

    by_name = {r.name: r for r in rules}
    for st in previous.values():
        if st.state != "firing":
            continue  # a pending alert that cleared was never announced
        known = by_name.get(st.rule)
        if known is not None:
            event(known, st, "resolved", st.value, known.threshold)
        else:
            gone = f"rule {st.rule} was removed or disabled: its alert is resolved"
            events.append(
                _event("resolved", st.rule, "info", st, st.value, None, gone, ts, name, evaluated_by)
            )

    errors = deliver(channels, events) if notify else []
    if notify:
        state.save_alert_states(upserts, previous.keys())
    return MonitorResult(ts, evaluated_by, results, events, errors, notify)


def _rule(rules: list[Rule], name: str) -> Rule | None:
    return next((r for r in rules if r.name == name), None)


def _run_notes(state: MetricsState, rule: Rule) -> dict[LabelKey, tuple[str, dict[str, Any]]]:
    """Per series of the rule's gauge: the text added to its alerts' summary naming the run that set it, and
    the same as the event's ``extra`` (``run_id``, ``published``)."""
    if rule.aggregate != "last" or rule.by is not None:
        return {}
    out = {}
    for labels, note in state.notes(rule.metric).items():
        try:
            data = json.loads(note)
        except ValueError:
            continue
        if not isinstance(data, dict) or data.get("run_id") is None:
            continue
        published = data.get("published")
        how = (
            "published" if published else "not published: refused by its audit, or audited but not published"
        )
        out[labels] = (f" (run {data['run_id']}, {how})", {"run_id": data["run_id"], "published": published})
    return out


def export_prometheus_rules(project: Project, path: Path) -> list[Rule]:
    """Write the project's rules as a Prometheus alerting-rules file at ``path``."""
    from featurelake.lakehouse.storage import write_atomic, writing
    from featurelake.monitoring.rules.promql import dump

    rules = project_rules(project)
    text = dump(rules)
    with writing(path, "write the Prometheus rules file"):
        write_atomic(path, lambda tmp: tmp.write_text(text))
    return rules


__all__ = ["MonitorResult", "RuleResult", "deliver", "export_prometheus_rules", "monitor", "project_rules"]
