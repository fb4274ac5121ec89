"""Alert channels: console, email (SMTP) and Slack (incoming webhook)."""

from monitor.channels.base import Channel, build_channel, mask_url

__all__ = ["Channel", "build_channel", "mask_url"]
