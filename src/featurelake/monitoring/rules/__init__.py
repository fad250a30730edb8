"""Alert rules as data: the shipped ``default.yaml`` merged with a project's own rules file.

A rule names one metric of the catalog (:data:`featurelake.telemetry.SPECS`), how to reduce it
(``last`` value of a gauge, ``increase``/``rate`` of a counter over a ``window``, a histogram ``quantile``), a
comparison (``op`` and ``threshold``, or a per-series ``threshold_metric``), a ``severity``, how long the
condition must hold before it fires (``for``) and how often a still-firing alert is notified again
(``repeat_interval``). The same rules evaluate locally (:mod:`featurelake.monitoring.evaluate`) and export to
a Prometheus alerting-rules file (:mod:`featurelake.monitoring.rules.promql`).
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from featurelake import telemetry as metrics
from featurelake.errors import ConfigError
from featurelake.units import parse_duration

Severity = Literal["info", "warning", "error", "critical"]
SEVERITIES: tuple[str, ...] = ("info", "warning", "error", "critical")
OPS = (">", ">=", "<", "<=", "==", "!=")
PLACEHOLDER = re.compile(r"\{(\w+)\}")
_LINE = "__line__"


class Rule(BaseModel):
    """One alert rule (see the module docstring and docs/monitoring.md#rules)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")
    """Alert name, unique; a project rule with a shipped rule's name overrides it."""
    metric: str
    """A metric of the catalog, e.g. ``featurelake_feature_null_rate``."""
    op: Literal[">", ">=", "<", "<=", "==", "!="]
    """How the reduced value compares to the threshold for the alert to be active."""
    threshold: float
    """The limit (also the fallback where ``threshold_metric`` has no series)."""
    severity: Severity
    """``info``, ``warning``, ``error`` or ``critical``."""
    aggregate: Literal["last", "increase", "rate", "quantile"] = "last"
    """``last`` (gauges, raw counters), ``increase``/``rate`` (counters), ``quantile`` (histograms)."""
    window: str | None = None
    """Look-back of ``increase``, ``rate`` and ``quantile`` (``5m``, ``1h``)."""
    quantile: float | None = None
    """For ``aggregate: quantile``: 0.5, 0.95, 0.99, ..."""
    by: list[str] | None = None
    """Labels kept when aggregating (default: all of the metric's labels)."""
    match: dict[str, str] = Field(default_factory=dict)
    """Label filters, Prometheus regexes anchored at both ends (``stage: production``)."""
    threshold_metric: str | None = None
    """A gauge with the same labels whose value is each series' own threshold."""
    for_: str = Field("0s", alias="for")
    """How long the condition must hold before the alert fires (pending until then)."""
    repeat_interval: str = "4h"
    """A firing alert is notified again after this long; in between it is deduplicated."""
    summary: str = ""
    """Notification text; ``{label}``, ``{value}`` and ``{threshold}`` are filled in."""
    enabled: bool = True
    """False turns a shipped rule off."""
    source: str = ""
    """Where the rule was defined (``file:line``), for error messages."""

    @field_validator("threshold", mode="before")
    @classmethod
    def _number(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("threshold must be a number")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Rule:
        spec = metrics.SPECS.get(self.metric)
        if spec is None:
            raise ValueError(f"unknown metric {self.metric!r}: use one of {', '.join(sorted(metrics.SPECS))}")
        allowed = {"gauge": ("last",), "counter": ("last", "increase", "rate"), "histogram": ("quantile",)}
        if self.aggregate not in allowed[spec.kind]:
            raise ValueError(
                f"aggregate {self.aggregate!r} does not apply to {spec.kind} {self.metric}: use "
                + " or ".join(allowed[spec.kind])
            )
        if self.aggregate != "last" and self.window is None:
            raise ValueError(f"aggregate {self.aggregate!r} needs a window (e.g. window: 5m)")
        if self.aggregate == "quantile" and (self.quantile is None or not 0 <= self.quantile <= 1):
            raise ValueError("aggregate 'quantile' needs quantile: a number between 0 and 1 (e.g. 0.99)")
        for what, value in (
            ("window", self.window),
            ("for", self.for_),
            ("repeat_interval", self.repeat_interval),
        ):
            if value is not None:
                parse_duration(value, what)
        for label in [*(self.by or []), *self.match]:
            if label not in spec.labels:
                raise ValueError(
                    f"{self.metric} has no label {label!r}: its labels are {', '.join(spec.labels)}"
                )
        for label, pattern in self.match.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"match {label}: {pattern!r} is not a valid regex ({exc})") from None
        if self.threshold_metric is not None:
            tspec = metrics.SPECS.get(self.threshold_metric)
            if tspec is None or tspec.kind != "gauge" or tspec.labels != spec.labels:
                raise ValueError(
                    f"threshold_metric {self.threshold_metric!r} must be a gauge with the labels of {self.metric}"
                )
            if self.aggregate != "last":
                raise ValueError("threshold_metric works with aggregate 'last' only")
        unknown = set(PLACEHOLDER.findall(self.summary)) - {*self.output_labels, "value", "threshold"}
        if unknown:
            raise ValueError(
                f"summary uses {', '.join(sorted(unknown))}, which this rule's alerts do not have: use "
                + ", ".join("{" + x + "}" for x in (*self.output_labels, "value", "threshold"))
            )
        return self

    # --- derived -------------------------------------------------------------------------------------
    @property
    def spec(self) -> metrics.MetricSpec:
        return metrics.SPECS[self.metric]

    @property
    def output_labels(self) -> tuple[str, ...]:
        """Labels an alert instance of this rule carries."""
        return tuple(self.by) if self.by is not None else self.spec.labels

    @property
    def for_seconds(self) -> float:
        return parse_duration(self.for_, "for").total_seconds()

    @property
    def repeat_seconds(self) -> float:
        return parse_duration(self.repeat_interval, "repeat_interval").total_seconds()

    @property
    def window_seconds(self) -> float:
        return parse_duration(self.window or "0s", "window").total_seconds()

    def compare(self, value: float, threshold: float) -> bool:
        """``value op threshold`` (False for NaN, as in PromQL)."""
        if value != value:
            return False
        return {
            ">": value > threshold,
            ">=": value >= threshold,
            "<": value < threshold,
            "<=": value <= threshold,
            "==": value == threshold,
            "!=": value != threshold,
        }[self.op]

    def render(self, labels: dict[str, str], value: float, threshold: float) -> str:
        """The summary with labels, value (4 significant digits) and threshold filled in."""
        text = self.summary or f"{self.name}: {self.metric} {self.op} {{threshold}} (value {{value}})"
        filled = {**labels, "value": f"{value:.4g}", "threshold": f"{threshold:g}"}
        return PLACEHOLDER.sub(lambda m: filled.get(m.group(1), m.group(0)), text)


class _LineLoader(yaml.SafeLoader):
    """A YAML loader that remembers the line of every mapping (for error messages)."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    mapping = loader.construct_mapping(node, deep=True)
    mapping[_LINE] = node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _strip_lines(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_lines(v) for k, v in value.items() if k != _LINE}
    if isinstance(value, list):
        return [_strip_lines(v) for v in value]
    return value


def _read(text: str, origin: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(file defaults, raw rules with their ``__line__``) of one rules file; ConfigError with a line."""
    try:
        doc = yaml.load(text, Loader=_LineLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{origin}:{mark.line + 1}" if mark else origin
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: alert rules are not valid YAML ({problem}): fix the syntax") from None
    if doc is None:
        return {}, []
    if not isinstance(doc, dict) or not isinstance(doc.get("rules", []), list):
        raise ConfigError(
            f"{origin}:1: an alert rules file holds `rules:` (a list) and optionally `defaults:`"
        )
    extra = set(doc) - {"rules", "defaults", _LINE}
    if extra:
        raise ConfigError(
            f"{origin}:{doc[_LINE]}: unknown top-level key(s) {', '.join(sorted(extra))}: use rules, defaults"
        )
    defaults = _strip_lines(doc.get("defaults") or {})
    rules = doc.get("rules") or []
    for i, raw in enumerate(rules):
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise ConfigError(f"{origin}: rule #{i + 1} must be a mapping with a `name`")
    return defaults, rules


def _build(raw: dict[str, Any], line: int, origin: str) -> Rule:
    name = raw.get("name", "?")
    try:
        return Rule.model_validate({**_strip_lines(raw), "source": f"{origin}:{line}"})
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e["loc"])
            msg = str(e["msg"]).removeprefix("Value error, ")
            problems.append(f"{where}: {msg}" if where else msg)
        raise ConfigError(f"{origin}:{line}: rule {name!r}: " + "; ".join(problems)) from None
    except ValueError as exc:
        raise ConfigError(f"{origin}:{line}: rule {name!r}: {exc}") from None


DEFAULT_RULES_RESOURCE = "default.yaml"


def default_rules_text() -> str:
    return resources.files(__package__).joinpath(DEFAULT_RULES_RESOURCE).read_text()


def load_rules(project_rules: Path | None = None, *, include_defaults: bool = True) -> list[Rule]:
    """The enabled rules: shipped defaults overlaid, field by field and by name, with ``project_rules``."""
    merged: dict[str, tuple[dict[str, Any], int, str]] = {}
    sources: list[tuple[str, str]] = []
    if include_defaults:
        sources.append((default_rules_text(), "featurelake/monitoring/rules/default.yaml"))
    if project_rules is not None:
        try:
            sources.append((project_rules.read_text(), str(project_rules)))
        except OSError as exc:
            raise ConfigError(
                f"cannot read alert rules {project_rules}: {exc.strerror}; fix monitoring.rules in featurelake.yaml"
            ) from None
    for text, origin in sources:
        defaults, rules = _read(text, origin)
        for raw in rules:
            line = int(raw.get(_LINE, 0))
            body = {k: v for k, v in raw.items() if k != _LINE}
            base = merged.get(body["name"])
            # An override changes only the fields it names; a new rule starts from the file's defaults.
            fields = {**base[0], **body} if base is not None else {**defaults, **body}
            merged[body["name"]] = (fields, line, origin)
    out = [_build(fields, line, origin) for fields, line, origin in merged.values()]
    return [r for r in out if r.enabled]


__all__ = ["OPS", "SEVERITIES", "Rule", "default_rules_text", "load_rules"]
