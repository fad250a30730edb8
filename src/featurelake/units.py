"""Prometheus-style durations (``30s``, ``5m``, ``1h30m``, ``7d``, ``1w``) as seconds, and back."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, "y": 31536000.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")


def parse_duration(value: str | int | float, what: str = "duration") -> float:
    """Seconds in ``value``; a bare number is seconds. ValueError names ``what`` and the accepted forms."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected a duration like 30s, 5m, 1h, 7d, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"{what}: a duration cannot be negative, got {value!r}")
        return float(value)
    text = str(value).strip()
    pos, total = 0, 0.0
    for m in _PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not text or pos != len(text):
        raise ValueError(f"{what}: expected a duration like 30s, 5m, 1h30m, 7d or 1w, got {value!r}")
    return total


def format_duration(seconds: float) -> str:
    """The shortest Prometheus duration for ``seconds`` (``3600`` -> ``1h``; ``0`` -> ``0s``)."""
    if seconds <= 0:
        return "0s"
    out, rest = [], round(seconds * 1000)
    for unit, factor in (("w", 604800000), ("d", 86400000), ("h", 3600000), ("m", 60000), ("s", 1000)):
        n, rest = divmod(rest, factor)
        if n:
            out.append(f"{n}{unit}")
    if rest:
        out.append(f"{rest}ms")
    return "".join(out)


__all__ = ["format_duration", "parse_duration"]
