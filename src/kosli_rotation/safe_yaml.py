"""YAML from files the tool reads (the inventory, Kosli CLI configs), with limits, and errors that never quote it.

* At most ``MAX_BYTES`` (1 MiB) are read; a larger file is refused before parsing.
* PyYAML's safe loader, with at most ``MAX_ALIASES`` aliases and at most ``MAX_NODES`` nodes once aliases are
  expanded (an "alias bomb" of nested aliases stays small on disk and in memory but explodes for whatever walks
  the result: validation, dumping, printing); a recursive alias is refused too.
* A parse error says where (line, column) and what PyYAML found (its ``problem``, scrubbed, with any quoted text
  longer than a few characters cut), never the line itself: PyYAML's own message quotes the line it broke on, and
  in a config file that is often the token line.
"""

from __future__ import annotations

import os
import re
from typing import IO, Any

import yaml

from kosli_rotation.scrub import scrub

MAX_BYTES = 1024 * 1024
MAX_ALIASES = 100
MAX_NODES = 100_000
_QUOTED = re.compile(r"'[^']{5,}'|\"[^\"]{5,}\"")


class YamlInputError(ValueError):
    """The YAML cannot be used; the message holds no text of the input."""


def describe_yaml_error(error: BaseException) -> str:
    """Where and what, never the content: ``line 3, column 7: mapping values are not allowed here``."""
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = _QUOTED.sub("'…'", error.problem or type(error).__name__)
        return scrub(where + problem, limit=200)
    if isinstance(error, yaml.reader.ReaderError):
        return f"not readable as text (byte {error.position}: {'not UTF-8' if error.encoding else 'unprintable'})"
    if isinstance(error, YamlInputError):
        return str(error)
    return type(error).__name__


class _LimitedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that counts aliases as it composes and weighs the composed document before building it."""

    def __init__(self, stream: str | bytes | IO[Any]) -> None:
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise YamlInputError(f"line {mark.line + 1}, column {mark.column + 1}: more than {MAX_ALIASES} aliases")
        return super().compose_node(parent, index)

    def get_single_node(self) -> Any:
        node = super().get_single_node()
        if node is not None and _expanded_size(node, {}, set()) > MAX_NODES:
            raise YamlInputError(f"more than {MAX_NODES} values once its aliases are expanded (an alias bomb?)")
        return node


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """How many nodes ``node`` stands for with every alias expanded (aliases share nodes: memoised by identity)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        mark = node.start_mark
        raise YamlInputError(f"line {mark.line + 1}, column {mark.column + 1}: a recursive alias")
    open_nodes.add(key)
    if isinstance(node, yaml.SequenceNode):
        children: list[yaml.Node] = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    else:
        children = []
    total = 1
    for child in children:
        total += _expanded_size(child, sizes, open_nodes)
        if total > MAX_NODES:
            break
    open_nodes.discard(key)
    sizes[key] = total
    return total


def loads(text: str | bytes) -> Any:
    """Parse one YAML document within the limits; ``YamlInputError`` (never quoting ``text``) if it cannot be."""
    if len(text) > MAX_BYTES:
        raise YamlInputError(f"larger than {MAX_BYTES // (1024 * 1024)} MiB")
    try:
        loader = _LimitedLoader(text)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except YamlInputError:
        raise
    except RecursionError:
        raise YamlInputError("nested too deeply") from None
    except yaml.YAMLError as error:
        raise YamlInputError(describe_yaml_error(error)) from None


def read_limited(handle: int) -> bytes:
    """At most ``MAX_BYTES`` from an open file descriptor; ``YamlInputError`` if there is more."""
    chunks: list[bytes] = []
    size = 0
    while chunk := os.read(handle, 65536):
        size += len(chunk)
        if size > MAX_BYTES:
            raise YamlInputError(f"larger than {MAX_BYTES // (1024 * 1024)} MiB")
        chunks.append(chunk)
    return b"".join(chunks)


def load_file(path: str | os.PathLike[str]) -> Any:
    """Parse a YAML file within the limits (``FileNotFoundError`` and other ``OSError`` pass through)."""
    handle = os.open(path, os.O_RDONLY)
    try:
        return loads(read_limited(handle))
    finally:
        os.close(handle)
