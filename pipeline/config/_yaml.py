"""YAML as our files use it: line numbers for messages, duplicate keys refused, YAML 1.2 floats.

PyYAML implements YAML 1.1, where a float needs a dot and a signed exponent, so ``lr: 1e-3`` is
read as the string ``"1e-3"``. The loader here adds YAML 1.2's float form, so ``1e-3``, ``1E5``
and ``-2.5e-4`` are the numbers people mean. A key given twice in one mapping, at any depth, is
refused with both lines instead of the last one silently winning. Every problem is a
:class:`UserError` on one line naming the file (and the line when there is one).
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import UserError

Key = str | int  # a mapping key, or the index of a sequence item
KeyPath = tuple[Key, ...]

# YAML 1.2 floats that YAML 1.1 reads as strings: an exponent without a dot or without a sign
# (1e-3, 1E5, 1.0e5), and a signed fraction without a leading digit (-.5).
_FLOAT_1_2 = re.compile(
    r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$|^[-+]\.[0-9_]+$"
)
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats (a subclass: the global loader is unchanged)."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_1_2, list("-+0123456789."))


def dotted(path: KeyPath) -> str:
    """``("space", "model.width", "low")`` -> ``space.model.width.low``; indexes as ``[i]``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass(frozen=True)
class Where:
    """A value's place, for messages: ``file:line: dotted.key`` (the line when it is known)."""

    source: str
    path: KeyPath = ()
    lines: Mapping[KeyPath, int] = field(default_factory=dict, repr=False, compare=False)

    def child(self, *keys: Key) -> Where:
        return Where(self.source, self.path + keys, self.lines)

    def line(self) -> int | None:
        """The line of the deepest key of the path that the file has."""
        for n in range(len(self.path), 0, -1):
            if self.path[:n] in self.lines:
                return self.lines[self.path[:n]]
        return None

    def __str__(self) -> str:
        line = self.line()
        loc = f"{self.source}:{line}" if line is not None else self.source
        return f"{loc}: {dotted(self.path)}" if self.path else loc


@dataclass(frozen=True)
class YamlDocument:
    """A YAML file read: its data and the line of every key."""

    source: str
    data: Any
    lines: Mapping[KeyPath, int]

    def where(self, *path: Key) -> Where:
        return Where(self.source, tuple(path), self.lines)


def read_yaml(path: Path, source: str) -> YamlDocument:
    """Read and parse a YAML file (UTF-8, or UTF-16 with a byte-order mark).

    Raises:
        UserError: the file cannot be read, or is not valid YAML, or repeats a key.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"{source}: cannot read the file ({exc.strerror or exc})") from None
    return parse_yaml(data, source)


def parse_yaml(text: str | bytes, source: str) -> YamlDocument:
    """Parse one YAML document; ``source`` names it in messages.

    Raises:
        UserError: not valid YAML (with the line), or a key repeated in one mapping.
    """
    if isinstance(text, bytes):
        text = _decode(text, source)
    loader: _Loader | None = None
    try:
        loader = _Loader(text)  # checks the characters first
        node = loader.get_single_node()
        lines = _index(node, source) if node is not None else {}
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise UserError(_describe(exc, source, text)) from None
    except RecursionError:
        raise UserError(f"{source}: not valid YAML (nested too deeply)") from None
    except (ValueError, OverflowError) as exc:  # e.g. a date 2024-13-45, a 5000-digit integer
        raise UserError(f"{source}: not valid YAML ({_one_line(str(exc))})") from None
    finally:
        if loader is not None:
            loader.dispose()
    return YamlDocument(source=source, data=data, lines=lines)


def parse_scalar(text: str, source: str) -> Any:
    """A command-line value read by the same rules as the files (``1e-3`` is a float).

    Text that is not valid YAML is the string itself (``--set model.weights=[oops``), so any
    value can be given; a repeated key in a mapping is still refused.
    """
    try:
        return parse_yaml(text, source).data
    except UserError as exc:
        if "duplicate key" in str(exc):
            raise
        return text


def _index(root: yaml.Node, source: str) -> dict[KeyPath, int]:
    """The line of every key and sequence item, refusing a key given twice in one mapping."""
    lines: dict[KeyPath, int] = {}
    seen: set[int] = set()  # an aliased node is indexed once, where its anchor is
    todo: list[tuple[KeyPath, yaml.Node]] = [((), root)]
    while todo:
        path, node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[path + (i,)] = item.start_mark.line + 1
                todo.append((path + (i,), item))
        elif isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                    continue
                key, line = str(key_node.value), key_node.start_mark.line + 1
                if key in first:
                    raise UserError(
                        f"{source}:{line}: duplicate key {key!r} (first at line {first[key]})"
                    )
                first[key] = line
                lines[path + (key,)] = line
                todo.append((path + (key,), value_node))
    return lines


def _decode(data: bytes, source: str) -> str:
    """UTF-8 (a leading byte-order mark allowed), or UTF-16 when a byte-order mark says so."""
    encoding = "utf-16" if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(
            f"{source}:{line}: not {'UTF-16' if encoding == 'utf-16' else 'UTF-8'} text "
            f"(byte {exc.start}: {exc.reason}); save the file as UTF-8"
        ) from None


def _describe(exc: yaml.YAMLError, source: str, text: str) -> str:
    if isinstance(exc, yaml.reader.ReaderError):  # a control character such as NUL
        line = text[: exc.position].count("\n") + 1
        return (
            f"{source}:{line}: not valid YAML (character #x{exc.character:04x} is not allowed "
            "in YAML text)"
        )
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{source}:{mark.line + 1}" if mark is not None else source
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    if context and not context.startswith("while"):  # "expected a single document ..."
        problem = f"{context} {problem}"
    return f"{where}: not valid YAML ({_one_line(str(problem))})"


def _one_line(text: str) -> str:
    return " ".join(text.split())
