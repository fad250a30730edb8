"""The ``featurelake`` click group, and the one table that registers every command.

Commands live in ``cli/*_cmds.py`` next to nothing else's; :data:`COMMANDS` names each one with the module
that defines it and its one-line help. The group imports a command's module only when that command runs,
so ``featurelake --help`` and ``--version`` load click and nothing of the platform (a test keeps the help
lines here equal to the commands' docstrings).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from featurelake.version import __version__

if TYPE_CHECKING:
    from featurelake.api import Featurelake

# name -> (module under featurelake.cli, attribute, one-line help shown by `featurelake --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "init": ("view_cmds", "init", "Scaffold a project in DIRECTORY."),
    "apply": ("view_cmds", "apply", "Create or evolve the feature tables to match features.py."),
    "backfill": (
        "view_cmds",
        "backfill",
        "Write-Audit-Publish VIEW for [START, END): exit 0 published, 1 refused, 2 usage error.",
    ),
    "audit": (
        "view_cmds",
        "audit",
        "Re-audit the kept branch audit_<RUN_ID> of VIEW, or re-render a published run's report (exit 1 if failed).",
    ),
    "publish": ("view_cmds", "publish", "Re-audit and publish the kept branch audit_<RUN_ID> of VIEW."),
    "discard": (
        "view_cmds",
        "discard",
        "Remove the kept branch audit_<RUN_ID> of VIEW (main is not touched).",
    ),
    "history": (
        "view_cmds",
        "history",
        "Snapshots of VIEW (a feature view, or a table as NAMESPACE.TABLE) with their lineage, newest first.",
    ),
    "read": (
        "view_cmds",
        "read",
        "Time-travel read of VIEW: a feature view's name, or any table of the project as NAMESPACE.TABLE (predictions.<model>, <namespace>._audits, <namespace>._stats).",
    ),
    "audits": (
        "audit_cmds",
        "audits",
        "The audit log of VIEW: every audit's verdicts (from <namespace>._audits).",
    ),
    "stats": (
        "audit_cmds",
        "stats",
        "Feature statistics of VIEW's published data (assembled from <namespace>._stats).",
    ),
    "training-set": (
        "training_cmds",
        "training_set",
        "Join features point in time onto ENTITIES and write them with their provenance to OUTPUT.",
    ),
    "services": (
        "services_cmds",
        "services",
        "Feature services applied to the catalog: name, version, features and description.",
    ),
    "models": ("models_cmds", "models", "The model registry: versions, stages, aliases and their lineage."),
    "predict": (
        "predict_cmds",
        "predict",
        "Score VIEW with MODEL into predictions.<model> through Write-Audit-Publish.",
    ),
    "sync": (
        "serving_cmds",
        "sync",
        "Sync VIEW (default: every view) from Iceberg main to the online store, incrementally.",
    ),
    "get": ("serving_cmds", "get", "Look up KEYS of VIEW in the online store."),
    "ingest": (
        "stream_cmds",
        "ingest",
        "Consume a stream (Redis Streams, NATS JetStream) into VIEW in audited micro-batches, at least once.",
    ),
    "serve": ("serving_cmds", "serve", "Serve online features and predictions over HTTP."),
    "ui": ("ui_cmds", "ui", "Serve the web UI: views, runs, audits, models, online store and alerts."),
    "consistency": (
        "consistency_cmds",
        "consistency",
        "Compare VIEW's online store with Iceberg main's latest value per key: exit 0 consistent, 1 keys differ, 2 usage error.",
    ),
    "monitor": (
        "monitor_cmds",
        "monitor",
        "Evaluate the alert rules now and notify the channels (exit 1 if a channel failed).",
    ),
    "maintain": (
        "maintain_cmds",
        "maintain",
        "Compact, expire snapshots and remove orphan files of VIEW (or --all); no operation flag = all three.",
    ),
}


class Ctx:
    """What every command receives: the project directory, and the project opened on first use."""

    def __init__(self, project: str, debug: bool) -> None:
        self.project_dir = project
        self.debug = debug
        self._fl: Featurelake | None = None

    @property
    def fl(self) -> Featurelake:
        if self._fl is None:
            from featurelake.api import open as open_project

            self._fl = open_project(self.project_dir)
        return self._fl

    def close(self) -> None:
        if self._fl is not None:
            self._fl.close()


pass_ctx = click.make_pass_decorator(Ctx)


@contextmanager
def progress(enabled: bool) -> Iterator[Any]:
    """A spinner on stderr whose text follows the job's phases; silent when disabled (--json)."""
    if not enabled:
        yield None
        return
    from featurelake.cli import render

    with render.err.status("starting") as status:

        def update(msg: str) -> None:
            status.update(msg)
            if not render.err.is_terminal:
                render.err.print(f"[dim]- {msg}[/]")

        yield update


class LazyGroup(click.Group):
    """A group whose commands come from :data:`COMMANDS`, each imported when it is invoked."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*COMMANDS, *(n for n in super().list_commands(ctx) if n not in COMMANDS)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return super().get_command(ctx, cmd_name)
        module, attr, _ = COMMANDS[cmd_name]
        command = getattr(importlib.import_module(f"featurelake.cli.{module}"), attr)
        assert isinstance(command, click.Command), f"{module}.{attr} is not a click command"
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # The registered help lines, so `--help` imports no command module.
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, _, short) in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-C",
    "--project",
    default=".",
    show_default=True,
    help="Project directory (holds featurelake.yaml).",
    envvar="FEATURELAKE_PROJECT_DIR",
)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(__version__, prog_name="featurelake")
@click.pass_context
def cli(ctx: click.Context, project: str, debug: bool) -> None:
    """featurelake: audited, reproducible ML features on Apache Iceberg."""
    ctx.obj = Ctx(project, debug)
    ctx.call_on_close(ctx.obj.close)
