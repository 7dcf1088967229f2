"""The loop: K iterations of collect → train → export → evaluate → record, each stage checkpointed.

The current model (the champion) starts as the original and is replaced by an iteration's model only
when that model is promoted. Iteration N:

1. collect   the champion, served, plays and branches (`collect`)           → iter-N/collect.json
2. train     TRL on the rows, from the champion's weights (`trainer`)       → iter-N/train.json
3. export    the merged model to GGUF and quantised (`export`)             → iter-N/export.json
4. evaluate  new vs champion and vs original, served side by side            → iter-N/evaluate.json
5. record    one line in DIR/lineage.jsonl (`lineage`)

Training runs in a child process (spawned: a clean interpreter), so its memory (several GiB for a
135M model on CPU) is returned before the evaluation servers start. A killed loop, rerun with the
same options, skips every stage with a result file and continues where it stopped.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from ..agents.profiles import AgentProfile, load_profile
from .checkpoint import Checkpoints, iteration_dir
from .collect import CollectPlan, CollectResult, collect
from .config import LoopConfig
from .evaluate import EvalResult, evaluate
from .export import ExportResult, export_gguf
from .lineage import (
    ConductPerModel,
    EvalSummary,
    Interval,
    LineageRecord,
    PerModel,
    PerModelInterval,
    TrainSummary,
    append_lineage,
    model_ref,
    read_lineage,
)
from .serve import ModelNode, ServedModels
from .train_config import TrainConfig
from .trainer import NothingToTrain, TrainResult
from .weights import checkpoint_for, is_checkpoint

ORIGINAL = "original"


class StageFailed(RuntimeError):
    """A stage could not finish (its message says which and why)."""


def _train_child(
    config_json: str, start: str, cache_dir: str, rows: str, out_root: str, iteration: int, t0: float
) -> None:
    """The train stage in a spawned process: weights (converted from GGUF once), TRL, result file.
    Its `seconds` are the stage's wall time from `t0` (the spawn, imports and conversion included)."""
    from .trainer import PreferenceTrainer

    cfg = TrainConfig.model_validate_json(config_json)
    ckpt = checkpoint_for(start, cache_dir)
    ck = Checkpoints(out_root, iteration)
    trainer = PreferenceTrainer(cfg, ckpt, rows, ck.dir / "train")
    try:
        result = trainer.train()
    except NothingToTrain as exc:
        print(f"nothing to train: {exc}", flush=True)
        result = TrainResult(
            checkpoint=None, method=cfg.method, lora=cfg.lora, rows=0, used_rows=0, dropped_too_long=0,
            steps=0, loss=None, reward_accuracy=None, reward_margin=None, seconds=0.0, peak_rss_gib=0.0,
            bf16=False,
        )  # fmt: skip
    ck.save("train", result.model_copy(update={"seconds": time.time() - t0}))


