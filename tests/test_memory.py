"""featurelake.memory: the room a job has left, under an address-space cap, a cgroup limit or neither."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from featurelake import memory


def test_headroom_is_at_most_the_machines_available_memory() -> None:
    room = memory.headroom()
    available = memory._available()
    assert room is not None and available is not None and 0 < room <= available


def test_an_address_space_cap_bounds_the_room_and_check_room_refuses_past_it() -> None:
    """In a child capped at its address space now plus 64 MB: the room is about 64 MB, 16 MB fit, 256 MB are
    refused with a MemoryError naming what was to be read."""
    code = textwrap.dedent(
        """
        import resource
        from featurelake import memory
        size = memory._status_bytes("VmSize")
        cap = size + 64 * 1024**2
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        room = memory.headroom()
        print(room)
        memory.check_room(16 * 1024**2, "reading 1 row")
        try:
            memory.check_room(256 * 1024**2, "reading 9 rows of big at once")
        except MemoryError as exc:
            print(exc)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    room, message = proc.stdout.splitlines()
    assert 32 * 1024**2 < int(room) <= 64 * 1024**2
    assert message.startswith("reading 9 rows of big at once needs about 268 MB in memory")
    assert "MB left" in message


@pytest.mark.parametrize(
    ("version", "limit_file", "usage_file", "unlimited"),
    [
        ("v2", "memory.max", "memory.current", "max"),
        ("v1", "memory.limit_in_bytes", "memory.usage_in_bytes", "9223372036854771712"),
    ],
)
def test_a_cgroup_limit_bounds_the_room(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    version: str,
    limit_file: str,
    usage_file: str,
    unlimited: str,
) -> None:
    """The group named in /proc/self/cgroup, under a cgroup mount standing in for /sys/fs/cgroup."""
    cgroup = tmp_path / "cgroup"
    group = cgroup / ("memory/user/job" if version == "v1" else "user/job")
    group.mkdir(parents=True)
    proc = tmp_path / "self-cgroup"
    proc.write_text("4:memory:/user/job\n" if version == "v1" else "0::/user/job\n")
    real_read = Path.read_text
    monkeypatch.setattr(
        Path, "read_text", lambda p, *a, **k: real_read(proc if str(p) == "/proc/self/cgroup" else p, *a, **k)
    )
    monkeypatch.setattr(memory, "_CGROUP", cgroup)
    monkeypatch.setattr(memory, "_available", lambda: 1 << 40)
    assert memory._cgroup_room() is None  # no group files yet
    (group / limit_file).write_text(unlimited + "\n")
    (group / usage_file).write_text("1000\n")
    assert memory._cgroup_room() is None  # no limit
    (group / limit_file).write_text(f"{50 * 1024**2}\n")
    (group / usage_file).write_text(f"{20 * 1024**2}\n")
    assert memory._cgroup_room() == 30 * 1024**2
    assert memory.headroom() == 30 * 1024**2
    with pytest.raises(
        MemoryError, match="reading 5 rows needs about 42 MB in memory and this process has 31 MB"
    ):
        memory.check_room(40 * 1024**2, "reading 5 rows")
