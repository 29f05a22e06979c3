"""The web console, served by the orchestrator daemon at `/` of its HTTP address.

Pages live under `/console/` (`/` redirects there); `console_routes(...)` builds every route and
`OrchestratorApp.http_routes` adds them beside the API's.

Adding a page (a section of the nav):

1. Write `console/NAME.py` with `def routes(console: Console) -> list[web.RouteDef]`. Wrap each
   handler: `console.page(handler)` for HTML pages and `console.api(handler)` for JSON reads
   (both require the session cookie or the bearer token; a page sends a browser to the login
   form, the API answers 401), `console.action(handler)` for everything that changes something
   (POST only; also checks the CSRF token and the Origin).
2. Render with `console.render(request, "NAME.html", section="NAME", title=..., **values)`:
   templates are Jinja2 in `console/templates/`, autoescaped, and extend `base.html` (nav,
   CSRF `<meta>`, scripts). No inline `<script>` or `style=` attribute: the Content-Security-
   Policy forbids both; put code in `console/static/NAME.js` and load it from the template's
   `scripts` block with `console.static_url("NAME.js")`. Hand data to scripts through
   `data-*` attributes or `<script type="application/json" id=...>{{ value|tojson }}</script>`,
   and build DOM with `textContent` (never `innerHTML` with a caller's value).
3. Add NAME to `SECTIONS` in `shell.py` (already there: overview, tasks, workflows, events,
   services); a section whose module does not exist yet is skipped.

Scripts POST with the header `X-CSRF-Token: <meta name="csrf-token">` (see
`static/console.js`: `Console.post(url, body)`), forms with a hidden `csrf` field
(`{{ csrf_field() }}`).

Live updates: one server-sent-events stream, `GET /console/stream` (see `stream.py` for the
event names and replay rules); `Console.subscribe(types, callback)` in `static/console.js`
shares it between the scripts of a page.
"""

from .shell import SECTIONS, Console, console_routes

__all__ = ["SECTIONS", "Console", "console_routes"]
