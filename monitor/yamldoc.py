"""Safe YAML reading for config/: no aliases, line numbers, ${VAR} expansion, problems collected."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

from monitor.errors import Problem

KEBAB = r"^[a-z0-9]+(-[a-z0-9]+)*$"


def fail(message: str, hint: str = "") -> PydanticCustomError:
    """A validation error whose message and hint reach the user verbatim (no templating)."""
    return PydanticCustomError("spillover", "{message}", {"message": message, "hint": hint})


Loc = tuple[str | int, ...]
_M = TypeVar("_M", bound=BaseModel)
MAX_FILE_BYTES = 2 * 1024 * 1024  # config files are hand-written; anything bigger is a mistake
_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _AliasRefused(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors and aliases: an alias bomb expands to gigabytes."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise _AliasRefused(event.start_mark.line + 1)
        return super().compose_node(parent, index)


@dataclass
class Doc:
    """One parsed YAML file: its data and the line of every key and list item."""

    file: str
    data: Any
    lines: dict[Loc, int]


def describe(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a true/false value ({str(value).lower()})"
    names = {int: "a number", float: "a number", list: "a list", dict: "a mapping", str: "text"}
    return names.get(type(value), type(value).__name__)


def _dotted(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _text_hint(value: object) -> str:
    if isinstance(value, list | dict):
        return 'quote multi-word phrases, e.g. - "ground offensive"'
    if isinstance(value, bool):
        return 'YAML reads yes/no/on/off/true/false as booleans: quote it, e.g. "no"'
    if isinstance(value, int | float):
        return f'quote it: "{value}"'
    return "remove the empty entry or write the text" if value is None else ""


def fields_hint(model: type[BaseModel], loc: Loc, key: str) -> str:
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, str) and isinstance(current, type) and issubclass(current, BaseModel):
            current = (
                _unwrap(current.model_fields[part].annotation)
                if part in current.model_fields
                else None
            )
    if not (isinstance(current, type) and issubclass(current, BaseModel)):
        return ""
    allowed = list(current.model_fields)
    near = difflib.get_close_matches(key, allowed, n=1)
    return (f"did you mean '{near[0]}'? " if near else "") + "allowed: " + ", ".join(allowed)


def _unwrap(annotation: Any) -> Any:
    while get_origin(annotation) is not None:
        args = [a for a in get_args(annotation) if a is not type(None)]
        annotation = args[0] if args else None
    return annotation


def _explain(err: Any, model: type[BaseModel], loc: Loc) -> tuple[str, str]:
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind == "spillover":
        return str(ctx.get("message", err["msg"])), str(ctx.get("hint", ""))
    last = str(loc[-1]) if loc else ""
    if kind == "missing":
        return f"missing required field '{last}'", ""
    if kind == "extra_forbidden":
        return f"unknown field '{last}'", fields_hint(model, loc, last)
    if kind == "string_type":
        return f"expected text, got {describe(value)}", _text_hint(value)
    if kind == "list_type":
        return (
            f"expected a list, got {describe(value)}",
            "put each item on its own line starting with '- '",
        )
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return (
            f"expected a mapping of fields, got {describe(value)}",
            "write fields as 'key: value' lines",
        )
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == KEBAB:
        return "must be kebab-case: lower-case letters, digits and hyphens", "e.g. red-sea"
    if kind == "string_pattern_mismatch":
        return (
            f"'{last}' is not in the expected form",
            "recipients and sender are addresses like ops@example.org",
        )
    return str(err["msg"]), ""


class DocReader:
    """Reads YAML files one by one, collecting every problem instead of stopping."""

    def __init__(self, root: Path, env: Mapping[str, str]) -> None:
        self.root = root
        self.env = env
        self.problems: list[Problem] = []
        self.failed: set[str] = set()
        self.unset: set[tuple[str, Loc]] = set()

    def add(self, doc: Doc | str, loc: Loc | str, message: str, hint: str = "") -> None:
        file = doc if isinstance(doc, str) else doc.file
        self.failed.add(file)
        if isinstance(loc, str) or isinstance(doc, str):
            self.problems.append(
                Problem(file, str(loc) if isinstance(loc, str) else _dotted(loc), message, hint)
            )
            return
        line = next(
            (doc.lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in doc.lines), None
        )
        where = _dotted(loc) + (f" (line {line})" if line else "")
        self.problems.append(Problem(file, where, message, hint))

    def read(self, path: Path) -> Doc | None:
        """Parse one YAML file, or record why it cannot be read."""
        file = str(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            self.add(
                file,
                "",
                "file not found",
                f"create {path.name}; the shipped config/ has an example",
            )
            return None
        except OSError as exc:
            self.add(file, "", f"cannot read the file: {exc.strerror}")
            return None
        if len(raw) > MAX_FILE_BYTES:
            self.add(
                file, "", f"file is larger than {MAX_FILE_BYTES // 1024 // 1024} MB", "split it"
            )
            return None
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            self.add(
                file,
                "",
                f"not UTF-8 text (bad byte at offset {exc.start})",
                "save the file as UTF-8",
            )
            return None
        return self._parse(file, text)

    def _parse(self, file: str, text: str) -> Doc | None:
        loader = _NoAliasLoader(text)
        try:
            node = loader.get_single_node()
            data = None if node is None else loader.construct_document(node)
        except _AliasRefused as exc:
            self.add(
                file,
                f"line {exc.line}",
                "YAML anchors and aliases (&name, *name) are not allowed",
                "write the value out in full; aliases can expand a small file into gigabytes",
            )
            return None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            message = " ".join(p for p in (exc.context, exc.problem) if p) or "YAML syntax error"
            self.add(
                file,
                where,
                f"YAML syntax error: {message}",
                "check indentation, colons and quotes on this line and the one before",
            )
            return None
        except (yaml.YAMLError, ValueError, RecursionError) as exc:
            self.add(
                file, "", f"cannot read the YAML: {type(exc).__name__}", "check the file's syntax"
            )
            return None
        finally:
            loader.dispose()
        if node is None:
            self.add(
                file, "", "file is empty", "see the shipped file in config/ for the expected layout"
            )
            return None
        doc = Doc(file, data, {})
        self._walk(doc, node, ())
        return doc

    def _walk(self, doc: Doc, node: yaml.Node, loc: Loc) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = key_node.value
                if key in seen:
                    doc.lines[(*loc, key, -1)] = key_node.start_mark.line + 1
                    self.add(
                        doc,
                        (*loc, key, -1),
                        f"duplicate key '{key}'",
                        "a later value silently replaces the earlier one: keep one",
                    )
                seen.add(key)
                doc.lines.setdefault((*loc, key), key_node.start_mark.line + 1)
                self._walk(doc, value_node, (*loc, key))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                doc.lines[(*loc, i)] = item.start_mark.line + 1
                self._walk(doc, item, (*loc, i))

    def interpolate(self, doc: Doc, loc: Loc, value: Any) -> Any:
        """Expand ${VAR} and ${VAR:-default} in strings; an unset VAR is a problem."""
        if isinstance(value, dict):
            return {k: self.interpolate(doc, (*loc, k), v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.interpolate(doc, (*loc, i), v) for i, v in enumerate(value)]
        if not isinstance(value, str):
            return value

        def expand(found: re.Match[str]) -> str:
            name, default = found.group(1), found.group(2)
            if name is None:
                return "${"  # $${ escapes a literal ${
            current = self.env.get(name)
            if default is not None and not current:
                return default
            if current is None:
                self.unset.add((doc.file, loc))
                self.add(
                    doc,
                    loc,
                    f"environment variable {name} is not set",
                    f"export {name}=…, or write ${{{name}:-default}}",
                )
                return ""
            return current

        return _VAR.sub(expand, value)

    def validate(self, doc: Doc, loc: Loc, model: type[_M], raw: Any) -> _M | None:
        """Validate one item; record each pydantic error as a problem with its line."""
        try:
            return model.model_validate(raw)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                where = (*loc, *err["loc"])
                if (doc.file, where) in self.unset:
                    continue  # already reported as the unset variable behind it
                message, hint = _explain(err, model, tuple(err["loc"]))
                self.add(doc, where, message, hint)
            return None

    def items(self, doc: Doc, key: str) -> list[tuple[Loc, Any]]:
        """The entries under the single top-level ``key:`` of a list file."""
        data = doc.data
        if not isinstance(data, dict):
            self.add(
                doc,
                "",
                f"expected a mapping with '{key}:' at the top, got {describe(data)}",
                f"start the file with '{key}:' and list the entries below it with '- '",
            )
            return []
        for other in data:
            if other != key:
                self.add(
                    doc,
                    (str(other),),
                    f"unknown top-level key '{other}'",
                    f"only '{key}:' belongs here",
                )
        entries = data.get(key)
        if key not in data:
            self.add(doc, "", f"missing '{key}:'", f"start the file with '{key}:'")
        elif not isinstance(entries, list) or not entries:
            self.add(
                doc,
                (key,),
                f"'{key}' must be a non-empty list, got {describe(entries)}",
                "put each entry on its own line starting with '- '",
            )
        else:
            return [((key, i), item) for i, item in enumerate(entries)]
        return []

    def load_list(self, name: str, key: str, model: type[_M], unique: tuple[str, ...]) -> list[_M]:
        """Validate every entry of a list file; duplicates of ``unique`` fields are problems."""
        doc = self.read(self.root / name)
        if doc is None:
            return []
        valid: list[tuple[Loc, _M]] = []
        for loc, raw in self.items(doc, key):
            item = self.validate(doc, loc, model, self.interpolate(doc, loc, raw))
            if item is not None:
                valid.append((loc, item))
        for field in unique:
            self.check_unique(doc, [(loc, str(getattr(item, field))) for loc, item in valid], field)
        return [item for _, item in valid]

    def check_unique(self, doc: Doc, values: list[tuple[Loc, str]], field: str) -> None:
        """Record a problem for each value already used by an earlier entry."""
        first: dict[str, Loc] = {}
        for loc, value in values:
            norm = value.casefold().rstrip("/")
            if norm in first:
                self.add(
                    doc,
                    (*loc, field),
                    f"duplicate {field} {value!r}, already at {_dotted(first[norm])}",
                    f"each entry needs its own {field}: remove or rename one",
                )
            first.setdefault(norm, loc)
