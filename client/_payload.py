"""Payload maps on the wire are map<string,string>: how Python values become those strings.

Strings go as they are, so payloads written by other clients (the Go orchestrator, grpcurl)
read the same. Everything else is JSON, never Python repr (the original client sent
``str({'a': 1})``, which no other language can read back). On the way back, `decode_value`
turns JSON text into the value again and leaves any other text as it is.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping


def encode_value(key: str, value: object) -> str:
    """One payload value as its wire string: a str unchanged, anything else as JSON."""
    if isinstance(value, str):
        return value
    try:
        # allow_nan=False: NaN and Infinity are not JSON, and other languages reject them.
        return json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"payload[{key!r}]: {type(value).__name__} value cannot be sent as "
                        f"JSON ({exc})") from None


def encode_payload(payload: Mapping[str, object] | None) -> dict[str, str]:
    """A payload mapping as the wire's map<string,string>."""
    if payload is None:
        return {}
    encoded: dict[str, str] = {}
    for key, value in payload.items():
        if not isinstance(key, str):
            raise TypeError(f"payload keys must be str; got {key!r} ({type(key).__name__})")
        encoded[key] = encode_value(key, value)
    return encoded


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def decode_value(text: str) -> object:
    """A wire string as the value it stands for: JSON when it parses, else the string itself.

    Objects, arrays, numbers, ``true``/``false`` and ``null`` come back as Python values; a
    string that is not JSON (``"hello"``, ``"echo hi && ls"``) stays exactly as it is, and so
    does JSON whose value is itself a string (``'"quoted"'``): the encoder never produces those,
    so they are some other client's text. NaN and Infinity are not JSON and stay strings.
    """
    stripped = text.strip()
    if not stripped or stripped[0] not in '{["-0123456789tfn':
        return text  # cheap: most plain text is ruled out by its first character
    try:
        value = json.loads(stripped, parse_constant=_reject_constant)
    except ValueError:
        return text
    if isinstance(value, str) or (isinstance(value, float) and not math.isfinite(value)):
        return text  # "1e999" overflows to inf: not a value another language reads back
    return value


def decode_payload(payload: Mapping[str, str]) -> dict[str, object]:
    """A wire map<string,string> with each value decoded by `decode_value`."""
    return {key: decode_value(value) for key, value in payload.items()}
