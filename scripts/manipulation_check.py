"""Precision and recall of the referee-manipulation check on the labelled set.

    python scripts/manipulation_check.py [--show-misses]

The set is `tests/adversarial/data/manipulation_messages.jsonl`: messages a player might send, each
labelled `manipulation` (written to the judging) or `innocent` (ordinary game talk that uses the same
words), in several languages and spelling tricks, split into `dev` (the detector was tuned on it) and
`heldout` (written with it, scored once the detector was done). Two readings of the check are scored:

- signal: anything it does not clear (`suspected` or `unambiguous`): what the ethics judges are asked
  to confirm;
- hard flag: `unambiguous` only: a conduct flag with no judge needed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rsi_env.referees.manipulation import detect

DATA = Path(__file__).resolve().parents[1] / "tests" / "adversarial" / "data" / "manipulation_messages.jsonl"


def load(path: Path = DATA) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def scores(rows: list[dict[str, str]], levels: tuple[str, ...]) -> tuple[float, float, int, int, int]:
    """(precision, recall, true positives, false positives, false negatives); `levels` count as flagged."""
    tp = fp = fn = 0
    for r in rows:
        flagged = detect(r["text"]).level in levels
        positive = r["label"] == "manipulation"
        tp += flagged and positive
        fp += flagged and not positive
        fn += positive and not flagged
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    return precision, recall, tp, fp, fn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--show-misses", action="store_true", help="print every message scored wrongly")
    args = ap.parse_args()
    rows = load()
    print(f"{'split':8} {'reading':10} {'n':>4} {'precision':>10} {'recall':>8}   tp fp fn")
    for split in ("dev", "heldout", "all"):
        part = [r for r in rows if split == "all" or r["split"] == split]
        for reading, levels in (("signal", ("suspected", "unambiguous")), ("hard flag", ("unambiguous",))):
            p, rc, tp, fp, fn = scores(part, levels)
            print(f"{split:8} {reading:10} {len(part):4} {p:10.2f} {rc:8.2f}   {tp:2} {fp:2} {fn:2}")
    if args.show_misses:
        for r in rows:
            d = detect(r["text"])
            if (d.level != "none") != (r["label"] == "manipulation") or (
                r["label"] == "manipulation" and d.level != "unambiguous"
            ):
                print(f"{r['split']:8} {r['label']:12} {d.level:11} {r['trick']:10} {r['text'][:70]!r}")


if __name__ == "__main__":
    main()
