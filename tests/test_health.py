"""The health listener: real HTTP requests to /healthz, /readyz and /metrics on loopback."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from monitor import metrics
from monitor.errors import SettingsError
from monitor.health import HealthServer, parse_listen
from monitor.settings import Settings

REQUIRED = ("model", "store", "scheduler")


@pytest.fixture
def server() -> Iterator[HealthServer]:
    """A started listener on a free loopback port, with the app's three readiness checks."""
    health = HealthServer("127.0.0.1:0", required=REQUIRED)
    health.start()
    yield health
    health.stop()


def test_healthz_is_ok_while_alive(server: HealthServer) -> None:
    """/healthz answers 200 "ok" even before anything is ready."""
    response = httpx.get(f"{server.url}/healthz", timeout=5)
    assert response.status_code == 200
    assert response.text.strip() == "ok"
    assert server.port != 0


def test_readyz_waits_for_every_check(server: HealthServer) -> None:
    """/readyz is 503 listing the failing checks until model, store and scheduler are all ready."""
    response = httpx.get(f"{server.url}/readyz", timeout=5)
    assert response.status_code == 503
    assert response.json()["failing"] == sorted(REQUIRED)
    server.set_ready("store", True)
    server.set_ready("scheduler", True)
    response = httpx.get(f"{server.url}/readyz", timeout=5)
    assert response.status_code == 503
    assert response.json()["failing"] == ["model"]
    server.set_ready("model", True)
    response = httpx.get(f"{server.url}/readyz", timeout=5)
    assert response.status_code == 200
    assert response.json() == {
        "ready": True, "failing": [],
        "checks": {name: {"ok": True, "detail": ""} for name in sorted(REQUIRED)},
    }
    server.set_ready("scheduler", False, "draining")  # shutdown takes the replica out first
    body = httpx.get(f"{server.url}/readyz", timeout=5).json()
    assert body["failing"] == ["scheduler"] and body["checks"]["scheduler"]["detail"] == "draining"


def test_metrics_counters_move(server: HealthServer) -> None:
    """/metrics serves the Spillover registry, and a counter moves when incremented."""
    def scrape() -> str:
        response = httpx.get(f"{server.url}/metrics", timeout=5)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        return response.text

    def gone_count(text: str) -> float:
        prefix = 'spillover_fetch_total{outcome="gone"}'
        line = next(x for x in text.splitlines() if x.startswith(prefix))
        return float(line.split()[-1])

    before = scrape()
    metrics.record_fetch("gone")
    metrics.record_fetch("gone")
    after = scrape()
    assert gone_count(after) == gone_count(before) + 2
    assert "spillover_ready 0.0" in after
    for name in REQUIRED:
        server.set_ready(name, True)
    assert "spillover_ready 1.0" in scrape()


def test_failing_callable_check_is_503_with_masked_detail(server: HealthServer) -> None:
    """A check that raises makes /readyz 503 and its message is shown without the password."""
    for name in REQUIRED:
        server.set_ready(name, True)

    def store_ping() -> bool:
        raise ConnectionError("redis://:hunter2@10.0.0.5:6379/0 refused")

    server.set_check("store", store_ping)
    response = httpx.get(f"{server.url}/readyz", timeout=5)
    assert response.status_code == 503
    detail = response.json()["checks"]["store"]["detail"]
    assert "ConnectionError" in detail and "redis://:****@10.0.0.5" in detail
    assert "hunter2" not in response.text
    server.set_check("store", lambda: True)
    assert httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200


def test_not_ready_before_any_check_reports() -> None:
    """A listener with no checks yet is not ready: start-up has not reported anything."""
    health = HealthServer("127.0.0.1:0")
    health.start()
    try:
        response = httpx.get(f"{health.url}/readyz", timeout=5)
        assert response.status_code == 503 and response.json()["failing"] == ["startup"]
        health.set_ready("model", True)
        assert httpx.get(f"{health.url}/readyz", timeout=5).status_code == 200
    finally:
        health.stop()


def test_unknown_path_and_head(server: HealthServer) -> None:
    """Unknown paths are 404; HEAD answers with headers and no body."""
    assert httpx.get(f"{server.url}/admin", timeout=5).status_code == 404
    head = httpx.head(f"{server.url}/healthz", timeout=5)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == "3"


async def test_async_check_runs_on_the_app_loop() -> None:
    """Coroutine checks run on the app's event loop, which keeps serving while /readyz waits."""
    health = HealthServer("127.0.0.1:0")
    health.start()
    loop = asyncio.get_running_loop()
    store_up = True

    async def store_ping() -> bool:
        assert asyncio.get_running_loop() is loop
        await asyncio.sleep(0.01)
        return store_up

    health.set_check("store", store_ping)
    try:
        async with httpx.AsyncClient(base_url=health.url, timeout=5) as client:
            assert (await client.get("/readyz")).status_code == 200
            store_up = False
            response = await client.get("/readyz")
            assert response.status_code == 503 and response.json()["failing"] == ["store"]
    finally:
        health.stop()


async def test_healthz_fails_when_the_event_loop_is_blocked() -> None:
    """/healthz turns 503 while the app's event loop is wedged, so an orchestrator restarts it."""
    health = HealthServer("127.0.0.1:0", loop_timeout=0.3)
    health.start()
    loop = asyncio.get_running_loop()
    try:
        pending = loop.run_in_executor(None, lambda: httpx.get(f"{health.url}/healthz", timeout=5))
        time.sleep(1.0)  # noqa: ASYNC251 deliberately block the loop, as a runaway synchronous call would
        blocked = await pending
        assert blocked.status_code == 503 and "blocked" in blocked.text
        async with httpx.AsyncClient(timeout=5) as client:
            assert (await client.get(f"{health.url}/healthz")).status_code == 200
    finally:
        health.stop()


@pytest.mark.parametrize("listen", ["9108", "localhost", ":9108", "host:99999", "host:http"])
def test_bad_listen_address_names_the_variable(listen: str) -> None:
    """A malformed SPILLOVER_HEALTH_LISTEN is a SettingsError that shows the expected form."""
    with pytest.raises(SettingsError, match=r"SPILLOVER_HEALTH_LISTEN.*host:port"):
        parse_listen(listen)


def test_listen_forms() -> None:
    """IPv4, all-interfaces and bracketed IPv6 forms parse."""
    assert parse_listen("0.0.0.0:9108") == ("0.0.0.0", 9108)
    assert parse_listen("[::1]:9108") == ("::1", 9108)


def test_port_in_use_is_a_settings_error(server: HealthServer) -> None:
    """Binding a busy port fails with a message telling the operator what to change."""
    other = HealthServer(f"127.0.0.1:{server.port}")
    with pytest.raises(SettingsError, match="pick a free port"):
        other.start()


def test_off_unless_configured_and_stop_releases_port() -> None:
    """No listener without SPILLOVER_HEALTH_LISTEN; stop() frees the port and is idempotent."""
    assert HealthServer.from_settings(Settings(health_listen="")) is None
    health = HealthServer.from_settings(Settings(health_listen="127.0.0.1:0"))
    assert health is not None
    health.start()
    port = health.port
    health.stop()
    health.stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
