"""Running ``features.py``: its mistakes as one clear ``ConfigError`` with ``file:line``, and a time limit.

- A ``SyntaxError`` (in ``features.py`` or a module it imports) names that file and line and quotes the line.
- Any other exception raised while the file runs names the line of ``features.py`` that raised it (and the
  line in a project module it called, when the error came from there).
- ``sys.exit()`` / ``raise SystemExit`` is refused: definitions must not end the process (it would exit with
  that code and no message).
- ``features.load_timeout`` (default 30s, 0 = none) bounds the run. In the main thread a ``SIGALRM`` interval
  timer interrupts it, even inside ``time.sleep`` or a blocking socket read, and fires again every second in
  case the code swallowed the first interrupt; the previous handler and timer are restored afterwards.
  Elsewhere (signals only reach the main thread) the file runs in a daemon thread the caller waits on; when
  time is up the caller gets the error and the thread is abandoned (it keeps running until it returns or
  the process exits).
- ``os._exit()`` cannot be caught in-process: it ends the process at once, with its code and no message
  (docs/reliability.md).
"""

from __future__ import annotations

import signal
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType

from featurelake.errors import ConfigError

SETTING = "features.load_timeout (FEATURELAKE_FEATURES__LOAD_TIMEOUT)"


class _TimedOut(BaseException):
    """Raised into the running definitions by the timer (a BaseException: ``except Exception`` misses it)."""


def _frames(tb: TracebackType | None) -> list[traceback.FrameSummary]:
    return list(traceback.extract_tb(tb)) if tb is not None else []


def _where(path: Path, tb: TracebackType | None) -> str:
    """``path:line`` of the innermost frame in ``path``, plus the innermost project frame when deeper."""
    frames = _frames(tb)
    own = [f for f in frames if f.filename == str(path)]
    where = f"{path}:{own[-1].lineno}" if own else str(path)
    project = str(path.parent) + "/"
    deeper = [f for f in frames if f.filename.startswith(project) and "site-packages" not in f.filename]
    if deeper and (not own or deeper[-1] is not own[-1]):
        where += f" (raised at {deeper[-1].filename}:{deeper[-1].lineno})"
    return where


def _syntax_error(path: Path, exc: SyntaxError) -> ConfigError:
    file = exc.filename if exc.filename and Path(exc.filename).is_file() else None
    if file is None:  # compile()/eval() of a string at run time: the line of features.py that did it
        where = _where(path, exc.__traceback__)
    else:
        where = f"{file}:{exc.lineno}" if exc.lineno else file
    line = (exc.text or "").strip()
    quoted = f" in `{line[:100]}`" if line else ""
    return ConfigError(f"{where}: SyntaxError: {exc.msg}{quoted}; fix the file and run the command again")


def describe_failure(path: Path, exc: BaseException) -> ConfigError:
    """The ConfigError for ``exc`` raised while ``path`` ran (SyntaxError, SystemExit, anything else)."""
    if isinstance(exc, SyntaxError):
        return _syntax_error(path, exc)
    where = _where(path, exc.__traceback__)
    if isinstance(exc, SystemExit):
        return ConfigError(
            f"{where}: the definitions called sys.exit({exc.code!r}) while loading; features.py must only define "
            "entities and feature views: remove the call (it would end every featurelake command)"
        )
    if isinstance(exc, ConfigError):  # a definition featurelake refused (bad name, unknown type, ...)
        return ConfigError(f"{where}: {exc}")
    message = " ".join(str(exc).split()) or "(no message)"
    return ConfigError(
        f"{where}: {type(exc).__name__}: {message} (raised while loading the feature definitions)"
    )


def run_definitions(path: Path, run: Callable[[], None], timeout: float | None) -> None:
    """``run()`` (which executes ``path``) within ``timeout`` seconds; its failures as ``ConfigError``."""
    alarm: _Alarm | None = None
    finished = True
    try:
        if not timeout or timeout <= 0:
            run()
        elif threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
            alarm = _Alarm(timeout)
            try:
                run()
            finally:
                alarm.disarm()
        else:
            finished = _run_in_thread(run, timeout)
    except _TimedOut as exc:
        if alarm is not None:
            alarm.disarm()  # idempotent: the alarm may have fired before the `finally` above could run
        raise ConfigError(
            f"{_where(path, exc.__traceback__)}: loading the feature definitions took longer than {timeout:g}s "
            f"and was stopped there; features.py should only define entities and feature views: move slow work "
            f"(downloads, queries, sleeps) out of it, or raise {SETTING}"
        ) from None
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SyntaxError, SystemExit, a refused definition, anything the code raised
        raise describe_failure(path, exc) from exc
    if not finished:
        raise ConfigError(
            f"{path}: loading the feature definitions took longer than {timeout:g}s (outside the main thread it "
            "cannot be interrupted: it goes on in a background thread until it returns or the process exits); "
            f"features.py should only define entities and feature views: move slow work out of it, or raise {SETTING}"
        )


class _Alarm:
    """A SIGALRM interval timer raising ``_TimedOut`` in the main thread; ``disarm`` restores what was there."""

    def __init__(self, timeout: float) -> None:
        self.active = True
        self.started = time.monotonic()
        self.previous = signal.signal(signal.SIGALRM, self._fire)
        # At the deadline, then every second: a bare `except:` in the definitions cannot swallow it for good.
        self.outer = signal.setitimer(signal.ITIMER_REAL, timeout, 1.0)

    def _fire(self, signum: int, frame: FrameType | None) -> None:
        if self.active:
            raise _TimedOut

    def disarm(self) -> None:
        for _ in range(3):  # the alarm can interrupt this very method once; the next comes a second later
            try:
                if not self.active:
                    return
                self.active = False
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, self.previous if self.previous is not None else signal.SIG_DFL)
                delay, interval = self.outer
                if delay > 0:  # someone else's timer was running: give it back what is left of it
                    left = max(delay - (time.monotonic() - self.started), 0.001)
                    signal.setitimer(signal.ITIMER_REAL, left, interval)
                return
            except _TimedOut:
                self.active = True  # not done: go round again
                continue


def _run_in_thread(run: Callable[[], None], timeout: float) -> bool:
    """``run()`` in a daemon thread, waited on for ``timeout`` seconds; False when it is still running.
    Its exception, if any, is raised here."""
    failure: list[BaseException] = []

    def target() -> None:
        try:
            run()
        except BaseException as exc:  # handed to the waiting caller
            failure.append(exc)

    worker = threading.Thread(target=target, name="featurelake-load-definitions", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        return False
    if failure:
        raise failure[0]
    return True


__all__ = ["SETTING", "describe_failure", "run_definitions"]
