"""Console channel: one coloured line per event on stderr (stdout stays clean for ``--json``)."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape

from featurelake.monitoring.channels import AlertEvent, Channel

_STYLE = {"info": "blue", "warning": "yellow", "error": "red", "critical": "bold red"}


class ConsoleChannel(Channel):
    """Development and debugging: alerts printed as they happen."""

    def send(self, events: list[AlertEvent]) -> None:
        console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)
        for e in events:
            style = "green" if e.status == "resolved" else _STYLE.get(e.severity, "white")
            console.print(f"[{style}]{escape(e.headline())}[/]")
