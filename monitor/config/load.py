"""The loader of config/: read every file, validate all of it, report every problem at once."""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from monitor.config.channels import (
    CHANNEL_TYPES,
    ChannelsFile,
    ConsoleChannel,
    EmailChannel,
    SlackChannel,
)
from monitor.config.models import (
    FeedConfig,
    FeedsFile,
    RegionDef,
    RegionsFile,
    SignalDef,
    SignalsFile,
    Watchlist,
)
from monitor.errors import ConfigError
from monitor.yamldoc import Doc, DocReader, Loc, describe, fields_hint


@dataclass(frozen=True)
class Config:
    """Everything in config/, validated; replaced as a whole on reload."""

    root: Path
    feeds: tuple[FeedConfig, ...]
    signals: tuple[SignalDef, ...]
    regions: tuple[RegionDef, ...]
    watchlists: tuple[Watchlist, ...]
    channels: tuple[ConsoleChannel | EmailChannel | SlackChannel, ...]
    disabled_channels: tuple[str, ...] = ()

    def enabled_channels(self) -> tuple[ConsoleChannel | EmailChannel | SlackChannel, ...]:
        """Channels switched on (``when_env`` set, ``enabled`` true); only these are validated."""
        return self.channels

    def channels_for(
        self, watchlist: Watchlist | str
    ) -> tuple[ConsoleChannel | EmailChannel | SlackChannel, ...]:
        """The enabled channels a watch-list sends to ("all" expands to every one)."""
        wl = self.watchlist(watchlist) if isinstance(watchlist, str) else watchlist
        if "all" in wl.channels:
            return self.channels
        return tuple(ch for ch in self.channels if ch.name in wl.channels)

    def signal(self, name: str) -> SignalDef:
        """The signal called ``name``; KeyError if there is none."""
        return _by_name(self.signals, name)

    def region(self, name: str) -> RegionDef:
        """The region called ``name``; KeyError if there is none."""
        return _by_name(self.regions, name)

    def watchlist(self, name: str) -> Watchlist:
        """The watch-list called ``name``; KeyError if there is none."""
        return _by_name(self.watchlists, name)

    def escalation_signals(self) -> tuple[str, ...]:
        """Names of every escalation signal, in file order."""
        return tuple(s.name for s in self.signals if s.direction == "escalation")


_Named = TypeVar("_Named", SignalDef, RegionDef, Watchlist)


def _by_name(items: tuple[_Named, ...], name: str) -> _Named:
    for item in items:
        if item.name == name:
            return item
    raise KeyError(name)


SCHEMAS: dict[str, type[BaseModel]] = {
    "feeds.schema.json": FeedsFile,
    "signals.schema.json": SignalsFile,
    "regions.schema.json": RegionsFile,
    "watchlist.schema.json": Watchlist,
    "channels.schema.json": ChannelsFile,
}


