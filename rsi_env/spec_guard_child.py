"""The child process of `spec_guard`: reads a check request (JSON) on stdin, runs the static checks
and the dry run of `spec_check`, and writes a `GuardReport` (JSON) on stdout; each stage it starts is
a `progress:` line on stderr, so a child stopped at a limit is reported with where it was.

Run only as `python -m rsi_env.spec_guard_child`, under the limits `spec_guard` sets; nothing imports
it (it sits above the spec checks; `spec_guard` sits beside the catalog, which uses it).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from .spec import SpecError
from .spec_guard import PROGRESS, GuardReport


def _progress(stage: str) -> None:
    print(PROGRESS + stage, file=sys.stderr, flush=True)


def _check(request: dict[str, Any]) -> GuardReport:
    from .spec import parse_spec
    from .spec_check import check_spec, dry_run_errors

    source = str(request.get("source", "<spec>"))
    spec = parse_spec(request["spec"], source)
    _progress("static checks")
    try:
        check_spec(spec, source, dry_run=False)
    except SpecError as exc:
        return GuardReport(stage="static", problems=exc.problems)
    if request.get("dry_run", True):
        problems = dry_run_errors(spec, max_ticks=request.get("max_ticks"), progress=_progress)
        if problems:
            return GuardReport(stage="dry_run", problems=problems)
    return GuardReport(stage="ok")


def main() -> None:
    request = json.loads(sys.stdin.buffer.read())
    try:
        report = _check(request)
    except SpecError as exc:
        report = GuardReport(stage="static", problems=exc.problems)
    except (MemoryError, RecursionError) as exc:
        # Past the limits: say so in the report rather than with a traceback.
        report = GuardReport(
            stage="guard", problems=[f"the checks ran out of {type(exc).__name__[:-5].lower()}"]
        )
    sys.stdout.write(report.model_dump_json())


if __name__ == "__main__":
    main()
