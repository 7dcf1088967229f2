"""Benchmark the training loop: K iterations on one game, time per stage, rows, yield, head-to-head.

Runs `python -m rsi_env.improve` (the embedded SmolLM2-135M by default; `--tiny` for a randomly
initialised 2-layer model with the same tokenizer, to check the script in a few minutes) and prints,
per iteration: the wall time of each stage (collect, train, export, evaluate) and its share of the
iteration, the training's peak memory, rows and yield (decision sets, sets with a preference, rows
per 1,000 model calls), and the new model's win rate against its parent with its 95% interval.
Rerunning with the same --out resumes (finished stages are not timed again: their recorded times are
printed).

    python scripts/bench_improve.py --game ultimatum --iterations 2 --out runs/bench_improve
    python scripts/bench_improve.py --tiny --episodes 2 --eval-episodes 4 --train-steps 2 --out /tmp/bi
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
STAGES = ("collect", "train", "export", "evaluate")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--game", default="ultimatum")
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--episodes", type=int, default=8, help="collection episodes per iteration")
    ap.add_argument("--branch", type=int, default=3)
    ap.add_argument("--decisions", type=int, default=2)
    ap.add_argument("--judges", default="local@0.2")
    ap.add_argument("--eval-episodes", type=int, default=40)
    ap.add_argument("--train-steps", type=int, help="default: one epoch over the rows")
    ap.add_argument(
        "--tiny", action="store_true", help="a tiny random model instead of SmolLM2-135M (a quick check)"
    )
    ap.add_argument("--out", type=Path, default=Path("runs/bench_improve"))
    ap.add_argument("extra", nargs="*", help="more options for rsi_env.improve (after --)")
    args = ap.parse_args()

    cmd = [
        sys.executable, "-m", "rsi_env.improve", "--game", args.game, "--iterations", str(args.iterations),
        "--episodes", str(args.episodes), "--branch", str(args.branch), "--decisions", str(args.decisions),
        "--judges", args.judges, "--eval-episodes", str(args.eval_episodes), "--out", str(args.out),
        "--promote", "point", *args.extra,
    ]  # fmt: skip
    if args.train_steps:
        cmd += ["--train-steps", str(args.train_steps)]
    if args.tiny:
        from rsi_env.improve.tiny import build_tiny_gguf

        model = args.out.parent / f"{args.out.name}-tiny" / "tiny.gguf"
        if not model.is_file():
            model = build_tiny_gguf(model.parent)
        cmd += ["--model", str(model), "--no-bf16", "--grad-accum", "1"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    env.setdefault("OMP_NUM_THREADS", str(min(2, os.cpu_count() or 1)))
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        done = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            log.seek(0)
            sys.stderr.write(log.read()[-4000:])
            return done.returncode
    wall = time.perf_counter() - t0
    print_results(args.out, wall)
    return 0


def print_results(out: Path, wall: float) -> None:
    console = Console(width=160)
    t = Table(
        title=f"rsi_env.improve on {out} (this run's wall time {wall / 60:.1f} min)", title_justify="left"
    )
    for col in ("iter", *(f"{s} s (share)" for s in STAGES), "train peak GiB", "rows", "sets (with pref.)",
                "rows/1k calls", "win rate vs parent (95%)", "promoted"):  # fmt: skip
        t.add_column(col)
    lineage = {
        json.loads(x)["iteration"]: json.loads(x) for x in (out / "lineage.jsonl").read_text().splitlines()
    }
    for i, rec in sorted(lineage.items()):
        d = out / f"iter-{i}"
        res = {s: json.loads((d / f"{s}.json").read_text()) for s in STAGES if (d / f"{s}.json").is_file()}
        secs = {s: float(r.get("seconds", 0.0)) for s, r in res.items()}
        total = sum(secs.values()) or 1.0
        col = res.get("collect", {})
        ev = rec.get("eval") or {}
        ci = ev.get("win_rate_ci")
        wr = "n/a" if ev.get("win_rate") is None else f"{ev['win_rate']:.0%}"
        t.add_row(
            str(i),
            *(f"{secs[s]:.0f} ({secs[s] / total:.0%})" if s in secs else "-" for s in STAGES),
            f"{res.get('train', {}).get('peak_rss_gib', 0):.1f}",
            str(rec["rows"]),
            f"{col.get('sets', 0)} ({col.get('sets_with_preference', 0)})",
            f"{rec['yield_per_1k_calls']:.1f}",
            wr + (f" ({ci['lo']:.0%}–{ci['hi']:.0%})" if ci else ""),
            "yes" if rec["promoted"] else "no",
        )
    console.print(t)
    console.print(f"iteration time: {', '.join(_iter_minutes(out, lineage))}")


def _iter_minutes(out: Path, lineage: dict[int, dict]) -> list[str]:
    parts = []
    for i in sorted(lineage):
        d = out / f"iter-{i}"
        secs = sum(float(json.loads((d / f"{s}.json").read_text()).get("seconds", 0.0))
                   for s in STAGES if (d / f"{s}.json").is_file())  # fmt: skip
        parts.append(f"#{i} {secs / 60:.1f} min")
    return parts


if __name__ == "__main__":
    sys.exit(main())
