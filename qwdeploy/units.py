"""Byte units, defined once. Quantities are int bytes everywhere; GiB is for people."""

import re
from fractions import Fraction

MiB = 1 << 20
GiB = 1 << 30
GB = 10**9  # datasheet bandwidths are in decimal GB/s

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 1 << 10,
    "mib": MiB,
    "gib": GiB,
    "tib": 1 << 40,
}


def parse_size(text: str) -> int:
    """'24GiB', '80GB', '81920 MiB', '1.5TiB' or plain bytes -> bytes (GB = 10^9, GiB = 2^30).

    Raises ValueError naming what was wrong."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _SIZE_UNITS:
        raise ValueError(f"{text!r} is not a size: a number with B, KB, MB, GB, TB, KiB, MiB, GiB or TiB")
    size = int(Fraction(m.group(1)) * _SIZE_UNITS[unit])
    if size <= 0:
        raise ValueError(f"{text!r} is not a size: it must be more than 0 bytes")
    return size
