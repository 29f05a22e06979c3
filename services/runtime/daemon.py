"""The server core both daemons run: gRPC + HTTP, health, reflection, signals, systemd, reload.

A daemon supplies a `DaemonApp` (its domain and thin servicers); `Daemon` does the rest:

start:    bind gRPC and HTTP -> app.start() -> health SERVING -> READY=1
health:   with `app.health_interval`, readiness() and dependencies() are re-checked for ever;
          each dependency is a grpc.health.v1 service name of its own
SIGHUP:   re-read config; apply what can change live (logging, token, the app's own); keep the
          old config when the new one is invalid
SIGTERM:  STOPPING=1 -> health NOT_SERVING -> end response streams -> refuse new calls and let
          in-flight ones finish within the grace -> app.stop() -> exit 0; a second signal exits now
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from typing_extensions import TypeVar

from . import logs
from .auth import HEALTH_SERVICE, TokenAuth
from .config import ConfigError, ConfigSpec, load_config
from .http import HttpEndpoint, server_ssl_context
from .notify import SystemdNotifier
from .observe import RpcObserver
from .reflection import enable_reflection
from .rpc import MiddlewareInterceptor, StreamCloser
from .settings import DaemonSettings
from .status import map_domain_errors

log = logs.get_logger("daemon")

#: A daemon's own settings model. An app reads settings (start, reload), never hands them back:
#: an app written for any DaemonSettings runs with a subclass, hence contravariant.
SettingsT = TypeVar("SettingsT", bound=DaemonSettings, default=DaemonSettings)
AppSettingsT = TypeVar("AppSettingsT", bound=DaemonSettings, default=DaemonSettings,
                       contravariant=True)
ContextSettingsT = TypeVar("ContextSettingsT", bound=DaemonSettings, default=DaemonSettings,
                           covariant=True)

FORCED_EXIT = 1

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class StartupError(Exception):
    """The daemon could not start (a port in use, a certificate unreadable...)."""


@dataclass(frozen=True)
class DaemonContext(Generic[ContextSettingsT]):
    """What the runtime hands an app: its settings, metrics registry and health switch."""

    settings: ContextSettingsT
    registry: CollectorRegistry
    closing: asyncio.Event
    health: HealthState
    # Checks an HTTP `Authorization` header against the daemon's token (True when auth is off).
    authorize: Callable[[str | None], bool]


class DaemonApp(Generic[AppSettingsT]):
    """The domain half of a daemon, for settings of type AppSettingsT (a daemon's own
    DaemonSettings subclass). Subclasses override what they need."""

    #: fully qualified gRPC service names the app registers (for health and reflection)
    service_names: Sequence[str] = ()
    #: seconds between the runtime's re-checks of readiness() and dependencies(); 0: each is
    #: checked once, at start (an app that watches its own health sets `context.health` itself)
    health_interval: float = 0.0

    def register(self, server: grpc.aio.Server) -> None:
        """Add the app's servicers to the server."""

    async def start(self, context: DaemonContext[AppSettingsT]) -> None:
        """Open stores, connect to dependencies; return when ready to serve."""

    async def readiness(self) -> tuple[bool, str]:
        """Whether the app can serve right after start(), and why not.

        An app that starts not ready turns itself serving later through `context.health`.
        """
        return True, "serving"

    async def dependencies(self) -> dict[str, bool]:
        """Whether each dependency is up, by name: each name is a grpc.health.v1 service of its
        own (SERVING or NOT_SERVING), apart from "" and the app's services, which readiness()
        alone decides. {} = none."""
        return {}

    async def stop(self) -> None:
        """Release what start() took; called after in-flight RPCs are done."""

    async def reload(self, settings: AppSettingsT) -> None:
        """Apply the parts of new settings that can change at run time."""

    def http_routes(self) -> Sequence[web.RouteDef]:
        return ()


