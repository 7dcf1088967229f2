"""Keep the README's spec-language schema excerpts equal to the JSON Schema of `GameSpec`.

The README marks each excerpt with `<!-- schema DEF: prop prop ... -->`; the fenced JSON block that
follows it is those properties of `$defs/DEF` (titles and descriptions left out). This script
writes the blocks (`--write`) or reports the ones that differ (the default; exit 1), and
`tests/test_spec_v2.py` calls `render` to check the README.

    python scripts/readme_schema.py [--write]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from rsi_env.spec import GameSpec

README = Path(__file__).resolve().parent.parent / "README.md"
_MARK = re.compile(r"^<!-- schema (\w+): ([\w ]+) -->\n(?:```json\n.*?\n```\n)?", re.MULTILINE | re.DOTALL)


def _bare(node: Any) -> Any:
    """A schema node without its prose (titles, descriptions), which the README says in words."""
    if isinstance(node, dict):
        return {k: _bare(v) for k, v in node.items() if k not in ("title", "description")}
    if isinstance(node, list):
        return [_bare(v) for v in node]
    return node


def excerpt(definition: str, props: list[str]) -> str:
    """The named properties of one `$defs` entry (the root for `GameSpec`), as one JSON line."""
    schema = GameSpec.model_json_schema()
    node = schema if definition == "GameSpec" else schema["$defs"][definition]
    return json.dumps({p: _bare(node["properties"][p]) for p in props})


def render(text: str) -> str:
    """`text` with every marked excerpt (re)written from the current schema."""

    def block(m: re.Match[str]) -> str:
        definition, props = m.group(1), m.group(2).split()
        return (
            f"<!-- schema {definition}: {' '.join(props)} -->\n```json\n{excerpt(definition, props)}\n```\n"
        )

    return _MARK.sub(block, text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--write", action="store_true", help="rewrite the README's excerpts")
    args = ap.parse_args()
    text = README.read_text()
    new = render(text)
    if args.write:
        README.write_text(new)
    elif new != text:
        print("README.md: the spec-language schema excerpts differ from GameSpec's; run with --write")
        sys.exit(1)


if __name__ == "__main__":
    main()
