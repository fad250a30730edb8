"""Lineage recorded on every snapshot featurelake commits: code version, run id, pipeline user, window."""

from __future__ import annotations

import getpass
import os
import re
import secrets
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from featurelake.errors import UsageError

CODE_VERSION = "code-version"
RUN_ID = "run-id"
PIPELINE_USER = "pipeline-user"
VIEW = "featurelake.view"
WINDOW_START = "featurelake.window-start"
WINDOW_END = "featurelake.window-end"
OPERATION = "featurelake.operation"

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
#: The code version of the job running in this context: ``{"dir": project dir}``, plus ``"version"``: a
#: future of what git gives, once asked for (:func:`code_version`, :func:`read_code_version_early`).
_JOB_VERSION: ContextVar[dict[str, Any] | None] = ContextVar("featurelake_job_code_version", default=None)


def new_run_id() -> str:
    """A sortable, unique run id such as ``20261127T223000_3fa9c1``."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}_{secrets.token_hex(3)}"


def check_run_id(run_id: str) -> str:
    if not _RUN_ID.match(run_id or ""):
        raise UsageError(
            f"run id {run_id!r} is not valid: use 1-64 letters, digits, '_' or '-' (it becomes branch audit_<run id>)"
        )
    return run_id


def _git_version(directory: str) -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", directory, *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    try:
        dirty = bool(git("status", "--porcelain", "--", "."))
    except (OSError, subprocess.SubprocessError):
        dirty = False
    return f"{commit}-dirty" if dirty else commit


def code_version(project_dir: Path) -> str:
    """Git commit of the project directory, ``-dirty`` when it has uncommitted changes, else ``unknown``.

    Inside :func:`one_code_version` for the same directory, the version read first is given again.
    """
    override = os.environ.get("FEATURELAKE_CODE_VERSION")
    if override:
        return override
    directory, job = str(project_dir), _JOB_VERSION.get()
    if job is None or job["dir"] != directory:
        return _git_version(directory)
    if "version" not in job:
        done: Future[str] = Future()
        done.set_result(_git_version(directory))
        job["version"] = done
    return str(job["version"].result())


def read_code_version_early(project_dir: Path) -> None:
    """Start reading the job's code version now, on a thread, for the job's first commit to find ready
    (git's processes then overlap the job's compute instead of delaying its first commit). Does nothing
    outside :func:`one_code_version`, with ``FEATURELAKE_CODE_VERSION`` set, or when already read."""
    directory, job = str(project_dir), _JOB_VERSION.get()
    if (
        job is None
        or job["dir"] != directory
        or "version" in job
        or os.environ.get("FEATURELAKE_CODE_VERSION")
    ):
        return
    pending: Future[str] = Future()

    def read() -> None:
        try:
            pending.set_result(_git_version(directory))
        except BaseException as exc:  # _git_version returns "unknown" on git's errors; this is the rest
            pending.set_exception(exc)

    job["version"] = pending
    threading.Thread(target=read, name="featurelake-code-version", daemon=True).start()


@contextmanager
def one_code_version(project_dir: Path) -> Iterator[None]:
    """Within the block (one job), every commit names the code version git gave at the job's first commit.

    A backfill commits its branch, its audit-log rows and its statistics rows: they are one run of one code,
    so they name one version, and git runs once per job (two processes, tens of milliseconds in a large
    repository) instead of once per commit. Read lazily: a job that commits nothing runs no git. Threads the
    job starts do not see the pin (context variables are per thread) and read git themselves.
    """
    token = _JOB_VERSION.set({"dir": str(project_dir)})
    try:
        yield
    finally:
        _JOB_VERSION.reset(token)


def pipeline_user() -> str:
    """Who runs the job: ``FEATURELAKE_PIPELINE_USER`` (set it in schedulers), else the OS user."""
    user = os.environ.get("FEATURELAKE_PIPELINE_USER")
    if user:
        return user
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def lineage_properties(project_dir: Path, run_id: str, **extra: str) -> dict[str, str]:
    """Snapshot summary properties for a commit made by run ``run_id``."""
    props = {CODE_VERSION: code_version(project_dir), RUN_ID: run_id, PIPELINE_USER: pipeline_user()}
    props.update(extra)
    return props