def schema_text(model: type[BaseModel]) -> str:
    """The JSON Schema of one config file, as stable, pretty-printed text."""
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **model.model_json_schema(),
    }
    return json.dumps(schema, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def write_schemas(out_dir: Path) -> list[Path]:
    """Write a JSON Schema per config file kind into ``out_dir``; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, model in SCHEMAS.items():
        path = out_dir / filename
        path.write_text(schema_text(model), encoding="utf-8")
        written.append(path)
    return written


class _ConfigLoader(DocReader):
    """The config/-specific parts: channels switched by env, one watch-list per file."""

    def load_channels(self) -> tuple[list[ConsoleChannel | EmailChannel | SlackChannel], list[str]]:
        """Validate enabled channels fully; check only the shape of disabled ones."""
        doc = self.read(self.root / "channels.yaml")
        if doc is None:
            return [], []
        enabled: list[ConsoleChannel | EmailChannel | SlackChannel] = []
        disabled: list[str] = []
        names: list[tuple[Loc, str]] = []
        for loc, raw in self.items(doc, "channels"):
            model = self.channel_model(doc, loc, raw)
            if model is None:
                continue
            if isinstance(raw.get("name"), str):
                names.append((loc, raw["name"]))
            if self.channel_enabled(raw):
                channel = self.validate(doc, loc, model, self.interpolate(doc, loc, raw))
                enabled.extend([channel] if channel is not None else [])
                continue
            disabled.append(str(raw.get("name")))
            for key in raw:
                if key not in model.model_fields:
                    self.add(
                        doc,
                        (*loc, key),
                        f"unknown field '{key}'",
                        fields_hint(model, (key,), str(key)),
                    )
        self.check_unique(doc, names, "name")
        for loc, name in names:
            if name == "all":
                self.add(
                    doc,
                    (*loc, "name"),
                    "'all' is reserved",
                    'watch-lists use channels: ["all"] for every channel',
                )
        return enabled, disabled

    def channel_model(
        self, doc: Doc, loc: Loc, raw: Any
    ) -> type[ConsoleChannel | EmailChannel | SlackChannel] | None:
        """The model for a channel entry's ``type``, or a problem."""
        if not isinstance(raw, dict):
            self.add(
                doc,
                loc,
                f"expected a mapping of fields, got {describe(raw)}",
                "write fields as 'key: value' lines",
            )
            return None
        kind = raw.get("type")
        model = CHANNEL_TYPES.get(kind) if isinstance(kind, str) else None
        if model is None:
            self.add(
                doc,
                (*loc, "type"),
                f"unknown or missing channel type {kind!r}",
                "type: one of " + ", ".join(CHANNEL_TYPES),
            )
        return model

    def channel_enabled(self, raw: dict[str, Any]) -> bool:
        """Off when ``enabled: false`` or when its ``when_env`` variable is empty or unset."""
        if raw.get("enabled", True) is False:
            return False
        var = raw.get("when_env")
        return not isinstance(var, str) or bool(self.env.get(var, "").strip())

    def load_watchlists(self) -> list[tuple[Doc, Watchlist]]:
        """Every watch-list file in config/watchlists/, one watch-list per file."""
        folder = self.root / "watchlists"
        paths = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]) if folder.is_dir() else []
        if not paths:
            self.add(
                str(folder),
                "",
                "no watch-lists found",
                "add at least one file such as watchlists/middle-east.yaml",
            )
        found: list[tuple[Doc, Watchlist]] = []
        for path in paths:
            doc = self.read(path)
            if doc is None:
                continue
            if not isinstance(doc.data, dict):
                self.add(
                    doc,
                    "",
                    f"expected a mapping of watch-list fields, got {describe(doc.data)}",
                    "see config/watchlists/middle-east.yaml",
                )
                continue
            raw = {"name": path.stem, **self.interpolate(doc, (), doc.data)}
            watchlist = self.validate(doc, (), Watchlist, raw)
            if watchlist is not None:
                found.append((doc, watchlist))
        return found

    def check_references(
        self, doc: Doc, wl: Watchlist, field: str, known: list[str], what: str
    ) -> None:
        """Every name in ``wl.<field>`` must exist; the hint lists near matches."""
        for i, name in enumerate(getattr(wl, field)):
            if name in known or (field == "channels" and name == "all"):
                continue
            near = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(near)}? " if near else ""
            self.add(
                doc,
                (field, i),
                f"unknown {what} {name!r}",
                hint + f"known: {', '.join(known) or 'none'}",
            )


def load_config(root: Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate everything under ``root``; raise ConfigError listing every problem.

    All or nothing: on any problem nothing is returned, so a reloading daemon keeps
    its last good config. ``env`` (default ``os.environ``) feeds ${VAR} interpolation
    and the channels' ``when_env`` switches.
    """
    loader = _ConfigLoader(root, os.environ if env is None else env)
    feeds = loader.load_list("feeds.yaml", "feeds", FeedConfig, ("url", "name"))
    signals = loader.load_list("signals.yaml", "signals", SignalDef, ("name",))
    regions = loader.load_list("regions.yaml", "regions", RegionDef, ("name",))
    channels, disabled = loader.load_channels()
    found = loader.load_watchlists()
    failed = set(loader.failed)
    for doc, wl in found:
        for field, items, what, file in (
            ("regions", [r.name for r in regions], "region", "regions.yaml"),
            ("signals", [s.name for s in signals], "signal", "signals.yaml"),
            ("channels", [c.name for c in channels] + disabled, "channel", "channels.yaml"),
        ):
            if str(root / file) not in failed:  # else the real problem is already reported
                loader.check_references(doc, wl, field, items, what)
    first: dict[str, str] = {}
    for doc, wl in found:
        if wl.name in first:
            loader.add(
                doc,
                ("name",),
                f"watch-list name {wl.name!r} is also used by {first[wl.name]}",
                "set a different name: in one of the files",
            )
        first.setdefault(wl.name, doc.file)
    if loader.problems:
        raise ConfigError(loader.problems)
    return Config(
        root,
        tuple(feeds),
        tuple(signals),
        tuple(regions),
        tuple(wl for _, wl in found),
        tuple(channels),
        tuple(disabled),
    )
