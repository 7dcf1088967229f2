"""The improvement curve of a loop directory: per iteration, the new model's win rate against its
parent and against the original with 95% intervals, Elo with intervals, and conduct per episode.

`python -m rsi_env.report DIR` shows it in the terminal and writes `DIR/improvement.png` (matplotlib,
the `plot` extra; without it the terminal view alone, with a note). Read from `DIR/lineage.jsonl`
and each iteration's `evaluate.json` (the match against the original lives there).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from .checkpoint import iteration_dir
from .lineage import LINEAGE, Interval, LineageRecord, read_lineage

PNG = "improvement.png"
BAR = 40  # characters of the terminal's 0–100% scale


class CurvePoint(BaseModel):
    iteration: int
    model: str
    promoted: bool
    rows: int
    yield_per_1k_calls: float
    win_rate: float | None = None  # vs parent
    win_rate_ci: Interval | None = None
    vs_original: float | None = None
    vs_original_ci: Interval | None = None
    elo_new: float | None = None
    elo_new_ci: Interval | None = None
    elo_parent: float | None = None
    elo_parent_ci: Interval | None = None
    conduct_new: float | None = None  # flags per seat-episode, all kinds
    conduct_parent: float | None = None


def is_loop_dir(path: Path) -> bool:
    return (path / LINEAGE).is_file()


def curve_points(out_dir: Path) -> list[CurvePoint]:
    points = []
    for rec in read_lineage(out_dir):
        points.append(_point(out_dir, rec))
    return points


def _point(out_dir: Path, rec: LineageRecord) -> CurvePoint:
    p = CurvePoint(
        iteration=rec.iteration,
        model=Path(rec.model.path).name if rec.model else "(none)",
        promoted=rec.promoted,
        rows=rec.rows,
        yield_per_1k_calls=rec.yield_per_1k_calls,
    )
    ev = rec.eval
    if ev is not None:
        p.win_rate, p.win_rate_ci = ev.win_rate, ev.win_rate_ci
        p.elo_new, p.elo_parent = ev.elo.new, ev.elo.parent
        p.elo_new_ci, p.elo_parent_ci = ev.elo_ci.new, ev.elo_ci.parent
        p.conduct_new = ev.conduct_per_episode.new.get("total")
        p.conduct_parent = ev.conduct_per_episode.parent.get("total")
    # The match against the original (from the second iteration on, when the parent is another model).
    path = iteration_dir(out_dir, rec.iteration) / "evaluate.json"
    if path.is_file():
        from .evaluate import EvalResult  # the runner and agents: only when there is a file to read

        ev_file = EvalResult.model_validate_json(path.read_text())
        # While the original is the parent, the match against the parent is the one against the original.
        m = ev_file.match("original") or (
            ev_file.match("parent") if ev_file.parent == ev_file.original else None
        )
        if m is not None:
            p.vs_original, p.vs_original_ci = m.win_rate, m.win_rate_ci
    return p


def scale(value: float | None, ci: Interval | None) -> Text:
    """A 0–100% line: the interval as `[====]`, the estimate as `●`, 50% as `┊`."""
    cells = [" "] * (BAR + 1)
    cells[BAR // 2] = "┊"
    if ci is not None:
        lo, hi = round(ci.lo * BAR), round(ci.hi * BAR)
        for k in range(lo, hi + 1):
            cells[k] = "="
        cells[lo], cells[hi] = "[", "]"
    if value is not None:
        cells[round(value * BAR)] = "●"
    style = "green" if ci is not None and ci.lo > 0.5 else "red" if ci is not None and ci.hi < 0.5 else ""
    return Text("|" + "".join(cells) + "|", style=style)


def _pct(x: float | None, ci: Interval | None = None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.0%}" + (f" ({ci.lo:.0%}–{ci.hi:.0%})" if ci else "")


def _elo(x: float | None, ci: Interval | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.0f}" + (f" ({ci.lo:.0f}–{ci.hi:.0f})" if ci else "")


def curve_view(points: list[CurvePoint], title: str) -> RenderableType:
    t = Table(title=title, title_justify="left")
    axis = "0%" + " " * (BAR // 2 - 2) + "50%" + " " * (BAR // 2 - 3) + "100%"
    t.add_column("iter")
    t.add_column("rows (per 1k calls)")
    t.add_column("win rate vs parent (95%)")
    t.add_column(axis, no_wrap=True, min_width=BAR + 3)
    t.add_column("vs original (95%)")
    t.add_column("Elo new (95%)")
    t.add_column("Elo parent (95%)")
    t.add_column("conduct/ep new, parent")
    t.add_column("promoted")
    for p in points:
        conduct = ", ".join("n/a" if x is None else f"{x:.2f}" for x in (p.conduct_new, p.conduct_parent))
        t.add_row(
            str(p.iteration), f"{p.rows} ({p.yield_per_1k_calls:.1f})", _pct(p.win_rate, p.win_rate_ci),
            scale(p.win_rate, p.win_rate_ci), _pct(p.vs_original, p.vs_original_ci),
            _elo(p.elo_new, p.elo_new_ci), _elo(p.elo_parent, p.elo_parent_ci), conduct,
            "yes" if p.promoted else "no",
        )  # fmt: skip
    note = Text(
        "Win rate: the new model's paired score over held-out seeds, seats swapped (ties half), Wilson 95% "
        "interval; Elo: Bradley–Terry over the iteration's evaluation episodes; conduct: lies, broken "
        "promises, violations and referee-manipulation attempts per seat-episode.",
        style="dim",
    )
    return Group(t, note)


def write_png(points: list[CurvePoint], path: Path, title: str) -> Path:
    """Three panels: win rates with intervals, Elo with intervals, conduct per episode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p.iteration for p in points]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), constrained_layout=True)
    ax = axes[0]
    for attr, label, off in (("win_rate", "vs parent", -0.05), ("vs_original", "vs original", 0.05)):
        pts = [(p.iteration + off, getattr(p, attr), getattr(p, attr + "_ci")) for p in points]
        pts = [(x, y, ci) for x, y, ci in pts if y is not None]
        if pts:
            err = [
                [y - (ci.lo if ci else y) for _, y, ci in pts],
                [(ci.hi if ci else y) - y for _, y, ci in pts],
            ]
            ax.errorbar(
                [x for x, _, _ in pts], [y for _, y, _ in pts], yerr=err, marker="o", capsize=4, label=label
            )
    ax.axhline(0.5, color="grey", linestyle=":")
    ax.set(title="win rate of the new model (95%)", xlabel="iteration", ylim=(0, 1))
    ax.legend()
    ax = axes[1]
    for attr, label in (("elo_new", "new"), ("elo_parent", "parent")):
        pts = [(p.iteration, getattr(p, attr), getattr(p, attr + "_ci")) for p in points]
        pts = [(x, y, ci) for x, y, ci in pts if y is not None]
        if pts:
            err = [
                [y - (ci.lo if ci else y) for _, y, ci in pts],
                [(ci.hi if ci else y) - y for _, y, ci in pts],
            ]
            ax.errorbar(
                [x for x, _, _ in pts], [y for _, y, _ in pts], yerr=err, marker="o", capsize=4, label=label
            )
    ax.set(title="Elo in each iteration's evaluation (95%)", xlabel="iteration")
    ax.legend()
    ax = axes[2]
    width = 0.35
    ax.bar([x - width / 2 for x in xs], [p.conduct_new or 0 for p in points], width, label="new")
    ax.bar([x + width / 2 for x in xs], [p.conduct_parent or 0 for p in points], width, label="parent")
    ax.set(title="conduct flags per episode", xlabel="iteration")
    ax.legend()
    for a in axes:
        a.set_xticks(xs)
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def show_curve(out_dir: Path, console: Console, png: bool = True) -> Path | None:
    """Print the curve; write the PNG beside the lineage (None when matplotlib is missing)."""
    points = curve_points(out_dir)
    title = f"Improvement curve: {out_dir}"
    console.print(curve_view(points, title))
    if not png or not points:
        return None
    try:
        path = write_png(points, out_dir / PNG, f"Improvement curve: {out_dir.resolve().name}")
    except ImportError:
        console.print("[yellow]note:[/] no PNG: install the plot extra (pip install 'rsi_env[plot]')")
        return None
    console.print(f"PNG: {path}")
    return path
