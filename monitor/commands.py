"""The commands behind the CLI: each loads what it needs, does one job, returns an exit code."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import structlog

from monitor.errors import ConfigError, MonitorError, SettingsError
from monitor.logs import configure_logging
from monitor.settings import Settings, load_settings

log = structlog.get_logger(__name__)


def dispatch(args: argparse.Namespace) -> int:
    """Run the command named in ``args``; print MonitorErrors plainly, exit 1 or 2."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    quiet = args.command in ("demo", "classify", "eval") and "SPILLOVER_LOG_LEVEL" not in os.environ
    configure_logging(settings.log_format, "WARNING" if quiet else settings.log_level)
    name = args.command.replace("-", "_")
    sub = getattr(args, f"{name}_command", None)
    handler: Callable[[argparse.Namespace, Settings], int] = COMMANDS[
        f"{name}_{sub}" if sub else name]
    try:
        return handler(args, settings)
    except ConfigError as exc:
        print(f"configuration has {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(str(problem), file=sys.stderr)
        return 1
    except MonitorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def alerts_dir(args: argparse.Namespace) -> Path:
    """--alerts, else <config>/alerts, else alerts/ beside the config directory, else ./alerts."""
    if getattr(args, "alerts", None):
        return Path(args.alerts)
    config = Path(args.config).resolve()
    for candidate in (config / "alerts", config.parent / "alerts"):
        if candidate.is_dir():
            return candidate
    return Path("alerts")


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    """Spillover run [--once]."""
    from monitor import app

    return asyncio.run(app.main(settings, args.config, alerts_dir(args), once=args.once))


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Serve seeds/feeds on loopback and run once on a fresh state, printing what came in."""
    from monitor import app
    from monitor.demo import demo_config, print_ingested, serve_seed_feeds

    root = Path(__file__).resolve().parent.parent
    with serve_seed_feeds(root / "seeds" / "feeds") as base_url, \
            tempfile.TemporaryDirectory(prefix="spillover-demo-") as tmp:
        config_dir = demo_config(root, Path(tmp), base_url)
        demo_settings = settings.model_copy(update={
            "data_dir": Path(tmp), "allow_private_networks": True,
            "model_cache": settings.model_dir.resolve(),
        })
        holder: list[app.Runtime] = []

        def keep(rt: app.Runtime) -> None:
            rt.analyzer.record = True
            holder.append(rt)

        code = asyncio.run(app.main(demo_settings, config_dir, root / "alerts", once=True,
                                    hook=keep))
        if holder:
            print_ingested(holder[0])
        return code


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    """Validate config/ and alerts/ all at once."""
    from monitor.config import load_config
    from monitor.render import Renderer

    problems = []
    config = None
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        problems += exc.problems
    try:
        Renderer(alerts_dir(args))
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(problems)
    if config is None:  # unreachable: load_config raised or returned
        return 1
    print(f"ok: {len(config.feeds)} feeds, {len(config.watchlists)} watch-lists, "
          f"{len(config.signals)} signals, {len(config.regions)} regions, "
          f"channels enabled: {', '.join(c.name for c in config.enabled_channels()) or 'none'}")
    return 0


def cmd_schema(args: argparse.Namespace, settings: Settings) -> int:
    """Write JSON Schema files."""
    from monitor.config import write_schemas

    for path in write_schemas(args.out):
        print(path)
    return 0


def cmd_feeds_import(args: argparse.Namespace, settings: Settings) -> int:
    """Add an OPML file's feeds to feeds.yaml."""
    from monitor.opml import import_opml

    added = import_opml(args.opml, Path(args.config) / "feeds.yaml")
    print(f"added {len(added)} feed(s)" + (": " + ", ".join(added) if added else ""))
    return 0


def cmd_model_prepare(args: argparse.Namespace, settings: Settings) -> int:
    """Build the local model copy once into the cache and check it."""
    from monitor.analysis.prepare import prepare_model

    path = prepare_model(settings, force=args.force)
    print(f"model ready: {path}")
    return 0


def cmd_classify(args: argparse.Namespace, settings: Settings) -> int:
    """The stable classify contract: one JSON line out per line in, in order."""
    from monitor.classify_cli import classify_lines, explain_text

    judge = _judge(settings, args.config)
    if args.text is not None:
        print(explain_text(judge, args.text))
        return 0
    with _open_input(args.input) as stream:
        return classify_lines(judge, stream, sys.stdout)


def cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    """Precision, recall and F1 per language and overall, and the misses."""
    from monitor.classify_cli import evaluate_lines

    judge = _judge(settings, args.config)
    with _open_input(args.input) as stream:
        return evaluate_lines(judge, stream, sys.stdout, misses=args.misses)


def _judge(settings: Settings, config_dir: Path):  # type: ignore[no-untyped-def]
    from monitor.analysis.classify import Classifier, Head, default_head_path
    from monitor.analysis.encoder import load_encoder
    from monitor.analysis.match import Matcher
    from monitor.analyze import Judge
    from monitor.config import load_config

    config = load_config(config_dir)
    encoder = load_encoder(settings)
    classifier = Classifier(encoder, config.signals, Head.load(default_head_path()))
    return Judge(classifier, Matcher(config), config)


class _open_input:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.stream: TextIO | None = None

    def __enter__(self) -> TextIO:
        if str(self.path) == "-":
            return sys.stdin
        try:
            self.stream = self.path.open(encoding="utf-8")
        except OSError as exc:
            raise MonitorError(f"{self.path}: cannot read input ({exc.strerror})") from exc
        return self.stream

    def __exit__(self, *exc: object) -> None:
        if self.stream:
            self.stream.close()


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    """Feed health, outbox and last alerts."""
    from monitor.status import print_status

    return asyncio.run(print_status(settings, args.config))


def cmd_outbox_list(args: argparse.Namespace, settings: Settings) -> int:
    """List deliveries."""
    from monitor.status import outbox_list

    return asyncio.run(outbox_list(settings, args.status))


def cmd_outbox_retry(args: argparse.Namespace, settings: Settings) -> int:
    """Re-queue one delivery now."""
    from monitor.status import outbox_retry

    return asyncio.run(outbox_retry(settings, args.id))


def cmd_test_alert(args: argparse.Namespace, settings: Settings) -> int:
    """Send the founding article's sample alert to one channel."""
    from monitor.status import send_test_alert

    return asyncio.run(send_test_alert(args.config, alerts_dir(args), args.channel))


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "run": cmd_run, "demo": cmd_demo, "check": cmd_check, "schema": cmd_schema,
    "feeds_import": cmd_feeds_import, "model_prepare": cmd_model_prepare,
    "classify": cmd_classify, "eval": cmd_eval, "status": cmd_status,
    "outbox_list": cmd_outbox_list, "outbox_retry": cmd_outbox_retry,
    "test_alert": cmd_test_alert,
}


