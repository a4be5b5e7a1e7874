"""Byte counts for people to read. Torch-free."""

from __future__ import annotations


def human_size(n_bytes: int) -> str:
    """Format a byte count with binary units, e.g. ``343.2 MiB``."""
    sign = "-" if n_bytes < 0 else ""
    n = abs(float(n_bytes))
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{sign}{int(n)} B" if unit == "B" else f"{sign}{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