class Loop:
    def __init__(
        self, cfg: LoopConfig, out_dir: Path, console: Console | None = None, quiet: bool = False
    ) -> None:
        self.cfg = cfg
        self.out = out_dir
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self.base_profile: AgentProfile = load_profile(cfg.profile, builtins=False)
        # Hook for tests: called after each stage finishes (a test kills the loop between stages).
        self.after_stage: Callable[[int, str], None] | None = None

    # -- the models -----------------------------------------------------------------------------

    def original(self) -> ModelNode:
        src = Path(self.cfg.model)
        if is_checkpoint(src):
            return ModelNode(name=ORIGINAL, checkpoint=str(src))
        return ModelNode(name=ORIGINAL, gguf=str(src))

    def node(self, iteration: int) -> ModelNode:
        """An iteration's model, from its stage files."""
        ck = Checkpoints(self.out, iteration)
        train = ck.load("train", TrainResult)
        export = ck.load("export", ExportResult)
        return ModelNode(
            name=f"iter-{iteration}",
            gguf=export.path if export and export.path.endswith(".gguf") else None,
            checkpoint=train.checkpoint if train else None,
        )

    def champion(self, before: int) -> ModelNode:
        promoted = [r.iteration for r in read_lineage(self.out) if r.promoted and r.iteration < before]
        return self.node(promoted[-1]) if promoted else self.original()

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> list[LineageRecord]:
        done = {r.iteration for r in read_lineage(self.out)}
        for i in range(1, self.cfg.iterations + 1):
            if i in done:
                self.say(f"iteration {i}: recorded in lineage.jsonl earlier")
                continue
            append_lineage(self.out, self.iteration(i, self.champion(i)))
        return read_lineage(self.out)

    def say(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, highlight=False)

    def _stage_done(self, i: int, stage: str) -> None:
        if self.after_stage is not None:
            self.after_stage(i, stage)

    def iteration(self, i: int, parent: ModelNode) -> LineageRecord:
        ck = Checkpoints(self.out, i)
        self.say(f"[bold]iteration {i}[/]: parent {parent.name} ({parent.file})")
        col = self.collect(i, parent, ck)
        rows = col.kto_rows if self.cfg.train.method == "kto" else col.rows
        train = self.train(i, parent, col, ck) if rows else None
        if train is None or train.checkpoint is None:
            self.say(f"iteration {i}: no preference rows to train on; the parent stays")
            return LineageRecord(
                iteration=i, parent=model_ref(parent.file), model=None, rows=rows,
                yield_per_1k_calls=col.yield_per_1k_calls,
                train=TrainSummary(
                    steps=0, loss=None, reward_accuracy=None, seconds=train.seconds if train else 0.0
                ),
                eval=None, promoted=False,
            )  # fmt: skip
        self.export(i, train, ck)
        new = self.node(i)
        ev = self.evaluate(i, new, parent, ck)
        return LineageRecord(
            iteration=i,
            parent=model_ref(parent.file),
            model=model_ref(new.file),
            rows=rows,
            yield_per_1k_calls=col.yield_per_1k_calls,
            train=TrainSummary(
                steps=train.steps,
                loss=train.loss,
                reward_accuracy=train.reward_accuracy,
                seconds=train.seconds,
            ),
            eval=eval_summary(ev),
            promoted=ev.promoted,
        )

    # -- the stages -----------------------------------------------------------------------------

    def collect(self, i: int, parent: ModelNode, ck: Checkpoints) -> CollectResult:
        done = ck.load("collect", CollectResult)
        if done is not None:
            self.say(f"  collect: done earlier ({done.rows} rows)")
            return done
        cfg = self.cfg
        plan = CollectPlan(
            games=cfg.games, opponents=cfg.opponents, episodes=cfg.episodes, branch=cfg.branch,
            decisions=cfg.decisions, judges=cfg.judges, seed=cfg.collect_seed(i), concurrency=cfg.concurrency,
        )  # fmt: skip
        hot = self.base_profile.sampling.model_copy(update={"temperature": cfg.collect_temperature})
        profile = self.base_profile.model_copy(update={"sampling": hot})
        with ServedModels(
            [parent], profile, self.out / "profiles", serve_cmd=cfg.serve_cmd, n_ctx=cfg.n_ctx, tag="-collect"
        ) as served:
            result = collect(iteration_dir(self.out, i), served.agent(parent.name), plan, quiet=self.quiet)
        ck.save("collect", result)
        self.say(
            f"  collect: {result.rows} rows from {result.sets_with_preference} of {result.sets} "
            "decision sets, "
            f"{result.model_calls} model calls ({result.yield_per_1k_calls:.1f} rows per 1,000), "
            f"{result.seconds:.0f} s"
        )
        self._stage_done(i, "collect")
        return result

    def train(self, i: int, parent: ModelNode, col: CollectResult, ck: Checkpoints) -> TrainResult:
        done = ck.load("train", TrainResult)
        if done is not None:
            self.say(f"  train: done earlier ({done.steps} steps)")
            return done
        start = parent.checkpoint or parent.gguf
        assert start is not None
        rows = col.kto if self.cfg.train.method == "kto" else col.prefs
        proc = multiprocessing.get_context("spawn").Process(
            target=_train_child,
            args=(self.cfg.train.model_dump_json(), start, str(self.out / "cache"), rows, str(self.out), i,
                  time.time()),
        )  # fmt: skip
        proc.start()
        proc.join()
        result = ck.load("train", TrainResult)
        if proc.exitcode != 0 or result is None:
            raise StageFailed(
                f"iteration {i}: training failed (exit code {proc.exitcode}); see the output above"
            )
        self.say(
            f"  train: {result.steps} steps on {result.used_rows} rows ({result.dropped_too_long} too long), "
            f"loss {_f(result.loss)}, reward accuracy {_f(result.reward_accuracy)}, {result.seconds:.0f} s, "
            f"peak {result.peak_rss_gib:.1f} GiB"
        )
        self._stage_done(i, "train")
        return result

    def export(self, i: int, train: TrainResult, ck: Checkpoints) -> ExportResult:
        done = ck.load("export", ExportResult)
        if done is not None:
            self.say(f"  export: done earlier ({done.path})")
            return done
        assert train.checkpoint is not None
        original = self.original()
        if original.gguf is None:
            # The endpoint path: the merged checkpoint is the model (served by --serve-cmd).
            result = ExportResult(
                path=train.checkpoint, file_type="checkpoint", tensors=0, seconds=0.0, bytes=0
            )
        else:
            result = export_gguf(train.checkpoint, original.gguf, ck.dir / "model.gguf", self.cfg.quant)
        ck.save("export", result)
        self.say(
            f"  export: {result.path} ({result.file_type}, {result.bytes / 2**20:.0f} MiB), "
            f"{result.seconds:.0f} s"
        )
        self._stage_done(i, "export")
        return result

    def evaluate(self, i: int, new: ModelNode, parent: ModelNode, ck: Checkpoints) -> EvalResult:
        done = ck.load("evaluate", EvalResult)
        if done is not None:
            self.say(f"  evaluate: done earlier ({done.reason})")
            return done
        cfg = self.cfg
        original = self.original()
        nodes = [new, parent] + ([original] if original.name != parent.name else [])
        with ServedModels(
            nodes, self.base_profile, self.out / "profiles", serve_cmd=cfg.serve_cmd, n_ctx=cfg.n_ctx
        ) as served:
            result = evaluate(
                ck.dir / "eval", cfg.games, {n.name: served.agent(n.name) for n in nodes},
                new.name, parent.name,
                ORIGINAL, eval_episodes=cfg.eval_episodes, rule=cfg.promote,
                max_conduct_rise=cfg.max_conduct_rise, concurrency=cfg.concurrency, quiet=self.quiet,
            )  # fmt: skip
        ck.save("evaluate", result)
        for m in result.matches:
            ci = f"{m.win_rate_ci.lo:.0%}–{m.win_rate_ci.hi:.0%}" if m.win_rate_ci else "n/a"
            wr = f"{m.win_rate:.0%}" if m.win_rate is not None else "n/a"
            self.say(
                f"  evaluate: vs {m.role} ({m.opponent}): win rate {wr} [{ci}] over {m.seeds} paired seeds"
            )
        self.say(
            f"  {'promoted' if result.promoted else 'not promoted'}: {result.reason} ({result.seconds:.0f} s)"
        )
        self._stage_done(i, "evaluate")
        return result


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def eval_summary(ev: EvalResult) -> EvalSummary:
    vs_parent = ev.match("parent")
    ratings = {r.agent: r for r in ev.ratings.ratings}

    def elo(name: str) -> float | None:
        return ratings[name].elo if name in ratings else None

    def elo_ci(name: str) -> Interval | None:
        r = ratings.get(name)
        return Interval(lo=r.elo_lo, hi=r.elo_hi) if r else None

    def conduct(name: str) -> dict[str, float]:
        s = ev.models.get(name)
        return dict(s.conduct_per_episode) if s else {}

    return EvalSummary(
        episodes=vs_parent.episodes if vs_parent else 0,
        win_rate=vs_parent.win_rate if vs_parent else None,
        win_rate_ci=vs_parent.win_rate_ci if vs_parent else None,
        elo=PerModel(new=elo(ev.new), parent=elo(ev.parent)),
        elo_ci=PerModelInterval(new=elo_ci(ev.new), parent=elo_ci(ev.parent)),
        conduct_per_episode=ConductPerModel(new=conduct(ev.new), parent=conduct(ev.parent)),
    )
