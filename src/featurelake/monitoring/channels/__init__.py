"""Notification channels: one small interface, backends picked by ``type`` through a lazy name -> loader map.

``monitoring.channels`` in featurelake.yaml lists them::

    channels:
      - {type: console}
      - {type: file, path: .featurelake/alerts.jsonl}
      - {type: slack, webhook_url_env: SLACK_WEBHOOK_URL, min_severity: error}

Every channel takes ``min_severity`` (default ``info``): events of lower severity are not sent to it.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from featurelake.errors import ConfigError
from featurelake.monitoring.rules import SEVERITIES

if TYPE_CHECKING:
    from featurelake.project import Project

Status = Literal["firing", "resolved", "delivery_failed"]


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class AlertEvent:
    """One notification: an alert instance started firing (or fires again), resolved, or failed delivery."""

    status: Status
    alert: str
    severity: str
    labels: dict[str, str]
    value: float | None
    threshold: float | None
    summary: str
    started_at: float
    at: float
    project: str
    repeat: bool = False
    evaluated_by: str = "local"
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["started_at"], d["at"] = _iso(self.started_at), _iso(self.at)
        if d["error"] is None:
            del d["error"]
        if not d["extra"]:
            del d["extra"]
        return d

    def headline(self) -> str:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
        tag = {"firing": "FIRING", "resolved": "RESOLVED", "delivery_failed": "UNDELIVERED"}[self.status]
        again = " (repeat)" if self.repeat else ""
        return f"[{tag}] {self.severity} {self.alert}{again} {{{labels}}}: {self.summary}"


class DeliveryError(RuntimeError):
    """A channel could not deliver ``events`` (after its retries). Caught by the notifier, never by users."""

    def __init__(self, message: str, events: list[AlertEvent]) -> None:
        super().__init__(message)
        self.events = events


class ChannelOptions(BaseModel):
    """Options every channel takes; subclasses add their own."""

    model_config = ConfigDict(extra="forbid")

    type: str
    min_severity: Literal["info", "warning", "error", "critical"] = "info"
    """Events below this severity are not sent to the channel."""


class Channel(ABC):
    """Where alert events go. Subclasses declare ``Options`` and implement :meth:`send`."""

    Options: ClassVar[type[ChannelOptions]] = ChannelOptions

    def __init__(self, options: ChannelOptions, project: Project, where: str) -> None:
        self.options = options
        self.project = project
        self.where = where

    def accepts(self, event: AlertEvent) -> bool:
        if event.status == "delivery_failed":
            return True
        return SEVERITIES.index(event.severity) >= SEVERITIES.index(self.options.min_severity)

    @abstractmethod
    def send(self, events: list[AlertEvent]) -> None:
        """Deliver ``events`` in order; raise DeliveryError when they could not be delivered."""

    def describe(self) -> str:
        return f"{self.where} ({self.options.type})"


# name -> (module, class, extra that provides its dependencies)
AVAILABLE_CHANNELS: dict[str, tuple[str, str, str | None]] = {
    "console": ("featurelake.monitoring.channels.console", "ConsoleChannel", None),
    "file": ("featurelake.monitoring.channels.file", "FileChannel", None),
    "slack": ("featurelake.monitoring.channels.slack", "SlackChannel", None),
}


def load_channel(config: dict[str, Any], index: int, project: Project) -> Channel:
    """Build channel ``index`` of ``monitoring.channels`` from its config; ConfigError names it."""
    where = f"monitoring.channels[{index}]"
    kind = config.get("type") if isinstance(config, dict) else None
    if kind not in AVAILABLE_CHANNELS:
        raise ConfigError(
            f"{where}: unknown channel type {kind!r}: use one of {', '.join(AVAILABLE_CHANNELS)}"
        )
    module_name, cls_name, extra = AVAILABLE_CHANNELS[kind]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        hint = f": pip install 'featurelake[{extra}]'" if extra else ""
        raise ConfigError(f"channel {kind!r} is not available ({exc.name} is not installed){hint}") from exc
    cls: type[Channel] = getattr(module, cls_name)
    try:
        options = cls.Options.model_validate(config)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or kind}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{where} ({kind}): {problems}") from None
    return cls(options, project, where)


__all__ = [
    "AVAILABLE_CHANNELS",
    "AlertEvent",
    "Channel",
    "ChannelOptions",
    "DeliveryError",
    "load_channel",
]
