"""Durations in the policy: one or more `<digits><unit>` groups, units s, m, h, d, largest first.

`7d`, `7d12h`, `90m` and `1h30m` are durations; the normalised form writes each unit at most once, largest
first, and nothing for a unit that is zero (`90m` -> `1h30m`, `0s` for nothing at all), so two spellings
of one duration hash alike.
"""

from __future__ import annotations

import re

UNIT_SECONDS: dict[str, int] = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_GROUPS = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_EXAMPLE = "write whole numbers with units d, h, m, s, largest first, e.g. 7d, 7d12h or 90m"


def parse_duration(value: object) -> int:
    """`7d12h` -> seconds."""
    match = _GROUPS.fullmatch(value) if isinstance(value, str) and value else None
    if match is None:
        raise ValueError(f"{value!r} is not a duration: {_EXAMPLE}")
    return sum(int(n) * size for n, size in zip(match.groups(), UNIT_SECONDS.values(), strict=True) if n)


def format_duration(seconds: int) -> str:
    """Seconds -> the normalised duration (`5400` -> `1h30m`, `0` -> `0s`)."""
    parts = []
    for unit, size in UNIT_SECONDS.items():
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"
