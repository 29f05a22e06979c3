"""Payload maps on the wire are map<string,string>: how Python values become those strings.

Strings go as they are, so payloads written by other clients (the Go orchestrator, grpcurl)
read the same. Everything else is JSON, never Python repr (the original client sent
``str({'a': 1})``, which no other language can read back).
"""

from __future__ import annotations

import json
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
