"""How gristmill writes a duration and a size for people to read: one definition for every log
line, progress line and error message (``4 min 10 s``, ``600.0 KiB``)."""

from __future__ import annotations


def duration(seconds: float) -> str:
    """12 s, 4 min 10 s, 2 h 05 min."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def size(n: float) -> str:
    """A byte count in binary units: 512 B, 600.0 KiB, 1.5 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
