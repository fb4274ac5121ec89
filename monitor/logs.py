"""Logging set-up (structlog over stdlib logging, to stderr) and masking of secrets in log lines."""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, Literal, TextIO
from urllib.parse import unquote_plus, urlsplit, urlunsplit

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from monitor.errors import SettingsError

LogFormat = Literal["console", "json"]
MASK = "****"
ELLIPSIS = "…"

# Query parameters and mapping keys whose values are credentials. Matched on name parts so that
# "access_token", "X-Amz-Signature" and "apiKey" are caught but "signal" or "tokens_used" are not.
_QUERY_PARTS = frozenset(
    {"token", "key", "secret", "password", "passwd", "pwd", "pass", "sig", "signature",
     "auth", "credential", "credentials", "apikey"}
)
_KEY_PARTS = frozenset(
    {"password", "passwd", "pwd", "secret", "token", "webhook", "authorization", "apikey",
     "credential", "credentials", "cookie", "dsn"}
)
_KEY_SUFFIXES = ("password", "secret", "token", "webhook", "apikey")
_NAME_SPLIT = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")

_URL = re.compile(r"""[A-Za-z][A-Za-z0-9+.\-]*://[^\s<>"'`]+""")
_AUTH_HEADER = re.compile(
    r"(?i)\b((?:proxy-)?authorization\b[\"']?\s*[:=]\s*[\"']?)"
    r"(?:(?:bearer|basic|token|digest)\s+)?[^\s\"',;]+"
)
_KEY_VALUE = re.compile(
    r"(?i)\b([\w.\-]*(?:password|passwd|secret|token|api[_\-]?key)[\"']?\s*[=:]\s*)"
    r"(\"[^\"]*\"|'[^']*'|[^\s,;&\"'}]+)"
)
_HINT = re.compile(r"(?i)authorization|passw|secret|token|api[_\-]?key|xox")
_SLACK_TOKEN = re.compile(r"\bxox[abposr]-[A-Za-z0-9\-]+")
# A path segment after which everything is secret. "services" and friends only count on a hook host:
# plenty of feed URLs live under /services/.
_PATH_MARKERS = frozenset({"webhooks", "webhook", "hooks", "webhookb2"})
_HOST_MARKERS = _PATH_MARKERS | {"services", "workflows", "triggers"}


def _name_parts(name: str) -> list[str]:
    return [p.lower() for p in _NAME_SPLIT.split(name) if p]


def _is_secret_param(name: str) -> bool:
    lowered = name.lower()
    return bool(set(_name_parts(name)) & _QUERY_PARTS) or lowered in _QUERY_PARTS


@functools.lru_cache(maxsize=1024)  # field names repeat; checked for every field of every line
def is_secret_key(name: str) -> bool:
    """True if a mapping key (log field, header, setting) names a credential."""
    lowered = name.lower().replace("-", "_")
    if set(_name_parts(name)) & _KEY_PARTS:
        return True
    return lowered.endswith(_KEY_SUFFIXES) or lowered.startswith("webhook")


def _is_webhook(host: str, path: str) -> bool:
    segments = {s.lower() for s in path.split("/") if s}
    return "hook" in host or bool(segments & _PATH_MARKERS)


def _mask_webhook_path(host: str, path: str) -> str:
    segments = [s for s in path.split("/") if s]
    lowered = [s.lower() for s in segments]
    markers = _HOST_MARKERS if "hook" in host else _PATH_MARKERS
    keep = next((i + 1 for i, s in enumerate(lowered) if s in markers), 0)
    masked = [ELLIPSIS] * (len(segments) - keep)
    if host == "hooks.slack.com" and lowered[:1] == ["services"]:
        # Slack's T…/B… prefixes say which workspace and channel without giving the secret away.
        masked = [s[0] + ELLIPSIS if i < 2 and s[:1] in "TB" else ELLIPSIS
                  for i, s in enumerate(segments[keep:])]
    return "/" + "/".join(segments[:keep] + masked) if segments else path


def _mask_userinfo(netloc: str) -> str:
    userinfo, at, hostport = netloc.rpartition("@")
    if not at:
        return netloc
    user, colon, _password = userinfo.partition(":")
    if not colon:
        return f"{MASK}@{hostport}"  # a lone user-info is usually a token (https://TOKEN@host)
    return f"{user}:{MASK}@{hostport}"


def _mask_query(query: str) -> str:
    pairs = [pair.partition("=") for pair in query.split("&")] if query else []
    if not any(_is_secret_param(unquote_plus(k)) for k, _, _ in pairs):
        return query
    # Rebuilt from the raw pairs so the rest of the query keeps its exact encoding.
    return "&".join(
        f"{k}={MASK}" if _is_secret_param(unquote_plus(k)) else f"{k}{eq}{v}" for k, eq, v in pairs
    )


