"""Bounds on the shape of untrusted text: game spec files (models write them) and model replies.

The threat model (README "Threat model") says untrusted input is bounded in size and nesting depth
where it is parsed. The limits on text live here, with the readers that enforce them, so every parser
applies the same ones:

- `read_text_file`: a regular file only (a device such as /dev/zero, a FIFO or a directory is refused
  before it is read), at most `max_bytes`, UTF-8;
- `check_yaml_shape`: YAML nesting depth, and the size of the document once its aliases are expanded
  (a "billion laughs" document is a few hundred bytes that expand to gigabytes), checked on the event
  stream before any node is built;
- `json_depth`: how deeply a JSON text nests, measured without parsing it (Python's parser recurses);
- `printable` / `one_line`: untrusted text made safe to print on a terminal (no escape sequences)
  and to quote in a line-based transcript (no line breaks).

Each check raises `UntrustedTextError` with one line saying what is wrong; callers add whose text it is.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import yaml

MAX_SPEC_BYTES = 256 * 1024  # ~17x the largest built-in spec (werewolf.yaml, 15 KB)
MAX_YAML_DEPTH = 40  # the built-in specs nest 6 deep
# Nodes plus scalar characters once aliases are expanded: what a consumer of the data walks. A spec
# file's own text is at most MAX_SPEC_BYTES; aliases may multiply it, a little.
MAX_YAML_EXPANDED = 4 * MAX_SPEC_BYTES
MAX_JSON_DEPTH = 64  # an action is 2 deep, a spec 8; Python's own parser fails near 1,000


class UntrustedTextError(ValueError):
    """Untrusted text over a limit or of the wrong kind; the message is one line."""


def read_text_file(path: str | Path, max_bytes: int = MAX_SPEC_BYTES) -> str:
    """The text of a regular file of at most `max_bytes`, as UTF-8.

    Opened without blocking (a FIFO would wait for a writer forever) and checked on the open file
    (no race between the check and the read); a file that is not regular is refused unread.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise UntrustedTextError(f"cannot read file: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UntrustedTextError(
                f"not a regular file ({_file_kind(info.st_mode)}); a spec is a YAML file"
            )
        if info.st_size > max_bytes:
            raise UntrustedTextError(f"file of {info.st_size:,} bytes; the limit is {max_bytes:,}")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)  # a file growing while read is still capped
    except OSError as exc:
        raise UntrustedTextError(f"cannot read file: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise UntrustedTextError(f"file of more than {max_bytes:,} bytes; the limit is {max_bytes:,}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UntrustedTextError(f"not UTF-8 text (byte {exc.start:,} cannot be decoded)") from None


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


# libyaml parses in C, linearly; PyYAML's pure-Python parser is quadratic in flow nesting.
_EVENT_LOADER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def check_yaml_shape(
    text: str, max_depth: int = MAX_YAML_DEPTH, max_expanded: int = MAX_YAML_EXPANDED
) -> None:
    """Raise UntrustedTextError if the YAML `text` nests deeper than `max_depth` or, with its aliases
    expanded, weighs more than `max_expanded` (one per node plus each scalar's length).

    Runs over the parser's event stream, which builds nothing, so the check costs what reading the
    text costs. An alias to a node still open (a document that contains itself) is refused too: its
    expansion is infinite. Syntax errors are left to the loader, which reports them with their line.
    """
    weights: dict[str, int] = {}  # anchor -> expanded weight of its node
    open_anchors: list[str | None] = []  # the anchors of the collections being read
    sizes: list[int] = [0]  # expanded weight of each open collection so far; [0] is the document
    total = 0
    try:
        for event in yaml.parse(text, Loader=_EVENT_LOADER):
            if isinstance(event, yaml.CollectionStartEvent):
                if len(sizes) > max_depth:
                    raise UntrustedTextError(f"{_at(event)}nested more than {max_depth} levels deep")
                open_anchors.append(event.anchor)
                sizes.append(1)
                total += 1
            elif isinstance(event, yaml.CollectionEndEvent):
                anchor = open_anchors.pop()
                size = sizes.pop()
                sizes[-1] += size
                if anchor is not None:
                    weights[anchor] = size
            elif isinstance(event, yaml.ScalarEvent | yaml.AliasEvent):
                if isinstance(event, yaml.AliasEvent):
                    if event.anchor in open_anchors:
                        raise UntrustedTextError(
                            f"{_at(event)}alias *{event.anchor} refers to a node that contains it"
                        )
                    size = weights.get(event.anchor or "", 1)  # unknown: the loader reports it
                else:
                    size = 1 + len(event.value)
                    if event.anchor is not None:
                        weights[event.anchor] = size
                sizes[-1] += size
                total += size
            if total > max_expanded:
                raise UntrustedTextError(
                    f"{_at(event)}with its aliases expanded the document weighs more than {max_expanded:,} "
                    "(nodes + characters): too many aliases or too large a value repeated"
                )
    except yaml.YAMLError:
        return  # the loader reports syntax errors, with their line


def _at(event: yaml.Event) -> str:
    mark = event.start_mark
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def json_depth(text: str) -> int:
    """How deeply `text` nests brackets outside JSON strings (an upper bound for JSON-like text).

    Linear and non-recursive: checked before a recursive parser sees a reply."""
    depth = deepest = 0
    for m in _BRACKET.finditer(_STRING.sub('""', text)):
        if m.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif depth:
            depth -= 1
    return deepest


# C0 and C1 controls (ESC starts a terminal escape sequence), DEL, and the format characters that
# reorder or hide text on a terminal (bidirectional overrides and isolates).
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_LINE_BREAK = re.compile("\r\n|[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
# The characters it matches: most lines have none, and looking for each with `in` takes ~2 µs for a
# transcript line, where the pattern's alternation makes `sub` take ~17 µs.
_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, limit: int | None = None) -> str:
    """`text` with control and direction-changing characters shown as escapes (`\\x1b`), so untrusted
    text printed on a terminal cannot move the cursor, recolour it or hide what follows; newlines and
    tabs are kept. `limit` cuts it to that many characters (with an ellipsis)."""
    if limit is not None and len(text) > limit:
        text = text[: max(0, limit - 1)] + "…"
    if text.isprintable():  # what it escapes is all unprintable (Cc, Cf): nothing to do, ~30x faster
        return text
    return _UNPRINTABLE.sub(lambda m: _escape(m.group()), text)


def one_line(text: str) -> str:
    """`text` on one line: every line break shown as `\\n` (or its own escape), control characters
    escaped as by `printable`. Quoted player text in a transcript cannot start a line of its own."""
    out = text
    if any(c in text for c in _BREAKS):
        out = _LINE_BREAK.sub(lambda m: "\\n" if m.group() in ("\n", "\r\n") else _escape(m.group()), text)
    return printable(out.replace("\t", " "))
