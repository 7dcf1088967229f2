"""Play the attacker: every hostile spec through `games validate` and `play`, under a wall-clock limit.

    python scripts/attack.py [--limit SECONDS] [--only NAME,...] [--jobs N]

The hostile specs are the ones the tests use (`tests/adversarial/cases.py`: files in
`tests/adversarial/specs/` plus a FIFO, /dev/zero, a directory, an oversized file, an alias fan-out,
a private file that parses as YAML...). Each must end within the limit, exit 2, print one error
message and no traceback, and (for `play`) write nothing. One line per case and command:

    case                 command   exit   seconds  ok  message
    billion_laughs       validate     2      1.4   ok  line 26, column 22: with its aliases expanded ...

Timings are wall-clock on a shared machine: each run is a fresh interpreter, so most of a case's time
is Python starting up and importing rsi_env (`--only` one case to see it alone). Exit status 1 when any
case fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for the annotations only (they are strings at run time)
    from tests.adversarial.cases import SpecCase

REPO = Path(__file__).resolve().parents[1]


def _load_cases() -> ModuleType:
    """The repository's own test data (`tests/adversarial/cases.py`), loaded from its file: `tests` is
    not an installed package, and a script must not put the repository on `sys.path` to reach it."""
    path = REPO / "tests" / "adversarial" / "cases.py"
    spec = importlib.util.spec_from_file_location("rsi_adversarial_cases", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


spec_cases = _load_cases().spec_cases


@dataclass
class Outcome:
    case: str
    command: str
    exit: int | None  # None: killed at the limit
    seconds: float
    message: str
    ok: bool


def attempt(case: SpecCase, command: str, limit: float, out: Path) -> Outcome:
    if command == "validate":
        argv = [sys.executable, "-m", "rsi_env.games", "validate", str(case.path)]
    else:
        argv = [sys.executable, "-m", "rsi_env.play", "--game", str(case.path), "--agents", "random",
                "--quiet", "--out", str(out)]  # fmt: skip
    t0 = time.perf_counter()
    try:
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return Outcome(
            case.name, command, None, time.perf_counter() - t0, f"still running after {limit:g} s", False
        )
    seconds = time.perf_counter() - t0
    lines = [ln.strip() for ln in done.stderr.splitlines() if ln.strip()]
    problems = [ln[2:] for ln in lines if ln.startswith("- ")]
    message = problems[0] if problems else (lines[-1] if lines else "(nothing printed)")
    ok = (
        done.returncode == 2
        and "Traceback" not in done.stderr
        and case.expect in done.stderr
        and 1 <= len(problems) <= 2
        and not out.exists()
    )
    return Outcome(case.name, command, done.returncode, seconds, message, ok)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=float, default=60.0, help="wall-clock seconds per run (default 60)")
    ap.add_argument("--only", help="comma-separated case names")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once (default 2)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="attack-") as tmp:
        cases = spec_cases(Path(tmp) / "cases")
        if args.only:
            wanted = set(args.only.split(","))
            cases = [c for c in cases if c.name in wanted]
        work = [(c, cmd) for c in cases for cmd in ("validate", "play")]
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            outcomes = list(
                pool.map(
                    lambda w: attempt(w[0], w[1], args.limit, Path(tmp) / f"out-{w[0].name}-{w[1]}"), work
                )
            )
    print(f"{'case':28} {'command':9} {'exit':>4} {'seconds':>8}  {'ok':3} message")
    for o in outcomes:
        code = "-" if o.exit is None else str(o.exit)
        msg = o.message if len(o.message) <= 90 else o.message[:87] + "..."
        print(f"{o.case:28} {o.command:9} {code:>4} {o.seconds:8.1f}  {'ok' if o.ok else 'NO':3} {msg}")
    failed = [o for o in outcomes if not o.ok]
    good = len(outcomes) - len(failed)
    print(f"\n{good} of {len(outcomes)} runs ended as they must (exit 2, one message, in time)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
