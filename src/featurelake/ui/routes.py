"""The UI's URLs, in one place: every page link is built here from the mount prefix (``""`` or ``/ui``)."""

from __future__ import annotations

from urllib.parse import quote, urlencode


def _q(segment: str) -> str:
    return quote(segment, safe="")


def view_href(prefix: str, view: str, *, snapshot: int | None = None) -> str:
    query = f"?{urlencode({'snapshot': snapshot})}#preview" if snapshot is not None else ""
    return f"{prefix}/views/{_q(view)}{query}"


def run_href(prefix: str, view: str, run_id: str) -> str:
    return f"{prefix}/views/{_q(view)}/runs/{_q(run_id)}"


def report_href(prefix: str, view: str, run_id: str) -> str:
    return f"{run_href(prefix, view, run_id)}/report"


def model_href(prefix: str, name: str) -> str:
    return f"{prefix}/models/{_q(name)}"


def version_href(prefix: str, name: str, version: str) -> str:
    return f"{prefix}/models/{_q(name)}/{_q(version)}"
