"""``featurelake init DIR``: scaffold a project from the packaged templates."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from featurelake.config import CONFIG_FILE
from featurelake.errors import UsageError


def scaffold(directory: Path) -> list[Path]:
    """Write featurelake.yaml, features.py, .gitignore and data/ into ``directory`` (never overwriting)."""
    directory = directory.expanduser().resolve()
    target = directory / CONFIG_FILE
    if target.exists():
        raise UsageError(f"{target} already exists: {directory} is already a featurelake project")
    directory.mkdir(parents=True, exist_ok=True)
    templates = resources.files("featurelake") / "templates"
    written = []
    for name, dest in (
        (CONFIG_FILE, CONFIG_FILE),
        ("features.py", "features.py"),
        ("gitignore", ".gitignore"),
    ):
        path = directory / dest
        if path.exists():
            continue
        text = (templates / name).read_text()
        if name == CONFIG_FILE:
            text = text.replace("{project}", directory.name)
        path.write_text(text)
        written.append(path)
    (directory / "data").mkdir(exist_ok=True)
    return written