def mask_url(url: str) -> str:
    """The URL with its password, webhook secret path and credential query values masked."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
    except ValueError:
        # A URL too broken to parse may still carry a password: keep only the scheme.
        scheme, sep, _rest = url.partition("://")
        return f"{scheme}://{ELLIPSIS}" if sep else MASK
    path = _mask_webhook_path(host, parts.path) if _is_webhook(host, parts.path) else parts.path
    return urlunsplit((parts.scheme, _mask_userinfo(parts.netloc), path,
                       _mask_query(parts.query), parts.fragment))


def _redact_url(url: str) -> str:
    """Scheme and host only, for values of keys like ``webhook_url`` whose whole path is secret."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return MASK
    if not parts.scheme or not host:
        return MASK
    return f"{parts.scheme}://{host}{port}/{ELLIPSIS}"


def mask_text(text: str) -> str:
    """Free text (an error message, a log line) with every URL and credential in it masked."""
    if "://" not in text and not _HINT.search(text):
        return text  # the common case, one cheap scan: nothing here could be a secret
    text = _URL.sub(lambda m: mask_url(m.group(0)), text)
    text = _AUTH_HEADER.sub(lambda m: m.group(1) + MASK, text)
    text = _SLACK_TOKEN.sub(lambda m: m.group(0)[:5] + ELLIPSIS, text)
    return _KEY_VALUE.sub(lambda m: m.group(1) + MASK, text)


def _mask_secret_value(value: Any) -> Any:
    # Numbers are counts ("token_count"), never our credentials, which are all strings.
    if value is None or value == "" or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str) and "://" in value:
        # A known webhook shape keeps its readable T…/B… form; any other URL keeps only its host.
        masked = mask_url(value)
        return masked if masked != value else _redact_url(value)
    return MASK


def mask_value(value: Any) -> Any:
    """Mask secrets anywhere inside a log value: strings, mappings, sequences, odd objects."""
    if isinstance(value, str):
        return mask_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {k: (_mask_secret_value(v) if isinstance(k, str) and is_secret_key(k)
                    else mask_value(v)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [mask_value(v) for v in value]
    # Objects (httpx.URL, exceptions) are rendered with str()/repr() later: check both forms now.
    for form in (str(value), repr(value)):
        masked = mask_text(form)
        if masked != form:
            return masked
    return value


def mask_secrets(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """Processor for structlog: mask credentials in every field, the event text and tracebacks."""
    for key, value in list(event_dict.items()):
        if key.startswith("_"):
            continue  # ProcessorFormatter's private _record / _from_structlog
        event_dict[key] = _mask_secret_value(value) if is_secret_key(key) else mask_value(value)
    return event_dict


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is at emit time (test capture, redirection)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def _level_number(level: str) -> int:
    number = logging.getLevelNamesMapping().get(level.strip().upper())
    if number is None:
        raise SettingsError(
            f"SPILLOVER_LOG_LEVEL: unknown level {level!r}; use DEBUG, INFO, WARNING or ERROR"
        )
    return number


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        # Tracebacks are rendered to text before masking: exception messages carry URLs.
        structlog.processors.format_exc_info,
        mask_secrets,
    ]


def _renderer(fmt: str) -> Processor:
    if fmt == "json":
        return structlog.processors.JSONRenderer(serializer=json.dumps, ensure_ascii=False)
    if fmt == "console":
        return structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    raise SettingsError(f"SPILLOVER_LOG_FORMAT: unknown format {fmt!r}; use console or json")


def configure_logging(fmt: LogFormat | str = "console", level: str = "INFO") -> None:
    """Route structlog and stdlib loggers through one masked renderer on stderr; idempotent."""
    number = _level_number(level)
    shared = _shared_processors()
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _renderer(fmt)],
    )
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    handler.spillover = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "spillover", False)]:
        root.removeHandler(old)  # replace only our own handler; keep pytest's capture handlers
    root.addHandler(handler)
    root.setLevel(number)
    # httpx logs every request line at INFO, webhook URLs included: only keep it when debugging.
    for noisy in ("httpx", "httpcore", "aiosmtplib", "apscheduler"):
        logging.getLogger(noisy).setLevel(max(number, logging.WARNING))
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.PositionalArgumentsFormatter(),
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached, so that a reload (or a test) can reconfigure module-level loggers.
        cache_logger_on_first_use=False,
    )
