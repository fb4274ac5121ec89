"""Command-line parsing only: `spillover <command>`; each command hands over to monitor.commands."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_CONFIG = Path(os.environ.get("SPILLOVER_CONFIG_DIR", "config"))


def _config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                   help="directory with feeds.yaml, signals.yaml, regions.yaml, channels.yaml, "
                        "watchlists/ (default: %(default)s, or $SPILLOVER_CONFIG_DIR)")
    p.add_argument("--alerts", type=Path, default=None,
                   help="directory of message templates (default: alerts/ beside the config dir)")


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    parser = argparse.ArgumentParser(
        prog="spillover",
        description="Watch English and Arabic news feeds for Middle East escalation; alert by "
                    "email and Slack.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the daemon (or poll once with --once)")
    _config(p)
    p.add_argument("--once", action="store_true",
                   help="poll every feed once, process and deliver everything, then exit")

    sub.add_parser("demo", help="run once on the offline seed feeds (no Redis, SMTP or Slack)")

    p = sub.add_parser("check", help="validate config/ and alerts/; exit 1 listing every problem")
    _config(p)

    p = sub.add_parser("schema", help="write JSON Schema for the YAML files (editor validation)")
    p.add_argument("--out", type=Path, default=Path("config/schema"))

    p = sub.add_parser("feeds", help="manage feeds.yaml")
    fsub = p.add_subparsers(dest="feeds_command", required=True, metavar="ACTION")
    pi = fsub.add_parser("import", help="add the feeds of an OPML file to feeds.yaml")
    pi.add_argument("opml", type=Path)
    _config(pi)

    p = sub.add_parser("classify", help="classify JSON lines (--input) or one text (--text)")
    _config(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--input", type=Path, help='JSON lines {"id","title","summary"[,"lang"]}; '
                                              '"-" for stdin')
    g.add_argument("--text", help="one text: prints a readable explanation")

    p = sub.add_parser("eval", help="precision/recall/F1 per language on labelled JSON lines")
    _config(p)
    p.add_argument("--input", type=Path, required=True)
    p.add_argument("--misses", type=int, default=20, help="how many misses to list")

    p = sub.add_parser("model", help="the encoder")
    msub = p.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    pm = msub.add_parser("prepare", help="build the local model copy once and check it")
    pm.add_argument("--force", action="store_true")

    p = sub.add_parser("status", help="feed health, outbox and last alerts at a glance")
    _config(p)

    p = sub.add_parser("outbox", help="inspect and retry alert deliveries")
    osub = p.add_subparsers(dest="outbox_command", required=True, metavar="ACTION")
    ol = osub.add_parser("list", help="list deliveries")
    ol.add_argument("--status", choices=["pending", "done", "dead"], default=None)
    orr = osub.add_parser("retry", help="send a dead or pending delivery again now")
    orr.add_argument("id")

    p = sub.add_parser("test-alert", help="send a sample alert built from the founding article")
    _config(p)
    p.add_argument("--channel", required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, configure logging, hand over; return the exit code."""
    args = build_parser().parse_args(argv)
    from monitor import commands

    return commands.dispatch(args)


if __name__ == "__main__":
    sys.exit(main())
