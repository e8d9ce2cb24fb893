"""Byte sizes: the unit constants, parsing "16GiB", and printing sizes for people."""

from __future__ import annotations

import re


KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "kib": KiB, "mib": MiB, "gib": GiB, "tib": 1 << 40,
}
_SIZE_TEXT = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: "str | int") -> int:
    """Bytes in a size: 17179869184, "16GiB", "16GB" (10^9), "16000MB", "1.5 GiB"."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"a size cannot be negative: {text}")
        return text
    match = _SIZE_TEXT.match(str(text))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _SIZE_UNITS:
        raise ValueError(f"invalid size {text!r}: use bytes or a number with a unit "
                         "(B, KB, MB, GB, TB = powers of 1000; KiB, MiB, GiB, TiB = powers of 1024), e.g. 16GiB")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def format_size(n_bytes: float) -> str:
    """A byte count for people: 1.50 GiB, 320.00 KiB."""
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n_bytes) >= scale:
            return f"{n_bytes / scale:.2f} {unit}"
    return f"{int(n_bytes)} B"
