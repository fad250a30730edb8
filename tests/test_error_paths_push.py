"""The push buffer's directory and file, when they cannot be used: a ``ConfigError`` naming the path and what
to do, and the user's file left exactly as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from featurelake.errors import ConfigError
from featurelake.streaming.buffer import PushBuffer


def test_a_buffer_file_that_is_not_a_database_is_named_and_kept(tmp_path: Path) -> None:
    directory = tmp_path / "push"
    directory.mkdir()
    damaged = directory / "buffer.db"
    damaged.write_bytes(b"not an sqlite file at all\n" * 200)
    with pytest.raises(ConfigError) as ei:
        PushBuffer(directory)
    msg = str(ei.value)
    assert f"push buffer {damaged} is not an SQLite database" in msg, msg
    assert "move it aside" in msg and "push.buffer (FEATURELAKE_PUSH__BUFFER)" in msg, msg
    assert damaged.read_bytes() == b"not an sqlite file at all\n" * 200


def test_a_buffer_directory_that_cannot_be_made_says_what_push_buffer_must_name(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("kept\n")
    with pytest.raises(ConfigError) as ei:
        PushBuffer(blocker / "push")  # a directory inside a regular file
    msg = str(ei.value)
    assert f"cannot open the push buffer in {blocker / 'push'}" in msg, msg
    assert "push.buffer must name a writable local directory" in msg, msg
    assert blocker.read_text() == "kept\n"
