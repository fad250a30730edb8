"""The CLI's command table: every command registered once, its help line the command's own, and
``--help``/``--version`` answered without loading the platform."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

import featurelake
from featurelake.cli.app import COMMANDS, cli


def test_every_command_resolves_and_its_help_line_is_its_docstring() -> None:
    ctx = click.Context(cli)
    for name, (_, _, short) in COMMANDS.items():
        command = cli.get_command(ctx, name)
        assert command is not None, name
        assert command.get_short_help_str(limit=200) == short, name


def test_help_lists_every_command_and_imports_no_platform_module() -> None:
    code = (
        "import sys\n"
        "from featurelake.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'pyarrow', 'pyiceberg', 'duckdb', 'numpy', 'pydantic', 'rich'}"
        " or m.startswith(('featurelake.api', 'featurelake.cli.view_cmds', 'featurelake.project')))\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for name in COMMANDS:
        assert f"  {name} " in out, name
    assert "HEAVY []" in out


def test_version_is_the_package_version() -> None:
    from featurelake.version import __version__

    out = subprocess.run(
        [sys.executable, "-m", "featurelake", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == f"featurelake, version {__version__}"


def test_sync_records_the_key_type_so_get_needs_no_catalog(tmp_path: Path) -> None:
    from featurelake.serving import open_store
    from tests.helpers import day, make_project

    root = make_project(tmp_path / "proj")
    with featurelake.open(root) as fl:
        fl.apply()
        fl.backfill("user_features", day(0), day(3))
        fl.sync()
        store = open_store(fl.project.config)
        mark = store.get_watermark("user_features")
        store.close()
    assert mark is not None and mark.key_type == "long"
    code = (
        "import sys\nfrom featurelake.cli.main import main\n"
        f"try:\n    main(['-C', {str(root)!r}, 'get', 'user_features', '1', '--json'])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print('LOADED', sorted(m for m in sys.modules if m.startswith(('pyiceberg.catalog', 'featurelake.lakehouse.catalog'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert '"status": "PRESENT"' in out or '"status": "OUTSIDE_MAX_AGE"' in out
    assert "LOADED []" in out
