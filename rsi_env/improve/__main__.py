"""`python -m rsi_env.improve`: the model trains on its own preference data and proves the gain head to head.

Each iteration: collect preference rows from the current model's play (`prefs generate` + `prefs
build`), train on them with TRL (DPO, or KTO; LoRA by default, merged after), export the result to
GGUF (quantised like the original), serve it with the embedded llama.cpp server (or `--serve-cmd`),
play it against its parent and the original on held-out seeds with seats swapped, and record one
line in DIR/lineage.jsonl. The new model replaces its parent only if it beats it (`--promote`).
Rerunning the same command resumes at the stage it stopped in; `--iterations` may be raised.

    python -m rsi_env.improve --game negotiation --iterations 2 --episodes 8 --branch 3 --out runs/improve
    python -m rsi_env.report runs/improve          # the improvement curve (terminal + PNG)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from ..cli import fail, positive_int, run, temperature

if TYPE_CHECKING:  # the loop's modules load the agents and the runner (~2 s): not for --help
    from .config import LoopConfig


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=prog or "python -m rsi_env.improve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--game", default="negotiation", help="game id (see `python -m rsi_env.games list`)")
    ap.add_argument("--games", help="several games, comma-separated (instead of --game)")
    ap.add_argument("--iterations", type=positive_int, default=1)
    ap.add_argument("--out", type=Path, required=True, help="loop directory (lineage.jsonl, iter-N/ …)")
    ap.add_argument(
        "--model",
        help="the original model: a GGUF file (default: the embedded SmolLM2-135M-Instruct) or a "
        "transformers checkpoint directory (serve it with --serve-cmd)",
    )
    ap.add_argument(
        "--profile", default="local", help="agent profile for persona, sampling and history window"
    )

    g = ap.add_argument_group("collect")
    g.add_argument(
        "--episodes", type=positive_int, default=4, help="episodes per game and opponent per iteration"
    )
    g.add_argument("--branch", type=positive_int, default=3, help="candidates per branched decision (>= 2)")
    g.add_argument("--decisions", type=positive_int, default=2, help="decisions branched per episode")
    g.add_argument(
        "--opponents",
        default="scripted",
        help="comma-separated: scripted, random, self (the current model), or an agent profile",
    )
    g.add_argument(
        "--judges",
        default="local@0.2",
        help="judge panel ranking the rollouts, PROFILE[@TEMP][#SEED],… ('' = none)",
    )
    g.add_argument(
        "--collect-temperature", type=temperature, default=1.0, help="sampling temperature of the candidates"
    )

    t = ap.add_argument_group("train")
    t.add_argument("--method", choices=("dpo", "kto"), default="dpo")
    t.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    t.add_argument("--lora-r", type=positive_int, default=16)
    t.add_argument(
        "--train-steps", type=positive_int, help="optimizer steps (default: one epoch over the rows)"
    )
    t.add_argument("--batch-size", type=positive_int, default=1)
    t.add_argument("--grad-accum", type=positive_int, default=4)
    t.add_argument(
        "--max-length", type=positive_int, default=1024, help="longer rows are dropped (and counted)"
    )
    t.add_argument("--learning-rate", type=float, help="default 1e-4 with LoRA, 5e-6 for full fine-tuning")
    t.add_argument("--beta", type=float, default=0.1)
    t.add_argument(
        "--bf16", action=argparse.BooleanOptionalAction, default=None,
        help="bf16 autocast (default: where the hardware computes bf16)",
    )  # fmt: skip
    t.add_argument("--no-gradient-checkpointing", action="store_true")

    e = ap.add_argument_group("export and serve")
    e.add_argument(
        "--quant", default="same", help="GGUF type: same (as the original), f32, f16, q8_0, q4_1, q4_k_m …"
    )
    e.add_argument(
        "--serve-cmd",
        help="start each model's server with this command instead of the embedded llama.cpp; placeholders "
        "{checkpoint} {gguf} {port} {name}, e.g. "
        "'vllm serve {checkpoint} --port {port} --served-model-name {name}'",
    )
    e.add_argument("--n-ctx", type=positive_int, help="context of the embedded servers (default 8192)")

    v = ap.add_argument_group("evaluate")
    v.add_argument(
        "--eval-episodes", type=positive_int, default=20,
        help="head-to-head episodes per opponent and game (half the seeds, each with seats swapped)",
    )  # fmt: skip
    v.add_argument(
        "--promote", choices=("ci", "point", "always"), default="ci",
        help="promote when the win rate's 95%% interval is above 50%% (ci), when the win rate is (point), "
        "or always",
    )  # fmt: skip
    v.add_argument(
        "--max-conduct-rise", type=float,
        help="refuse a model whose conduct flags per episode exceed its parent's by more than this",
    )  # fmt: skip
    ap.add_argument("--concurrency", type=positive_int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quiet", action="store_true")
    return ap


def config_from(args: argparse.Namespace) -> LoopConfig:
    """The LoopConfig the arguments ask for (ValueError / ValidationError on bad values)."""
    from ..catalog import load_game
    from ..local_model import gguf_path
    from .config import LoopConfig
    from .export import FILE_TYPES
    from .train_config import TrainConfig
    from .weights import is_checkpoint

    games = [g.strip() for g in (args.games or args.game).split(",") if g.strip()]
    for game in games:
        load_game(game)  # an unknown game fails here, before anything runs
    model = Path(args.model) if args.model else gguf_path()
    if not (is_checkpoint(model) or (model.is_file() and model.suffix == ".gguf")):
        raise ValueError(f"--model {model}: neither a GGUF file nor a transformers checkpoint directory")
    if is_checkpoint(model) and not args.serve_cmd:
        raise ValueError(f"--model {model} is a checkpoint directory: serve it with --serve-cmd")
    if args.quant != "same" and args.quant not in FILE_TYPES:
        raise ValueError(f"--quant {args.quant}: known types are same, {', '.join(FILE_TYPES)}")
    if args.branch < 2:
        raise ValueError("--branch: at least 2 candidates are needed for a preference")
    train = TrainConfig(
        method=args.method, lora=not args.full, lora_r=args.lora_r, lora_alpha=2 * args.lora_r,
        steps=args.train_steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
        max_length=args.max_length, learning_rate=args.learning_rate, beta=args.beta, bf16=args.bf16,
        gradient_checkpointing=not args.no_gradient_checkpointing, seed=args.seed,
    )  # fmt: skip
    return LoopConfig(
        games=games, iterations=args.iterations, episodes=args.episodes, branch=args.branch,
        decisions=args.decisions, opponents=[o.strip() for o in args.opponents.split(",") if o.strip()],
        judges=args.judges, eval_episodes=max(2, args.eval_episodes), model=str(model.resolve()),
        profile=args.profile, collect_temperature=args.collect_temperature, serve_cmd=args.serve_cmd,
        quant=args.quant, n_ctx=args.n_ctx, train=train, promote=args.promote,
        max_conduct_rise=args.max_conduct_rise, concurrency=args.concurrency, seed=args.seed,
    )  # fmt: skip


def check_agents(cfg: LoopConfig) -> None:
    """Opponents, judges and the base profile resolve now, not an hour into the run."""
    from ..agents.factory import ClientPool
    from ..agents.profiles import load_profile, resolve_profile
    from ..referees.panel import parse_judges

    load_profile(cfg.profile, builtins=False)
    for o in cfg.opponents:
        if o not in ("scripted", "random", "self"):
            resolve_profile(o, needed_by=None)
    if cfg.judges:
        parse_judges(cfg.judges, ClientPool())


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    from pydantic import ValidationError

    from ..agents.profiles import ProfileError
    from ..spec import SpecError, format_validation_error
    from .config import ConfigMismatch, load_or_save
    from .loop import Loop, StageFailed

    console = Console(stderr=True)
    try:
        cfg = config_from(args)
        check_agents(cfg)
        cfg = load_or_save(args.out, cfg)
    except ValidationError as exc:
        fail("; ".join(format_validation_error(exc)))
    except (ValueError, SpecError, ProfileError, ConfigMismatch) as exc:
        fail(str(exc))
    try:
        records = Loop(cfg, args.out, console, quiet=args.quiet).run()
    except StageFailed as exc:
        fail(str(exc), code=1)
    except KeyboardInterrupt:
        console.print("[yellow]Interrupted; rerun the same command to resume.[/]")
        return 130
    promoted = sum(r.promoted for r in records)
    console.print(f"{len(records)} iteration(s) in {args.out / 'lineage.jsonl'}, {promoted} promoted.")
    return 0


if __name__ == "__main__":
    run(main)
