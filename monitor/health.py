"""The health listener: /healthz, /readyz and /metrics over HTTP, served from a daemon thread."""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import socketserver
import threading
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from monitor import metrics
from monitor.errors import SettingsError
from monitor.logs import mask_text
from monitor.settings import Settings

log = structlog.get_logger(__name__)

Check = Callable[[], bool | Awaitable[bool]]
CHECK_TIMEOUT = 2.0  # a probe must answer well inside a kubelet's default 1 s..10 s timeout range
STARTUP = "startup"  # the pseudo-check reported before any real check exists
LOOP_TIMEOUT = 5.0  # an event loop that cannot run a no-op in 5 s is wedged, not busy


@dataclass(frozen=True)
class CheckResult:
    """One readiness check as /readyz reports it."""

    ok: bool
    detail: str = ""


def parse_listen(listen: str) -> tuple[str, int]:
    """Split ``host:port`` (``[::1]:9108`` for IPv6); raise SettingsError showing the form."""
    host, sep, port = listen.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise SettingsError(
            f"SPILLOVER_HEALTH_LISTEN: expected host:port, got {listen!r}; "
            "e.g. 127.0.0.1:9108, or 0.0.0.0:9108 inside a container"
        )
    return host, int(port)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck probe connection must never hold up shutdown
    health: HealthServer

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup of the host; containers may lack DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10  # slow or idle clients are dropped instead of pinning a thread
    server_version = "spillover-health"
    sys_version = ""

    def do_GET(self) -> None:
        routes = {"/healthz": self._healthz, "/readyz": self._readyz, "/metrics": self._metrics}
        route = routes.get(self.path.split("?", 1)[0])
        if route is None:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
        else:
            route()

    def do_HEAD(self) -> None:
        self.do_GET()

    def _healthz(self) -> None:
        alive, detail = self.server.health.alive()
        status = HTTPStatus.OK if alive else HTTPStatus.SERVICE_UNAVAILABLE
        self._send(status, f"{detail}\n".encode(), "text/plain; charset=utf-8")

    def _readyz(self) -> None:
        results = self.server.health.evaluate()
        ready = all(r.ok for r in results.values())
        body = {
            "ready": ready,
            "failing": sorted(name for name, r in results.items() if not r.ok),
            "checks": {name: {"ok": r.ok, "detail": r.detail} for name, r in results.items()},
        }
        status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
        payload = json.dumps(body, ensure_ascii=False).encode()
        self._send(status, payload + b"\n", "application/json")

    def _metrics(self) -> None:
        # The gauge is refreshed per scrape: set_ready() may run on the loop, where evaluating an
        # async check would wait on the very loop it blocks.
        metrics.set_ready(self.server.health.is_ready())
        payload, content_type = metrics.exposition()
        self._send(HTTPStatus.OK, payload, content_type)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Probes arrive every few seconds: access lines only at debug.
        log.debug("health_request", client=self.client_address[0], line=format % args)


class HealthServer:
    """HTTP listener for probes and scrapes; readiness is the AND of named checks."""

    def __init__(
        self, listen: str, required: Iterable[str] = (), *, loop_timeout: float = LOOP_TIMEOUT
    ) -> None:
        """Parse ``host:port``; every name in ``required`` is failing until marked ready."""
        self._host, self._port = parse_listen(listen)
        self._loop_timeout = loop_timeout
        self._lock = threading.Lock()
        self._states: dict[str, CheckResult] = {
            name: CheckResult(False, "not started") for name in required
        }
        self._checks: dict[str, Check] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, required: Iterable[str] = ()
    ) -> HealthServer | None:
        """A server for ``SPILLOVER_HEALTH_LISTEN``, or None when the listener is off."""
        return cls(settings.health_listen, required) if settings.health_listen else None

    @property
    def port(self) -> int:
        """The bound port (the real one when listening on port 0)."""
        if self._server is None:
            return self._port
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL of the running listener, for tests and log lines."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    def set_ready(self, name: str, ready: bool, detail: str = "") -> None:
        """Record the state of one readiness check (thread-safe; call from anywhere)."""
        with self._lock:
            self._states[name] = CheckResult(ready, mask_text(detail))
            self._checks.pop(name, None)  # the latest word on a name wins, pushed or pulled

    def set_check(self, name: str, fn: Check) -> None:
        """Register a check evaluated on every /readyz; coroutines run on the app's loop."""
        with self._lock:
            self._checks[name] = fn
            self._states.pop(name, None)

    def evaluate(self) -> dict[str, CheckResult]:
        """Every check's current result; callable checks are run now."""
        with self._lock:
            results = dict(self._states)
            checks = dict(self._checks)
        for name, fn in checks.items():
            results[name] = self._run_check(fn)
        if not results:
            # Nothing has reported yet: start-up is still opening resources, so not ready.
            results[STARTUP] = CheckResult(False, "no readiness check registered yet")
        return dict(sorted(results.items()))

    def is_ready(self) -> bool:
        """True when every readiness check passes (not from the loop if checks are async)."""
        return all(r.ok for r in self.evaluate().values())

    def _run_check(self, fn: Check) -> CheckResult:
        try:
            outcome = fn()
            if inspect.isawaitable(outcome):
                outcome = self._await_on_loop(outcome)
        except Exception as exc:  # a failing check is a 503, never a crashed handler
            return CheckResult(False, mask_text(f"{type(exc).__name__}: {exc}"))
        return CheckResult(bool(outcome), "" if outcome else "check returned false")

    def _await_on_loop(self, awaitable: Awaitable[bool]) -> bool:
        loop = self._loop
        if loop is None or loop.is_closed():
            if inspect.iscoroutine(awaitable):
                awaitable.close()  # never awaited: close it so Python does not warn
            raise RuntimeError("async check needs start() from inside the running event loop")

        async def run() -> bool:
            return await awaitable

        future = asyncio.run_coroutine_threadsafe(run(), loop)
        try:
            return future.result(CHECK_TIMEOUT)
        except FutureTimeout:
            future.cancel()
            raise TimeoutError(f"no answer within {CHECK_TIMEOUT:g}s") from None

    def alive(self) -> tuple[bool, str]:
        """Liveness: the process answers and, if one was captured, its event loop still turns."""
        loop = self._loop
        if loop is None or not loop.is_running():
            return True, "ok"
        turned = threading.Event()
        try:
            loop.call_soon_threadsafe(turned.set)
        except RuntimeError:
            return False, "event loop closed"
        if not turned.wait(self._loop_timeout):
            return False, f"event loop blocked for over {self._loop_timeout:g}s"
        return True, "ok"

    def start(self) -> None:
        """Bind and serve in a daemon thread; raise SettingsError if the address is unusable."""
        if self._server is not None:
            return
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None  # started outside asyncio: async checks report as failing
        try:
            server_class = _Server6 if ":" in self._host else _Server
            server = server_class((self._host, self._port), _Handler)
        except OSError as exc:
            raise SettingsError(
                f"SPILLOVER_HEALTH_LISTEN: cannot listen on {self._host}:{self._port}: {exc}; "
                "pick a free port or leave the variable empty to switch the listener off"
            ) from exc
        server.health = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2},
            name="spillover-health", daemon=True,
        )
        self._thread.start()
        log.info("health_listening", url=self.url)

    def stop(self) -> None:
        """Stop serving and release the port; safe to call twice."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(5)
        log.info("health_stopped")
