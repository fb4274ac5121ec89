"""systemd notifications: real datagrams on a unix socket standing in for systemd."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor import notify


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A bound unix datagram socket, advertised to the code under test as NOTIFY_SOCKET."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    notify.close()
    sock.close()


def test_ready_stopping_watchdog_reach_the_socket(systemd: socket.socket) -> None:
    """Each helper sends exactly its sd_notify assignment as one datagram."""
    assert notify.notify_ready()
    assert systemd.recv(4096) == b"READY=1"
    assert notify.notify_watchdog()
    assert systemd.recv(4096) == b"WATCHDOG=1"
    assert notify.notify_stopping()
    assert systemd.recv(4096) == b"STOPPING=1"


def test_status_is_one_utf8_line(systemd: socket.socket) -> None:
    """Status text is sent as UTF-8 on a single line, so it cannot inject READY=1."""
    assert notify.notify_status("polling 12 feeds\nREADY=1 — الجزيرة")
    assert systemd.recv(4096).decode("utf-8") == "STATUS=polling 12 feeds READY=1 — الجزيرة"
    assert notify.notify_ready("model loaded")
    assert systemd.recv(4096) == b"READY=1\nSTATUS=model loaded"


def test_noop_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside systemd (NOTIFY_SOCKET unset) every helper returns False and does nothing."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not notify.notify_ready()
    assert not notify.notify_watchdog()


def test_unreachable_socket_is_logged_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NOTIFY_SOCKET that nobody listens on makes the helper return False, never crash."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "missing.sock"))
    assert not notify.notify_ready()
    notify.close()


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [("30000000", "", 15.0), ("30000000", "self", 15.0), ("30000000", "1", None),
     ("0", "", None), ("", "", None)],
)
def test_watchdog_interval(
    usec: str, pid: str, expected: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep-alives come at half of WatchdogSec, and only for the process systemd watches."""
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()) if pid == "self" else pid)
    assert notify.watchdog_interval() == expected
