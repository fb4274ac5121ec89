"""systemd readiness and watchdog notifications (sd_notify); silent when not run by systemd."""

from __future__ import annotations

import os
import socket
import threading

import sdnotify
import structlog

log = structlog.get_logger(__name__)

_lock = threading.Lock()
_notifier: _Notifier | None = None


class _Notifier(sdnotify.SystemdNotifier):  # type: ignore[misc]
    """sdnotify's notifier, connecting without leaking a socket when the address is wrong."""

    def __init__(self, address: str) -> None:
        self.debug = True  # raise, so that we log a failed notification instead of losing it
        self.address = address
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        target = "\0" + address[1:] if address.startswith("@") else address  # abstract namespace
        try:
            sock.connect(target)
        except OSError:
            sock.close()
            raise
        self.socket = sock

    def close(self) -> None:
        self.socket.close()


def _current(address: str) -> _Notifier:
    """The cached notifier for ``address``, reconnecting if NOTIFY_SOCKET changed."""
    global _notifier
    if _notifier is None or _notifier.address != address:
        if _notifier is not None:
            _notifier.close()
            _notifier = None
        _notifier = _Notifier(address)
    return _notifier


def _send(state: str) -> bool:
    """Send one notification; True if systemd (or whoever set NOTIFY_SOCKET) was told."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    with _lock:
        try:
            _current(address).notify(state)
        except OSError as exc:
            log.warning("sd_notify_failed", state=state.split("=", 1)[0], error=str(exc),
                        hint="check NOTIFY_SOCKET and the unit's NotifyAccess=")
            return False
    return True


def _status_line(text: str) -> str:
    # One line only: a newline would let status text inject READY=1 or similar assignments.
    line = " ".join(text.split())
    # sdnotify encodes Latin-1; systemd reads UTF-8. Handing it UTF-8 bytes as Latin-1 characters
    # makes the bytes on the wire UTF-8, so Arabic feed names show correctly in systemctl status.
    return line.encode("utf-8").decode("latin-1")


def notify_ready(status: str = "") -> bool:
    """Tell systemd start-up is complete (Type=notify): the model is loaded, polling has begun."""
    return _send("READY=1" + (f"\nSTATUS={_status_line(status)}" if status else ""))


def notify_stopping() -> bool:
    """Tell systemd a graceful stop (drain) has begun."""
    return _send("STOPPING=1")


def notify_status(text: str) -> bool:
    """Set the one-line status shown by ``systemctl status``."""
    return _send(f"STATUS={_status_line(text)}")


def notify_watchdog() -> bool:
    """Keep-alive for WatchdogSec=; send at least every ``watchdog_interval()`` seconds."""
    return _send("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """Seconds between keep-alives (half of WatchdogSec=), or None when no watchdog is armed."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None  # the watchdog is armed for another process (e.g. a wrapper script)
    return int(usec) / 1_000_000 / 2


def close() -> None:
    """Close the notification socket (tests; the process exit closes it otherwise)."""
    global _notifier
    with _lock:
        if _notifier is not None:
            _notifier.close()
            _notifier = None