class HealthState:
    """The daemon's serving state, mirrored to grpc.health.v1 for "" and each app service, plus
    one grpc.health.v1 name per dependency the app reports (`set_dependencies`).

    The first time it turns serving, systemd gets READY=1: a daemon whose dependency is down at
    start (env-manager without Docker) is not ready until it is back. Dependencies never hold
    back READY=1 or "": they have their own names.
    """

    def __init__(self, servicer: health.aio.HealthServicer, services: Sequence[str],
                 notifier: SystemdNotifier, ready_status: str) -> None:
        self._servicer = servicer
        self._services = ("", *services)
        self._notifier = notifier
        self._ready_status = ready_status
        self._closed = False
        self.ready_sent = False
        self.serving = False
        self.reason = "starting"
        #: the last state reported per dependency name
        self.dependencies: dict[str, bool] = {}

    async def set(self, serving: bool, reason: str = "") -> None:
        if self._closed:
            return  # shutting down: NOT_SERVING for good, whatever a late check says
        changed = (serving, reason) != (self.serving, self.reason)
        self.serving, self.reason = serving, reason
        status = _SERVING if serving else _NOT_SERVING
        for service in self._services:
            await self._servicer.set(service, status)
        if serving and not self.ready_sent:
            self.ready_sent = True
            self._notifier.ready(self._ready_status)
        elif changed:
            self._notifier.status(self._ready_status if serving else f"not serving: {reason}")
        if changed:
            log.info("health", serving=serving, reason=reason)

    async def set_dependencies(self, states: Mapping[str, bool]) -> None:
        """Each dependency's name SERVING or NOT_SERVING; a name no longer reported (a reload
        dropped it) answers SERVICE_UNKNOWN."""
        if self._closed:
            return
        clashing = [name for name in states if name in self._services]
        if clashing:
            # "" and the app's own names follow readiness(): a dependency may not override them.
            log.error("dependency_name_clash", names=clashing)
        current = {name: up for name, up in states.items() if name not in self._services}
        for name, up in current.items():
            await self._servicer.set(name, _SERVING if up else _NOT_SERVING)
            if self.dependencies.get(name) != up:
                log.info("dependency_health", dependency=name, serving=up)
        for name in self.dependencies.keys() - current.keys():
            await self._servicer.set(name, _UNKNOWN)
            log.info("dependency_health", dependency=name, serving=None, reason="no longer used")
        self.dependencies = current

    async def shut_down(self) -> None:
        self._closed = True
        self.serving, self.reason = False, "shutting down"
        await self._servicer.enter_graceful_shutdown()


