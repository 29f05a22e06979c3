"""Values people write as text, parsed the same way everywhere: durations and booleans.

Daemon config (TOML, environment, flags), task payloads and the `agent-infra` CLI all read these,
so "1d" or "on" means the same in each. Standard library only: the client imports this module,
and importing it loads nothing of the daemons (agent_infra.runtime loads its modules on use).
"""

from __future__ import annotations

import re

#: The words (any case, surrounding blanks ignored) that switch a boolean on.
TRUTHY = frozenset({"1", "true", "yes", "on"})

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_NUMBER = r"\d+(?:\.\d+)?"
_PART = re.compile(rf"({_NUMBER})\s*(ms|s|m|h|d|w)")
# A plain number of seconds, or one or more number+unit parts ("1h30m").
_DURATION = re.compile(rf"{_NUMBER}|(?:{_NUMBER}\s*(?:ms|s|m|h|d|w)\s*)+")
_EXPECTED = 'expected a duration such as 30, "500ms", "2m", "1h30m", "1d"'


def truthy(text: str) -> bool:
    """Whether `text` (an environment variable, a payload field) says yes: see TRUTHY."""
    return text.strip().lower() in TRUTHY


def parse_duration(value: object) -> float:
    """Seconds from a number of seconds or a text such as "30", "500ms", "1.5s", "2m", "1h",
    "1d", "1w" or a sum of those ("1h30m"); units in any case. ValueError when it is none."""
    if isinstance(value, bool):
        raise ValueError(_EXPECTED)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if _DURATION.fullmatch(text) is None:
            raise ValueError(f"{_EXPECTED}; got {value!r}")
        parts = _PART.findall(text)
        seconds = (sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
                   if parts else float(text))
    else:
        raise ValueError(_EXPECTED)
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds
