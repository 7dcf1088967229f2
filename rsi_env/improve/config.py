"""The loop's configuration: what `python -m rsi_env.improve` was asked to do, kept in `DIR/config.json`.

A rerun with the same `--out` resumes; it must ask for the same loop (the same games, opponents,
model, training …) except for the number of iterations (raise it to go on) and the concurrency.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from .evaluate import PromoteRule
from .train_config import TrainConfig

CONFIG = "config.json"
# Fields a rerun may change: how far to go and how many episodes run at once.
RESUMABLE_CHANGES = frozenset({"iterations", "concurrency"})


class ConfigMismatch(Exception):
    """A rerun asks for another loop than the one recorded in DIR."""


class LoopConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    games: list[str] = Field(min_length=1)
    iterations: int = Field(ge=1)
    episodes: int = Field(ge=1)  # collection episodes per game and opponent, per iteration
    branch: int = Field(ge=2)  # candidates per branched decision
    decisions: int = Field(ge=1)  # decisions branched per episode
    opponents: list[str] = Field(min_length=1)
    judges: str  # `--judges` of `prefs generate` ('' = procedural ranking only)
    eval_episodes: int = Field(ge=2)  # head-to-head episodes per opponent and game (seeds x 2 seat orders)
    model: str  # the original model: a GGUF file, or a transformers checkpoint directory (with serve_cmd)
    profile: str = "local"  # the agent profile whose persona, sampling and window the models play with
    collect_temperature: float = Field(1.0, ge=0.0, le=2.0)
    serve_cmd: str | None = None
    quant: str = "same"
    n_ctx: int | None = Field(None, ge=256)
    train: TrainConfig = Field(default_factory=TrainConfig)
    promote: PromoteRule = "ci"
    max_conduct_rise: float | None = Field(None, ge=0.0)
    concurrency: int = Field(4, ge=1)
    seed: int = 0

    def collect_seed(self, iteration: int) -> int:
        """First collection seed of an iteration: fresh games every iteration, all below the held-out ones."""
        return self.seed + 1000 * iteration


def load_or_save(out_dir: Path, cfg: LoopConfig) -> LoopConfig:
    """Record the loop's configuration, or check a rerun against the recorded one."""
    path = out_dir / CONFIG
    if not path.is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(cfg.model_dump_json(indent=2))
        return cfg
    old = LoopConfig.model_validate_json(path.read_text())
    new, was = cfg.model_dump(), old.model_dump()
    differ = [k for k in new if new[k] != was[k] and k not in RESUMABLE_CHANGES]
    if differ:
        lines = "; ".join(f"{k}: {json.dumps(was[k])} recorded, {json.dumps(new[k])} now" for k in differ)
        raise ConfigMismatch(
            f"{out_dir} holds another loop ({lines}); use the same options to resume, or another --out"
        )
    path.write_text(cfg.model_dump_json(indent=2))
    return cfg
