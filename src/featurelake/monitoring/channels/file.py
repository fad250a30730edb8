"""File channel: the alert audit trail, one JSON object per event per line (JSONL), appended."""

from __future__ import annotations

import json
import os
from pathlib import Path

from featurelake.errors import ConfigError
from featurelake.monitoring.channels import AlertEvent, Channel, ChannelOptions, DeliveryError


class FileOptions(ChannelOptions):
    path: str = ".featurelake/alerts.jsonl"
    """The JSONL file (relative paths resolve against the project directory)."""


class FileChannel(Channel):
    """Appends every event to a JSONL file; it also receives the record of failed deliveries elsewhere."""

    Options = FileOptions

    def __init__(self, options: ChannelOptions, project: object, where: str) -> None:
        super().__init__(options, project, where)  # type: ignore[arg-type]
        assert isinstance(options, FileOptions)
        self.path: Path = self.project.config.path(options.path)
        # Refuse an unwritable path before anything is evaluated, so no alert state moves on without it.
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a"):
                pass
        except OSError as exc:
            raise ConfigError(
                f"alert log {self.path} is not writable ({exc.strerror}): fix {where}.path in featurelake.yaml "
                "or the file's permissions; no alert was evaluated or notified"
            ) from None

    def send(self, events: list[AlertEvent]) -> None:
        lines = "".join(json.dumps(e.to_dict(), sort_keys=True, default=str) + "\n" for e in events)
        try:
            # One write of whole lines in append mode: concurrent writers never interleave within a line.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, lines.encode())
            finally:
                os.close(fd)
        except OSError as exc:
            raise DeliveryError(f"cannot append to {self.path}: {exc.strerror}", events) from None

    def describe(self) -> str:
        return f"{self.where} (file {self.path})"