class Daemon(Generic[SettingsT]):
    def __init__(self, spec: ConfigSpec[SettingsT], settings: SettingsT,
                 app: DaemonApp[SettingsT], reload_args: Any = None, version: str = "0") -> None:
        self._spec = spec
        self._settings = settings
        self._app = app
        self._reload_args = reload_args
        self._version = version
        self._notifier = SystemdNotifier()
        self._stop = asyncio.Event()
        self._closing = asyncio.Event()
        self._signals = 0
        self._registry = CollectorRegistry()
        ProcessCollector(registry=self._registry)
        PlatformCollector(registry=self._registry)
        self._auth = TokenAuth(settings.auth.resolve_token(), _open_services(settings),
                               metrics_open=settings.auth.metrics_open,
                               health_open=settings.auth.health_open)
        self._health_servicer = health.aio.HealthServicer()
        cfg = settings.server
        self.health = HealthState(
            self._health_servicer, app.service_names, self._notifier,
            f"serving gRPC on {cfg.grpc_addr}, HTTP on {cfg.http_addr}",
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._health_loop: asyncio.Task[None] | None = None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)
        routes = self._app.http_routes()
        _check_http_exposure(self._spec.daemon, self._settings, routes)
        server = self._build_server()
        try:
            ssl_context = server_ssl_context(self._settings.tls)
        except (OSError, ValueError) as exc:
            raise StartupError(f"cannot use the TLS files for HTTP: {exc}") from exc
        http = HttpEndpoint(self._settings.server, self._registry, self._health_report,
                            self._auth, ssl_context, routes)
        try:
            await self._start(server, http)
            await self._stop.wait()
        finally:
            await self._shutdown(server, http)
        return 0

    def _build_server(self) -> grpc.aio.Server:
        cfg = self._settings.server
        interceptor = MiddlewareInterceptor(
            [RpcObserver(self._registry), self._auth, StreamCloser(self._closing),
             map_domain_errors],
            max_response_bytes=cfg.max_message_bytes,
        )
        server = grpc.aio.server(
            interceptors=[interceptor],
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", cfg.max_message_bytes),
                ("grpc.max_send_message_length", cfg.max_message_bytes),
                ("grpc.keepalive_time_ms", int(cfg.keepalive_time * 1000)),
                ("grpc.keepalive_timeout_ms", int(cfg.keepalive_timeout * 1000)),
                ("grpc.keepalive_permit_without_calls", 1),
                # Let idle clients keep long streams alive with pings every 10 s or more.
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
                ("grpc.http2.max_ping_strikes", 0),
            ],
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health_servicer, server)
        self._app.register(server)
        enable_reflection([*self._app.service_names, HEALTH_SERVICE], server)
        return server

    async def _start(self, server: grpc.aio.Server, http: HttpEndpoint) -> None:
        cfg = self._settings.server
        self._notifier.status("starting")
        for service in ("", *self._app.service_names):
            await self._health_servicer.set(service, _NOT_SERVING)
        _bind(server, str(cfg.grpc_addr), self._settings)
        try:
            await http.start()
        except OSError as exc:
            raise StartupError(f"cannot listen on HTTP {cfg.http_addr}: {exc.strerror}") from exc
        await server.start()
        await self._app.start(
            DaemonContext(self._settings, self._registry, self._closing, self.health,
                          self._auth.allows)
        )
        self._spawn(self._notifier.run_watchdog())
        await self.health.set(*await self._app.readiness())
        # After READY=1: a dependency that is slow to answer must not delay it.
        self._health_loop = asyncio.get_running_loop().create_task(self._watch_health())
        log.info("started", daemon=self._spec.daemon, version=self._version,
                 grpc_addr=str(cfg.grpc_addr), http_addr=str(cfg.http_addr),
                 tls=self._settings.tls.enabled,
                 auth=self._settings.auth.resolve_token() is not None)

    async def _shutdown(self, server: grpc.aio.Server, http: HttpEndpoint) -> None:
        grace = self._settings.server.shutdown_grace
        log.info("shutting_down", grace_seconds=grace)
        began = time.monotonic()
        if self._health_loop is not None:
            # Its checks use what app.stop() releases.
            self._health_loop.cancel()
            await asyncio.gather(self._health_loop, return_exceptions=True)
        await self.health.shut_down()
        stopping = asyncio.ensure_future(server.stop(grace))
        # One loop turn lets grpc start refusing new calls before anyone is told we stop.
        await asyncio.sleep(0)
        self._notifier.stopping()
        self._closing.set()
        await stopping
        await self._app.stop()
        await http.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        log.info("stopped", seconds=round(time.monotonic() - began, 3))

    async def _watch_health(self) -> None:
        """Dependencies now, then readiness and dependencies every `app.health_interval`."""
        await self._check_dependencies()
        interval = self._app.health_interval
        while interval > 0:
            await asyncio.sleep(interval)
            await asyncio.gather(self._check_readiness(), self._check_dependencies())

    async def _check_readiness(self) -> None:
        try:
            serving, reason = await self._app.readiness()
        except Exception as exc:  # a check that fails says so; it never ends the loop
            serving, reason = False, f"readiness check failed: {exc}"
        await self.health.set(serving, reason)

    async def _check_dependencies(self) -> None:
        try:
            states = await self._app.dependencies()
        except Exception:
            log.exception("dependency_check_failed")
            return
        await self.health.set_dependencies(states)

    def _on_stop_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("forced_exit", signal=signal.Signals(signum).name)
            logs.flush()  # os._exit skips every clean-up, the log writer's included
            os._exit(FORCED_EXIT)
        log.info("stop_requested", signal=signal.Signals(signum).name)
        self._stop.set()

    def _on_reload_signal(self) -> None:
        self._spawn(self._reload())

    async def _reload(self) -> None:
        self._notifier.reloading()
        try:
            loaded = load_config(self._spec, self._reload_args, dict(os.environ))
        except ConfigError as exc:
            log.error("reload_rejected", error=str(exc), kept="previous configuration")
            self._notifier.ready("reload rejected; previous configuration kept")
            return
        new = loaded.settings
        restart_needed = [name for name in ("server", "tls")
                          if getattr(new, name) != getattr(self._settings, name)]
        logs.configure_logging(new.log.level, new.log.format)
        self._auth.update(new.auth.resolve_token(), _open_services(new),
                          metrics_open=new.auth.metrics_open, health_open=new.auth.health_open)
        await self._app.reload(new)
        self._settings = new
        if restart_needed:
            log.warning("reload_partial", needs_restart=restart_needed)
        log.info("reloaded", config=str(loaded.path) if loaded.path else None)
        self._notifier.ready("serving (configuration reloaded)")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _health_report(self) -> dict[str, Any]:
        return {
            "healthy": self.health.serving,
            "status": "SERVING" if self.health.serving else "NOT_SERVING",
            "reason": self.health.reason,
            "dependencies": {name: "SERVING" if up else "NOT_SERVING"
                             for name, up in self.health.dependencies.items()},
            "daemon": self._spec.daemon,
            "version": self._version,
        }


