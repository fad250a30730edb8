"""How much memory this process may still take: the one place that reads the limits a job must fit in.

A job about to read a batch in one piece compares the batch's size with :func:`headroom` and stops with its
usual out-of-memory message (which names the setting to lower) instead of starting an allocation that a
native library cannot recover from: under an address-space cap (``RLIMIT_AS``) or a cgroup limit, Arrow's
and DuckDB's C++ code may abort the process (``std::bad_alloc``) rather than raise.
"""

from __future__ import annotations

import resource
from pathlib import Path

import duckdb
import pyarrow as pa

_CGROUP = Path("/sys/fs/cgroup")


def _status_bytes(key: str) -> int | None:
    """A ``/proc/self/status`` figure (``VmSize``, ...) in bytes, None where there is no such file."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (no limit) is not a number


def _cgroup_room() -> int | None:
    """The limit minus the usage of this process's memory cgroup (v2 ``memory.max``/``memory.current``, v1
    ``memory.limit_in_bytes``/``memory.usage_in_bytes``), None without a limit. Inside a container the path
    ``/proc/self/cgroup`` names may not exist under the mount: the mount's root is the container's group."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    candidates: list[tuple[Path, str, str]] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if controllers == "":
            for base in (_CGROUP / rel, _CGROUP):
                candidates.append((base, "memory.max", "memory.current"))
        elif "memory" in controllers.split(","):
            for base in (_CGROUP / "memory" / rel, _CGROUP / "memory"):
                candidates.append((base, "memory.limit_in_bytes", "memory.usage_in_bytes"))
    for base, limit_file, usage_file in candidates:
        limit, used = _read_int(base / limit_file), _read_int(base / usage_file)
        if (base / limit_file).is_file():
            # v1 writes "no limit" as a huge number (PAGE_COUNTER_MAX pages); v2 as "max" (None here)
            return None if limit is None or used is None or limit >= 1 << 60 else limit - used
    return None


def _available() -> int | None:
    """The machine's ``MemAvailable`` in bytes."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def headroom() -> int | None:
    """Bytes this process can still allocate: the least of its address-space cap minus the address space in
    use, its cgroup's limit minus its usage and the machine's available memory; None when none is known."""
    rooms = [_available(), _cgroup_room()]
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    size = _status_bytes("VmSize")
    if soft != resource.RLIM_INFINITY and size is not None:
        rooms.append(soft - size)
    known = [r for r in rooms if r is not None]
    return max(0, min(known)) if known else None


def check_room(needed: int, what: str) -> None:
    """Raise ``MemoryError`` when ``needed`` bytes for ``what`` exceed :func:`headroom` (callers turn it into
    their error naming the setting to lower)."""
    room = headroom()
    if room is not None and needed > room:
        raise MemoryError(
            f"{what} needs about {needed / 1e6:,.0f} MB in memory and this process has {room / 1e6:,.0f} MB left"
        )


#: What running out of memory raises in DuckDB, Arrow and Python.
OUT_OF_MEMORY = (MemoryError, pa.ArrowMemoryError, duckdb.OutOfMemoryException)
#: How the address space running out shows in other errors (no thread stack, no mapping).
_EXHAUSTED = (
    "Resource temporarily unavailable",
    "Cannot allocate memory",
    "std::bad_alloc",
    "can't start new thread",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says the process ran out of memory (or of address space for a thread's stack)."""
    if isinstance(exc, OUT_OF_MEMORY):
        return True
    return isinstance(exc, pa.ArrowException | duckdb.Error | OSError | RuntimeError) and any(
        text in str(exc) for text in _EXHAUSTED
    )


__all__ = ["OUT_OF_MEMORY", "check_room", "headroom", "is_out_of_memory"]
