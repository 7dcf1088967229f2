"""The README's layout table ("## Layout and development") names every module of the package, each in the
row of its own folder, and every path it names exists: a module added, moved or deleted without the
table following fails here."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "rsi_env"


def layout_rows() -> dict[str, str]:
    """The table's rows: first cell -> the whole row."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Layout and development", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| ") and not ln.startswith("| path")]
    return {ln.split(" | ", 1)[0]: ln for ln in rows}


def named(text: str) -> set[str]:
    """The names a row writes in backticks."""
    return set(re.findall(r"`([^`]+)`", text))


def modules(folder: Path) -> set[str]:
    """The module names of a folder (its own files, not its subpackages'), without `__init__`."""
    return {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}


def subpackages() -> list[Path]:
    return sorted(p.parent for p in PACKAGE.glob("*/__init__.py"))


def test_each_subpackage_has_a_row_naming_all_its_modules() -> None:
    rows = layout_rows()
    for pkg in subpackages():
        key = f"`rsi_env/{pkg.name}/`"
        row = next((r for first, r in rows.items() if key in first), None)
        assert row is not None, f"no layout row for rsi_env/{pkg.name}/"
        own = modules(pkg) - {"__main__"}
        # Folders inside a subpackage that hold no package (programs run elsewhere) are named with theirs.
        for inner in (d for d in pkg.iterdir() if d.is_dir() and not (d / "__init__.py").exists()):
            if any(inner.glob("*.py")):
                assert f"{inner.name}/" in named(row), f"rsi_env/{pkg.name}/{inner.name}/ is not in its row"
                own |= modules(inner)
        missing = own - named(row)
        assert not missing, f"rsi_env/{pkg.name}/ row does not name {sorted(missing)}"


def test_each_top_level_module_is_named_outside_the_subpackage_rows() -> None:
    rows = layout_rows()
    package_rows = {f"`rsi_env/{p.name}/`" for p in subpackages()}
    text = " ".join(r for first, r in rows.items() if not any(k in first for k in package_rows))
    missing = modules(PACKAGE) - named(text) - {"__main__"}
    assert not missing, f"top-level modules the layout table does not name: {sorted(missing)}"
    assert "`rsi_env/__main__.py`" in text  # the `rsi-env` console script


def test_every_path_the_table_names_exists() -> None:
    for first in layout_rows():
        paths = re.findall(r"`([^`]+)`", first)  # in order: a bare file name is beside the path before it
        assert paths, f"a row names no path: {first}"
        base = REPO
        for path in paths:
            target = REPO / path if "/" in path else base / path
            assert target.exists(), f"the layout table names {path}, which does not exist"
            base = target.parent if target.is_file() else REPO
