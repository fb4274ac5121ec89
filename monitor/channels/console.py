"""The console channel: prints a readable alert block to stdout (what the demo shows)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

from monitor.channels.base import ChannelConfig
from monitor.errors import PermanentDeliveryError
from monitor.models import Alert

if TYPE_CHECKING:
    from monitor.render import Renderer


class ConsoleChannel:
    """Writes each alert to a stream (stdout by default, looked up at send time)."""

    def __init__(
        self, cfg: ChannelConfig, renderer: Renderer, *, stream: TextIO | None = None
    ) -> None:
        self.name = cfg.name
        self._renderer = renderer
        self._stream = stream

    def recipients(self) -> list[str]:
        """Not addressable: one delivery per alert."""
        return [""]

    async def send(self, alert: Alert, recipient: str, *, idempotency_key: str) -> None:
        """Print the alert block; a closed or broken stream is permanent."""
        stream = self._stream or sys.stdout
        try:
            stream.write(self._renderer.render_console(alert) + "\n")
            stream.flush()
        except (OSError, ValueError) as exc:
            raise PermanentDeliveryError(self.name, f"cannot write to the console: {exc}") from exc

    def use_renderer(self, renderer: Renderer) -> None:
        """Switch to templates validated by a live reload."""
        self._renderer = renderer

    async def close(self) -> None:
        """Nothing to release."""
