"""The console's frame: templates, static files, access checks, login, and the sections' routes.

See the package's docstring for how a section adds its pages.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import mimetypes
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from aiohttp import web
from markupsafe import Markup

from ..domain import Orchestrator
from .access import CSRF_FIELD, Access, safe_next, same_origin

PREFIX = "/console"
#: (name, nav title, path) of each section, in nav order; name is its module in this package.
SECTIONS: tuple[tuple[str, str, str], ...] = (
    ("overview", "Overview", f"{PREFIX}/"),
    ("tasks", "Tasks", f"{PREFIX}/tasks"),
    ("workflows", "Workflows", f"{PREFIX}/workflows"),
    ("events", "Events", f"{PREFIX}/events"),
    ("services", "Services", f"{PREFIX}/services"),
)
#: Modules of this package with routes that are not a nav section.
EXTRA_MODULES = ("stream",)

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
# No inline script or style anywhere: a value that slipped through escaping still cannot run.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    # not no-referrer: with it a browser sends "Origin: null" on a form POST, which the CSRF
    # check (same_origin) must refuse
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Console:
    """What a section's `routes(console)` gets: the domain, rendering and the access wrappers."""

    def __init__(self, domain: Callable[[], Orchestrator], access: Access) -> None:
        self.domain = domain
        self.access = access
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=True,
            trim_blocks=True, lstrip_blocks=True)
        self._static = _static_files()
        self.env.globals.update(static_url=self.static_url, sections=SECTIONS, prefix=PREFIX)

    # -- rendering -------------------------------------------------------------------------

    def static_url(self, name: str) -> str:
        """`/console/static/NAME?v=HASH` (a new file, a new URL: cached forever otherwise)."""
        digest = self._static[name][1]
        return f"{PREFIX}/static/{name}?v={digest}"

    def render(self, request: web.Request, template: str, *, section: str, title: str,
               status: int = 200, **values: Any) -> web.Response:
        csrf = request.get("console_csrf", "")
        html = self.env.get_template(template).render(
            section=section, title=title, csrf=csrf,
            csrf_field=lambda: Markup('<input type="hidden" name="{}" value="{}">').format(
                CSRF_FIELD, csrf),
            login_required=self.access.token_required, **values)
        return web.Response(text=html, status=status, content_type="text/html",
                            headers=SECURITY_HEADERS)

    # -- access wrappers -------------------------------------------------------------------

    def page(self, handler: Handler) -> Handler:
        """An HTML page: the login form first when the caller has no access."""
        async def wrapped(request: web.Request) -> web.StreamResponse:
            fresh = self._admit(request)
            if fresh is False:
                raise web.HTTPSeeOther(f"{PREFIX}/login?{urlencode({'next': request.path_qs})}",
                                       headers=SECURITY_HEADERS)
            response = await handler(request)
            if isinstance(fresh, str):
                self.access.set_cookie(response, request, fresh)
            return response
        return wrapped

    def api(self, handler: Handler) -> Handler:
        """A JSON (or event-stream) read: 401 without access."""
        async def wrapped(request: web.Request) -> web.StreamResponse:
            if self._admit(request) is False:
                return unauthorized()
            return await handler(request)
        return wrapped

    def action(self, handler: Handler) -> Handler:
        """A change (POST): access, plus the session's CSRF token and a same-site Origin unless
        the bearer header is valid. Refusals are 403 JSON naming what is missing."""
        async def wrapped(request: web.Request) -> web.StreamResponse:
            if request.method != "POST":
                return json_error(405, "use POST")
            if self.access.bearer_ok(request):
                return await handler(request)
            nonce = self.access.session(request)
            if nonce is None:
                return unauthorized()
            if not same_origin(request):
                return json_error(403, "Origin: a change must come from the console's own "
                                       "pages")
            form_value = None
            if request.content_type == "application/x-www-form-urlencoded":
                form_value = str((await request.post()).get(CSRF_FIELD, ""))
            if not self.access.csrf_ok(request, nonce, form_value):
                return json_error(403, "csrf: missing or wrong CSRF token (reload the page)")
            request["console_csrf"] = self.access.csrf_token(nonce)
            return await handler(request)
        return wrapped

    def _admit(self, request: web.Request) -> bool | str:
        """True: access with a session or the bearer header; a new session's cookie value
        when auth is off and there was none; False: no access."""
        nonce = self.access.session(request)
        if nonce is not None:
            request["console_csrf"] = self.access.csrf_token(nonce)
            return True
        if self.access.bearer_ok(request):
            return True
        if not self.access.token_required:
            value = self.access.new_session()
            request["console_csrf"] = self.access.csrf_token(value.split(".")[0])
            return value
        return False


