"""Durations and sizes: the one parser and the one formatter of each, and the pydantic types config uses.

Durations are Prometheus-style: ``30s``, ``5m``, ``1h30m``, ``7d``, ``2w`` (units ``ms s m h d w y``, any
case, blanks allowed between parts), a number (int or float) of seconds, or a ``timedelta``. Sizes are
``128MB``, ``512KiB``, ``1.5GB`` (``KB``/``MB``/``GB`` are powers of 1000, ``KiB``/``MiB``/``GiB`` of 1024),
or a number of bytes. Parsers raise ``ValueError`` naming what was being parsed; callers turn it into their
own error (``UsageError`` for a flag, a config error naming the key for a config value).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

_DURATION_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86_400.0,
    "w": 604_800.0,
    "y": 31_536_000.0,
}
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w|y)\s*", re.IGNORECASE)
_DURATION_EXAMPLES = "expected a duration like 30s, 5m, 1h30m, 7d or 1w"
# Largest unit first; weeks are written as days (``14d``), which people and Prometheus both read.
_FORMAT_UNITS = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1))

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|tb|kib|mib|gib|tib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def _subject(what: str, value: object) -> str:
    return f"{what} {value!r}" if what else repr(value)


def parse_duration(value: str | int | float | timedelta, what: str = "duration") -> timedelta:
    """``value`` as a timedelta; a bare number is seconds. ValueError names ``what`` and the accepted forms."""
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise ValueError(f"{_subject(what, value)} is negative: a duration cannot be")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{_subject(what, value)} is not a duration: {_DURATION_EXAMPLES}")
    if isinstance(value, int | float):
        if not value >= 0:  # also NaN
            raise ValueError(f"{_subject(what, value)} is not a duration: a number of seconds must be >= 0")
        total = float(value)
    else:
        pos, total = 0, 0.0
        for m in _DURATION_PART.finditer(value):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]
            pos = m.end()
        if not value.strip() or pos != len(value):
            raise ValueError(f"{_subject(what, value)} is not a duration: {_DURATION_EXAMPLES}")
    try:
        return timedelta(seconds=total)
    except OverflowError:
        raise ValueError(f"{_subject(what, value)} is too long a duration") from None


def format_duration(value: float | timedelta, sep: str = "") -> str:
    """The shortest exact form of ``value`` (seconds or a timedelta), largest unit first.

    ``3600`` -> ``1h``, ``5400`` -> ``1h30m``, ``0`` -> ``0s``, ``-60`` -> ``-1m``; ``sep=" "`` gives ``2d 5m``
    for people. The result parses back to the same duration (to the millisecond).
    """
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    sign, rest = ("-", round(-seconds * 1000)) if seconds < 0 else ("", round(seconds * 1000))
    parts = []
    for unit, factor in _FORMAT_UNITS:
        n, rest = divmod(rest, factor)
        if n:
            parts.append(f"{n}{unit}")
    return sign + sep.join(parts) if parts else "0s"


def parse_size(value: str | int, what: str = "size", *, minimum: int = 0) -> int:
    """``128MB``, ``512KiB``, ``1.5GB`` or a plain number of bytes, as bytes (at least ``minimum``)."""
    m = _SIZE.match(value) if isinstance(value, str) else None
    if m is not None:
        size = int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()])
    elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        size = value
    else:
        raise ValueError(
            f"{_subject(what, value)} is not a size: use e.g. 128MB, 512KiB or a number of bytes"
        )
    if size < minimum:
        raise ValueError(
            f"{_subject(what, value)} is too small: give at least {minimum:,} bytes (e.g. 128MB)"
        )
    return size


def format_size(n: int) -> str:
    """``n`` bytes for people, in powers of 1000: ``512 B``, ``1.5 KB``, ``128.0 MB``, ``2.0 GB``."""
    value = float(n)
    for unit in ("B", "KB", "MB"):
        if abs(value) < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def _duration_field(value: Any) -> timedelta:
    return parse_duration(value, "")


def _size_field(value: Any) -> int:
    return parse_size(value, "")


#: A config field holding a duration: ``7d``, ``1h30m``, a number of seconds; serialized back as ``7d``.
Duration = Annotated[
    timedelta,
    BeforeValidator(_duration_field),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
#: A config field holding a size: ``128MB``, ``512KiB`` or a number of bytes (an int once loaded).
ByteSize = Annotated[int, BeforeValidator(_size_field)]

__all__ = ["ByteSize", "Duration", "format_duration", "format_size", "parse_duration", "parse_size"]
