"""Run the real ``featurelake`` CLI in this process, freezing at one named point of the backfill.

``python -m tests.reliability.crash_runner POINT -- <featurelake args>``: when the backfill reaches POINT it
prints ``PAUSED POINT`` on stderr and sleeps until the test SIGKILLs it, so every kill lands exactly in the
phase under test. The product code is not changed: the pause wraps the library functions the job calls.
Points, in the order the job reaches them:

- ``writing``: the window's first data file is on disk, nothing is committed: no branch exists yet (the
  local engine creates it in the write's commit)
- ``written``: the window's data files are committed on the branch, the audit has not run
- ``audit``: the audit ran (its log, statistics and reports are written), nothing published
- ``publish``: publish loaded the table and is about to fast-forward main
- ``published``: main points at the run's snapshot, the branch is not yet removed
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any


def _pause(point: str) -> None:
    sys.stderr.write(f"PAUSED {point}\n")
    sys.stderr.flush()
    while True:  # the test kills us here
        time.sleep(3600)


def _after(fn: Callable[..., Any], point: str) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        out = fn(*args, **kwargs)
        _pause(point)
        return out

    return wrapped


def _before(fn: Callable[..., Any], point: str) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        _pause(point)
        return fn(*args, **kwargs)

    return wrapped


def install(point: str) -> None:
    from featurelake.auditing import wap_run
    from featurelake.engines.local import LocalEngine
    from featurelake.jobs import backfill
    from featurelake.lakehouse import compat, wap

    if point == "writing":
        compat.write_data_files = _after(compat.write_data_files, point)
    elif point == "written":
        LocalEngine.write_window = _after(LocalEngine.write_window, point)  # type: ignore[method-assign]
    elif point == "audit":
        # A backfill audits in auditing/wap_run.py (shared with micro-batches); audit/publish re-audit here.
        wap_run.run_audit = _after(wap_run.run_audit, point)
        backfill.run_audit = _after(backfill.run_audit, point)
    elif point == "publish":
        wap.fast_forward = _before(wap.fast_forward, point)
    elif point == "published":
        # The commit that moves main also removes the branch: pause right after it (statistics not recorded).
        wap.fast_forward = _after(wap.fast_forward, point)
    elif point != "none":
        raise SystemExit(f"unknown pause point {point!r}")


if __name__ == "__main__":
    point, sep, *args = sys.argv[1:]
    assert sep == "--", "usage: crash_runner POINT -- <featurelake args>"
    install(point)
    from featurelake.cli.main import main

    sys.argv = ["featurelake", *args]
    main()
