"""Values people write as text, parsed the same way everywhere: durations, booleans, integers
and callers' JSON.

Daemon config (TOML, environment, flags), task payloads and the `agent-infra` CLI all read these,
so "1d" or "on" means the same in each. Standard library only: the client imports this module,
and importing it loads nothing of the daemons (agent_infra.runtime loads its modules on use).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

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


#: int32 and int64, the integer ranges of the wire (and of SQLite's INTEGER).
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
#: The deepest nesting of arrays and objects a caller's JSON may have: every later stage (template
#: rendering, encoding, the env-manager's decoding) handles this with room to spare.
MAX_JSON_DEPTH = 64
# ASCII digits only: str.isdigit() and int() also take "²" or "٣", which are no numbers here.
_INTEGER = re.compile(r"[+-]?[0-9]{1,30}", re.ASCII)
_BRACKETS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def parse_int(value: object, name: str, low: int, high: int) -> int:
    """An integer in [low, high] from an int (not a bool) or a text of ASCII digits with an
    optional sign (surrounding blanks ignored); ValueError naming `name` otherwise. Texts are
    checked before conversion, so a 5,000-digit text costs nothing and says what is wrong."""
    expected = f"{name} must be a whole number from {low} to {high}"
    if isinstance(value, bool):
        raise ValueError(f"{expected}, not a boolean")
    if isinstance(value, str):
        text = value.strip()
        if not _INTEGER.fullmatch(text):
            shown = repr(value) if len(value) <= 40 else f"{value[:40]!r}... ({len(value)} chars)"
            raise ValueError(f"{expected} (ASCII digits); got {shown}")
        value = int(text)
    if not isinstance(value, int):
        raise ValueError(f"{expected}; got a {type(value).__name__}")
    if not low <= value <= high:
        shown = str(value) if abs(value) < 10**40 else "a number of over 40 digits"
        raise ValueError(f"{expected}; got {shown}")
    return value


def json_depth(text: str) -> int:
    """How deeply arrays and objects nest in JSON `text` (0 for a scalar), without recursion,
    so any text can be measured before a recursive parser sees it."""
    depth = deepest = 0
    for match in _BRACKETS.finditer(text):
        token = match[0]
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth -= 1
    return deepest


def load_json(text: str | bytes, what: str, *, max_depth: int = MAX_JSON_DEPTH,
              **options: Any) -> Any:
    """json.loads for a caller's text: ValueError naming `what` when it is not JSON, nests deeper
    than `max_depth`, or holds an integer out of int64 (or written with over 30 digits).
    `options` go to json.loads (object_pairs_hook, parse_constant...)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{what} is not UTF-8: invalid byte at offset {exc.start}") from None
    depth = json_depth(text)
    if depth > max_depth:
        raise ValueError(f"{what} nests arrays and objects {depth} deep; the limit is {max_depth}")
    def finite(digits: str) -> float:
        number = float(digits)
        if not math.isfinite(number):
            raise ValueError(f"{what}: the number {digits[:40]} is too large")
        return number

    try:
        return json.loads(text, parse_int=lambda digits: parse_int(digits, f"{what}: a number",
                                                                    *INT64),
                          parse_float=finite, **options)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{what} is not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise ValueError(f"{what} is nested too deeply") from None


def json_type_name(value: object) -> str:
    """The JSON type of a decoded value with its article, for messages: "got an array"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
