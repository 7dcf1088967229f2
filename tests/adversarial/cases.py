"""The hostile spec files: the ones kept in `specs/` and the ones made on the spot (a FIFO, a device,
files too large to keep in the repository). `tests/adversarial/test_*.py` and `scripts/attack.py` both
play them; each case says the words its one error message must contain.

A file in `specs/` starts with `# expect: WORDS` (and, for a spec that loads but fails when it runs,
`# stage: run`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SPECS = Path(__file__).resolve().parent / "specs"

# A small valid game the hostile cases below grow from: two players add 0-3 to a score until it passes 5.
BASE_YAML = """id: {id}
name: {name}
rules: x
players: {{min: 2, max: 2}}
state:
  score: {{type: int, init: '0'}}
actions:
  go:
    params:
      n: {{type: int, min: '0', max: '3'}}
    effects:
      - add: state.score
        value: args.n
phases:
  - name: a
    actions: [go]
end: {{when: 'state.score > 5', turn_limit: 10}}
payoffs: {{value: state.score}}
"""


@dataclass(frozen=True)
class SpecCase:
    name: str
    path: Path
    expect: str  # words the one error message contains
    stage: str = "load"  # load: refused before anything runs; run: refused by the dry run / at play


def _header(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("# ") or ":" not in line:
            break
        key, value = line[2:].split(":", 1)
        out[key.strip()] = value.strip()
    return out


def spec_cases(tmp: Path) -> list[SpecCase]:
    """Every hostile spec: the files in `specs/`, and the ones made here under `tmp`."""
    cases = []
    for path in sorted(SPECS.glob("*.yaml")):
        head = _header(path)
        cases.append(SpecCase(path.stem, path, head["expect"], head.get("stage", "load")))
    tmp.mkdir(parents=True, exist_ok=True)

    fifo = tmp / "fifo.yaml"
    if not fifo.exists():
        os.mkfifo(fifo)  # reading it would wait for a writer forever
    cases.append(SpecCase("fifo", fifo, "not a regular file (a FIFO)"))
    cases.append(SpecCase("dev_zero", Path("/dev/zero"), "not a regular file (a character device)"))
    cases.append(SpecCase("directory", tmp, "not a regular file (a directory)"))

    big = tmp / "oversized.yaml"  # a valid spec padded past the size cap
    big.write_text(BASE_YAML.format(id="big", name="Big") + "summary: " + "x" * 300_000 + "\n")
    cases.append(SpecCase("oversized", big, "the limit is"))

    # 200 aliases to one 80 KB value: small on disk, 16 MB once expanded.
    many = tmp / "alias_fanout.yaml"
    many.write_text(
        BASE_YAML.format(id="fanout", name="Fanout")
        + f"provenance:\n  v: &v '{'y' * 80_000}'\n  copies: [{', '.join(['*v'] * 200)}]\n"
    )
    cases.append(SpecCase("alias_fanout", many, "aliases expanded"))

    # A private file that happens to parse as YAML (`--game /etc/shadow`): none of it may be echoed.
    shadow = tmp / "shadow"
    shadow.write_text("".join(f"user{i}:$6$secret{i}$hash:19000:0:99999:7:::\n" for i in range(20)))
    cases.append(SpecCase("not_a_spec", shadow, "not a game spec"))

    binary = tmp / "binary.yaml"
    binary.write_bytes(b"id: x\n\xff\xfe\x00garbage")
    cases.append(SpecCase("not_utf8", binary, "not UTF-8"))
    return cases
