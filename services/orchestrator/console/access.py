"""Who may use the console: the API's token, as a bearer header or a session cookie, and CSRF.

A session cookie never holds the token: it is `NONCE.ISSUED.MAC`, the MAC an HMAC-SHA256 under
a key derived from the token (so a changed token ends every session, and a leaked cookie does
not reveal the token). Without a token (auth off) the key is random per process and a session
is handed out on first visit: the cookie is then only what CSRF tokens are bound to.

Every request that changes something must carry the session's CSRF token (a form field `csrf`
or the header `X-CSRF-Token`, derived from the session by the same key) and, when the browser
sends one, an Origin (or Sec-Fetch-Site) of this very site. A request whose bearer header is
valid needs neither: no browser sends one on a cross-site request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from aiohttp import web

COOKIE = "agent_infra_console"
SESSION_SECONDS = 12 * 3600
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf"


class Access:
    def __init__(self, token: Callable[[], str | None],
                 authorize: Callable[[str | None], bool]) -> None:
        self._token = token
        self._authorize = authorize
        self._random_key = secrets.token_bytes(32)

    @property
    def token_required(self) -> bool:
        return self._token() is not None

    def bearer_ok(self, request: web.Request) -> bool:
        """A valid `Authorization: Bearer` header (only when a token is set: without one, every
        header "authorizes", which must not waive CSRF for a header-less browser form)."""
        header = request.headers.get("Authorization")
        return header is not None and self.token_required and self._authorize(header)

    def token_ok(self, presented: str) -> bool:
        return self._authorize(f"Bearer {presented.strip()}")

    def new_session(self) -> str:
        nonce = secrets.token_urlsafe(16)
        issued = str(int(time.time()))
        return f"{nonce}.{issued}.{self._mac('session', nonce, issued)}"

    def session(self, request: web.Request) -> str | None:
        """The session's nonce when its cookie is valid and fresh, else None."""
        value = request.cookies.get(COOKIE, "")
        parts = value.split(".")
        if len(parts) != 3:
            return None
        nonce, issued, mac = parts
        if not hmac.compare_digest(mac, self._mac("session", nonce, issued)):
            return None
        try:
            age = time.time() - int(issued)
        except ValueError:
            return None
        return nonce if 0 <= age < SESSION_SECONDS else None

    def csrf_token(self, nonce: str) -> str:
        return self._mac("csrf", nonce)

    def csrf_ok(self, request: web.Request, nonce: str | None, form_value: str | None) -> bool:
        if nonce is None:
            return False
        presented = request.headers.get(CSRF_HEADER) or form_value or ""
        return hmac.compare_digest(presented, self.csrf_token(nonce))

    def set_cookie(self, response: web.StreamResponse, request: web.Request, value: str) -> None:
        response.set_cookie(COOKIE, value, max_age=SESSION_SECONDS, path="/", httponly=True,
                            samesite="Strict", secure=request.secure)

    def _key(self) -> bytes:
        token = self._token()
        if token is None:
            return self._random_key
        return hmac.new(token.encode(), b"agent-infra console session key",
                        hashlib.sha256).digest()

    def _mac(self, purpose: str, *parts: str) -> str:
        message = "\x00".join((purpose, *parts)).encode()
        return hmac.new(self._key(), message, hashlib.sha256).hexdigest()


def same_origin(request: web.Request) -> bool:
    """Whether the browser says the request comes from this site (True when it says nothing:
    a non-browser client, which the CSRF token still has to satisfy)."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    # The host and port, not the scheme: behind a proxy that terminates TLS
    # (server.http_allow_plaintext) the browser says https while this listener sees http.
    return urlsplit(origin).netloc == request.host


def safe_next(value: str | None) -> str:
    """A local console path to go back to after login (never another site)."""
    if value and value.startswith("/console") and "//" not in value and "\\" not in value:
        return value
    return "/console/"
