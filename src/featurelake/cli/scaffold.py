"""``featurelake init DIR``: scaffold a project from the packaged templates."""

from __future__ import annotations

import json
from functools import partial
from importlib import resources
from pathlib import Path

import yaml

from featurelake.config import CONFIG_FILE
from featurelake.errors import UsageError
from featurelake.lakehouse.storage import write_atomic, writing


def _yaml_scalar(text: str) -> str:
    """``text`` as a YAML value: plain when it reads back unchanged, else double-quoted."""
    try:
        if yaml.safe_load(f"k: {text}") == {"k": text}:
            return text
    except yaml.YAMLError:
        pass
    return json.dumps(text)  # a JSON string is a YAML double-quoted scalar


def scaffold(directory: Path) -> list[Path]:
    """Write features.py, .gitignore, data/ and featurelake.yaml into ``directory`` (never overwriting).

    ``featurelake.yaml`` comes last: it is what marks a project, so an init that failed half-way (a full disk)
    can simply be run again.
    """
    directory = directory.expanduser().resolve()
    target = directory / CONFIG_FILE
    if target.exists():
        raise UsageError(f"{target} already exists: {directory} is already a featurelake project")
    templates = resources.files("featurelake") / "templates"
    written = []
    with writing(directory, "create the project directory"):
        directory.mkdir(parents=True, exist_ok=True)
    for name, dest in (
        ("features.py", "features.py"),
        ("gitignore", ".gitignore"),
        (CONFIG_FILE, CONFIG_FILE),
    ):
        path = directory / dest
        if path.exists():
            continue
        text = (templates / name).read_text()
        if name == CONFIG_FILE:
            text = text.replace("{project}", _yaml_scalar(directory.name))
        with writing(path, "write the new project's files"):
            write_atomic(path, partial(Path.write_text, data=text))  # whole or not at all
        written.append(path)
        if name == "gitignore":
            with writing(directory / "data", "create the new project's data directory"):
                (directory / "data").mkdir(exist_ok=True)
    return written
