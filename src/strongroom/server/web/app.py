"""The web console and /metrics: an aiohttp application on its own HTTPS port, in the server's
event loop, with the server's certificate.

Pages are rendered on the server (Jinja2, autoescaped); the few scripts are static files
(charts, a periodic refresh), so the Content-Security-Policy allows no inline script at all.
Every state change is a POST carrying the session's CSRF token, from the console's own origin.
Blocking work (databases, stores) runs in threads, as in the backup sessions.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ... import __version__
from ...cli import format as fmt
from ...errors import StrongroomError, UsageError
from ...names import fold_name
from ..throttle import LoginRefused, address_group
from . import actions
from .auth import COOKIE, ConsoleSession, Sessions, check_csrf, fake_salt, verify_password
from .pages import dashboard_page, user_page
from .restore_api import UserWeb, is_user_path

if TYPE_CHECKING:
    from ..context import ServerContext

log = logging.getLogger("strongroom.server")

LOGIN_COOKIE = "__Host-strongroom-login"  # double-submit CSRF token of the login form
_SESSION_KEY: web.RequestKey[ConsoleSession] = web.RequestKey("session", ConsoleSession)

_FAVICON = (
    b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
    b'<rect x="1" y="1" width="14" height="14" rx="3" fill="#1f4fd6"/>'
    b'<rect x="5" y="5" width="6" height="6" rx="1" fill="#fff"/></svg>'
)
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_PUBLIC = ("/login", "/metrics", "/favicon.ico")


class Console:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.sessions = Sessions()
        self.throttle = ctx.make_throttle("c")  # shared by every node in scale-out mode
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("strongroom.server.web", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters.update(
            size=fmt.size,
            when=_when,
            ago=_ago,
            duration=_duration,
            exact_size=_exact_size,
            date=_date,
        )
        self.static = Path(str(resources.files("strongroom.server.web") / "static"))
        self.metrics_token = _read_token(ctx.config.metrics_token_file)
        # The users' restore page (issue 13): its own sessions, never the console's cookie.
        self.user_web = UserWeb(ctx)

    # ---- the application ----------------------------------------------------------------------

    def application(self) -> web.Application:
        app = web.Application(
            middlewares=[self._headers, self._authenticate], client_max_size=64 * 1024
        )
        app.router.add_get("/login", self.login_form)
        app.router.add_post("/login", self.login)
        app.router.add_post("/logout", self.logout)
        app.router.add_get("/", self.dashboard)
        app.router.add_get("/users/{name}", self.user)
        app.router.add_post("/users", self.act(actions.add_user))
        app.router.add_post("/users/{name}/settings", self.act(actions.change_settings))
        app.router.add_post("/users/{name}/password", self.act(actions.reset_password))
        app.router.add_post("/users/{name}/protect", self.act(actions.protect))
        app.router.add_post("/users/{name}/gc", self.act(actions.gc))
        app.router.add_post("/users/{name}/scrub", self.act(actions.scrub))
        app.router.add_post("/users/{name}/delete", self.act(actions.delete))
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/favicon.ico", self.favicon)
        app.router.add_static("/static", self.static, follow_symlinks=False)
        self.user_web.add_routes(app)
        return app

    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
        response.headers.setdefault("Content-Security-Policy", _CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        # same-origin, not no-referrer: with no-referrer browsers send "Origin: null" with forms
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Strict-Transport-Security"] = "max-age=31536000"
        if not request.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"
        if isinstance(response, web.HTTPException) and response.status >= 400:
            raise response
        return response

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in _PUBLIC or request.path.startswith("/static/"):
            return await handler(request)
        if is_user_path(request.path):  # the restore page: its own bearer sessions
            return await handler(request)
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            if request.method == "GET":
                raise web.HTTPSeeOther("/login")
            raise web.HTTPForbidden(text="log in first")
        if request.method == "POST":
            form = await request.post()
            token = form.get("csrf")
            if not _same_origin(request) or not check_csrf(
                session, token if isinstance(token, str) else None
            ):
                log.warning("console: refused a request without a valid CSRF token")
                raise web.HTTPForbidden(text="this form is stale or not from this console")
        request[_SESSION_KEY] = session
        return await handler(request)

    # ---- login --------------------------------------------------------------------------------

    async def login_form(self, request: web.Request, error: str = "") -> web.Response:
        # One token per browser until it logs in: a second load of the form (another tab, a
        # redirect for the favicon) must not invalidate the first one's token.
        token = request.cookies.get(LOGIN_COOKIE, "")
        if not (20 <= len(token) <= 64 and token.replace("-", "").replace("_", "").isalnum()):
            token = secrets.token_urlsafe(24)
        response = self.render("login.html", csrf=token, error=error, admin=None)
        response.set_cookie(
            LOGIN_COOKIE, token, secure=True, httponly=True, samesite="Strict", path="/"
        )
        return response

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        sent, cookie = form.get("csrf"), request.cookies.get(LOGIN_COOKIE)
        if not (isinstance(sent, str) and cookie and secrets.compare_digest(sent, cookie)):
            raise web.HTTPForbidden(text="this form is stale or not from this console")
        name = str(form.get("name", ""))[:64].strip()
        password = str(form.get("password", "")).encode()
        host = request.remote or "?"
        try:
            async with self.throttle.attempt(fold_name(name), address_group(host)) as attempt:
                admin = await asyncio.to_thread(self.ctx.ops.admin, name)
                salt = fake_salt(self.ctx.secret, fold_name(name))
                ok = await asyncio.to_thread(verify_password, admin, password, salt)
                if not ok or admin is None:
                    attempt.failed()
                    log.warning("console: login failed for %r from %s", name, host)
                    return await self.login_form(request, "wrong name or password")
                attempt.succeeded()
        except LoginRefused as exc:
            log.warning("console: login for %r from %s refused (locked out)", name, host)
            minutes = max(1, round(exc.retry_after / 60))
            return await self.login_form(
                request, f"too many failed logins; try again in {minutes} minute(s)"
            )
        token = self.sessions.open(admin.name)
        log.info("console: admin %r logged in from %s", admin.name, host)
        response = web.HTTPSeeOther("/")
        response.set_cookie(COOKIE, token, secure=True, httponly=True, samesite="Strict", path="/")
        response.del_cookie(LOGIN_COOKIE, path="/")
        raise response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        session = request[_SESSION_KEY]
        self.sessions.close(request.cookies.get(COOKIE))
        log.info("console: admin %r logged out", session.admin)
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE, path="/")
        raise response

    # ---- pages --------------------------------------------------------------------------------

    async def dashboard(self, request: web.Request) -> web.Response:
        data = await asyncio.to_thread(dashboard_page, self.ctx)
        if request.query.get("part") == "users":  # the periodic refresh of the table
            return self.render("users_table.html", **data)
        return self.page(request, "dashboard.html", **data)

    async def user(self, request: web.Request) -> web.Response:
        data = await asyncio.to_thread(user_page, self.ctx, request.match_info["name"])
        if data is None:
            raise web.HTTPNotFound(text="no such user")
        return self.page(request, "user.html", **data)

    def act(self, action: actions.Action) -> Handler:
        """A POST that changes something: run it in a thread, log it, show the outcome."""

        async def handle(request: web.Request) -> web.StreamResponse:
            session = request[_SESSION_KEY]
            form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
            name = request.match_info.get("name")
            try:
                outcome = await action(self.ctx, name, form)
            except (UsageError, StrongroomError) as exc:
                self._flash(session, "error", str(exc))
                log.info("console: admin %r: %s refused: %s", session.admin, action.__name__, exc)
            else:
                self._flash(session, "ok", outcome.message)
                log.info("console: admin %r: %s", session.admin, outcome.log)
                if outcome.redirect is not None:
                    raise web.HTTPSeeOther(outcome.redirect)
            raise web.HTTPSeeOther(f"/users/{name}" if name else "/")

        handle.__name__ = action.__name__
        return handle

    def page(self, request: web.Request, template: str, **data: Any) -> web.Response:
        session = request[_SESSION_KEY]
        flashes, session.flashes = session.flashes, []
        return self.render(
            template, admin=session.admin, csrf=session.csrf, flashes=flashes, **data
        )

    def render(self, template: str, **data: Any) -> web.Response:
        html = self.templates.get_template(template).render(version=__version__, **data)
        return web.Response(text=html, content_type="text/html")

    @staticmethod
    def _flash(session: ConsoleSession, kind: str, message: str) -> None:
        session.flashes = [*session.flashes[-4:], (kind, message)]

    async def favicon(self, request: web.Request) -> web.Response:
        return web.Response(body=_FAVICON, content_type="image/svg+xml")

    # ---- metrics ------------------------------------------------------------------------------

    async def metrics(self, request: web.Request) -> web.Response:
        if not self._may_scrape(request):
            raise web.HTTPUnauthorized(
                text="a bearer token is needed", headers={"WWW-Authenticate": "Bearer"}
            )
        body = await asyncio.to_thread(generate_latest, self.ctx.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _may_scrape(self, request: web.Request) -> bool:
        if self.metrics_token is None:
            return _is_loopback(request.remote)
        sent = request.headers.get("Authorization", "")
        return sent.startswith("Bearer ") and secrets.compare_digest(
            sent[7:].strip().encode(), self.metrics_token.encode()
        )


async def start_console(
    ctx: ServerContext, tls: ssl.SSLContext
) -> tuple[web.AppRunner, list[tuple[str, int]]] | None:
    """Serve the console on its port; None when it is off (web_port 0)."""
    cfg = ctx.config
    if cfg.web_port == 0:
        return None
    console = Console(ctx)
    ctx.console_sessions = console.sessions
    ctx.user_web = console.user_web
    runner = web.AppRunner(console.application(), access_log=None, handle_signals=False)
    await runner.setup()
    host = cfg.web_host or cfg.host
    site = web.TCPSite(runner, host, cfg.web_port, ssl_context=tls, reuse_address=True)
    await site.start()
    addresses = []
    server = site._server  # the bound sockets (to print the real address)
    for sock in getattr(server, "sockets", None) or []:
        addr = sock.getsockname()
        addresses.append((str(addr[0]), int(addr[1])))
    return runner, addresses


def _same_origin(request: web.Request) -> bool:
    """Browsers send Origin with POSTs; a form posted from another site is refused."""
    origin = request.headers.get("Origin")
    if origin is None:
        return request.headers.get("Sec-Fetch-Site") in (None, "same-origin")
    return origin == f"https://{request.host}"


def _is_loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def _read_token(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UsageError(f"cannot read metrics_token_file {path}: {exc.strerror}") from None
    if len(token) < 16:
        raise UsageError(f"the metrics token in {path} is too short (16 characters at least)")
    return token


def _exact_size(value: int) -> str:
    """A size a form can give back unchanged: 50G when it is whole, else the byte count."""
    for unit, power in (("T", 4), ("G", 3), ("M", 2), ("K", 1)):
        if value % 1024**power == 0:
            return f"{value // 1024**power}{unit}"
    return str(value)


def _when(time_ns: int | None) -> str:
    if time_ns is None:
        return "never"
    return datetime.fromtimestamp(time_ns / 1e9, UTC).astimezone().strftime("%Y-%m-%d %H:%M")


def _date(time_ns: int | None) -> str:
    if time_ns is None:
        return "—"
    return datetime.fromtimestamp(time_ns / 1e9, UTC).astimezone().strftime("%Y-%m-%d")


def _ago(time_ns: int | None) -> str:
    if time_ns is None:
        return "never"
    return _duration((time.time_ns() - time_ns) / 1e9) + " ago"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, float(seconds))
    for unit, size, above in (("d", 86400, 3 * 86400), ("h", 3600, 3600), ("min", 60, 60)):
        if seconds >= above:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"
