"""The ``featurelake`` entry point. Every error is one clear line (``--debug`` for a traceback)."""

from __future__ import annotations

import sys

import click

from featurelake.cli.app import cli
from featurelake.errors import AuditFailed, FeaturelakeError


def _error_line(message: str) -> None:
    # Plain write, never wrapped: scripts and log scrapers rely on exactly one "error:" line.
    print("error: " + " ".join(message.split()), file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and turn featurelake errors into one line and an exit code."""
    args = list(argv if argv is not None else sys.argv[1:])
    debug = "--debug" in args
    if debug:  # accept --debug anywhere on the line, not only before the command
        args = ["--debug", *(a for a in args if a != "--debug")]
    try:
        cli.main(args=args, prog_name="featurelake", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except click.exceptions.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except AuditFailed as exc:
        if debug:
            raise
        report = exc.report
        if report is not None:
            from featurelake.cli import render

            render.err.print(render.audit_table(report))  # type: ignore[arg-type]
        _error_line(str(exc))
        sys.exit(exc.exit_code)
    except FeaturelakeError as exc:
        if debug:
            raise
        _error_line(str(exc))
        sys.exit(exc.exit_code)
    except Exception as exc:
        if debug:
            raise
        from featurelake.lakehouse.storage import io_failure, is_storage_failure, storage_error

        if is_storage_failure(exc):  # object storage failed somewhere no job wrapped it: still one clear line
            err = storage_error(exc, "finish the command")
            _error_line(str(err))
            sys.exit(err.exit_code)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename:  # a file no command wrapped
            failed = io_failure(exc, exc.filename, "finish the command")
            _error_line(f"{failed} (re-run with --debug for the traceback)")
            sys.exit(failed.exit_code)
        _error_line(f"unexpected {type(exc).__name__}: {exc} (re-run with --debug for the traceback)")
        sys.exit(1)


if __name__ == "__main__":
    main()