def _check_http_exposure(daemon: str, settings: DaemonSettings,
                         routes: Sequence[web.RouteDef]) -> None:
    """Refuse routes that change state served in plaintext beyond this host.

    With TLS configured the HTTP port has it too; without, state-changing routes (and the
    token, when one is set) would cross the network in clear: the daemon does not start unless
    the listener is on loopback or `server.http_allow_plaintext` says the operator accepts it.
    """
    cfg = settings.server
    if settings.tls.enabled or cfg.http_allow_plaintext or _is_loopback(cfg.http_addr.host):
        return
    mutating = sorted({f"{route.method} {route.path}" for route in routes
                       if isinstance(route, web.RouteDef)
                       and route.method.upper() not in ("GET", "HEAD", "OPTIONS")})
    if mutating:
        raise ConfigError(
            f"{daemon}: invalid configuration:\n"
            f"  server.http_addr = '{cfg.http_addr}': serves {', '.join(mutating)} in plaintext "
            "on a non-loopback address; set tls.cert_file and tls.key_file (HTTP then uses TLS "
            "like gRPC), listen on loopback, or set server.http_allow_plaintext = true "
            "(a proxy terminating TLS in front)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _open_services(settings: DaemonSettings) -> list[str]:
    return [HEALTH_SERVICE] if settings.auth.health_open else []


def _bind(server: grpc.aio.Server, address: str, settings: DaemonSettings) -> None:
    tls = settings.tls
    try:
        if tls.enabled:
            assert tls.cert_file is not None and tls.key_file is not None
            client_ca = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
            credentials = grpc.ssl_server_credentials(
                [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
                root_certificates=client_ca,
                require_client_auth=client_ca is not None,
            )
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
    except (RuntimeError, OSError) as exc:
        raise StartupError(f"cannot listen on gRPC {address}: {exc}") from exc
    if port == 0:
        raise StartupError(f"cannot listen on gRPC {address}: address in use or not local")