def console_routes(domain: Callable[[], Orchestrator], authorize: Callable[[str | None], bool],
                   token: Callable[[], str | None]) -> Sequence[web.RouteDef]:
    """Every console route: the frame's (/, static files, login, logout) and each section's."""
    access = Access(token, authorize)
    console = Console(domain, access)

    async def root(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"{PREFIX}/")

    async def static(request: web.Request) -> web.StreamResponse:
        entry = console._static.get(request.match_info["name"])
        if entry is None:
            raise web.HTTPNotFound()
        body, digest, content_type = entry
        return web.Response(body=body, content_type=content_type, headers={
            "Cache-Control": "public, max-age=31536000, immutable", "ETag": f'"{digest}"',
            "X-Content-Type-Options": "nosniff"})

    async def login_form(request: web.Request) -> web.StreamResponse:
        return console.render(request, "login.html", section="", title="Sign in",
                              next=safe_next(request.query.get("next")), error="")

    async def login(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        target = safe_next(str(form.get("next", "")))
        if not same_origin(request):
            return json_error(403, "Origin: sign in from the console's own login page")
        if not access.token_ok(str(form.get("token", ""))):
            return console.render(request, "login.html", section="", title="Sign in",
                                  next=target, error="That is not the token.", status=401)
        response = web.HTTPSeeOther(target, headers=SECURITY_HEADERS)
        access.set_cookie(response, request, access.new_session())
        raise response

    async def logout(request: web.Request) -> web.StreamResponse:
        response = web.HTTPSeeOther(f"{PREFIX}/login", headers=SECURITY_HEADERS)
        response.del_cookie("agent_infra_console", path="/")
        raise response

    routes = [
        web.get("/", root),
        web.get(PREFIX, root),
        web.get(PREFIX + "/static/{name}", static),
        web.get(PREFIX + "/login", login_form),
        web.post(PREFIX + "/login", login),
        web.post(PREFIX + "/logout", console.action(logout)),
    ]
    for name in (*(section[0] for section in SECTIONS), *EXTRA_MODULES):
        module_name = f"{__package__}.{name}"
        if importlib.util.find_spec(module_name) is None:
            continue  # a section not written yet
        module = importlib.import_module(module_name)
        routes.extend(module.routes(console))
    return routes


def json_error(status: int, message: str) -> web.Response:
    return web.json_response({"success": False, "error": message}, status=status,
                             headers=SECURITY_HEADERS)


def unauthorized() -> web.Response:
    return web.json_response(
        {"success": False, "error": "missing or wrong bearer token: sign in at "
                                    f"{PREFIX}/login or send 'Authorization: Bearer <token>'"},
        status=401, headers={"WWW-Authenticate": 'Bearer realm="agent-infra"',
                             **SECURITY_HEADERS})


def _static_files() -> dict[str, tuple[bytes, str, str]]:
    """name -> (content, short hash, content type) of every file shipped in static/: read once,
    and the only names served (no path from a request ever reaches the file system)."""
    files: dict[str, tuple[bytes, str, str]] = {}
    for path in sorted(STATIC.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            body = path.read_bytes()
            content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            files[path.name] = (body, hashlib.sha256(body).hexdigest()[:12], content_type)
    return files
