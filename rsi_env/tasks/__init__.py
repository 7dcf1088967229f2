"""Open-ended task families that become preference data: programming, output prediction, trivia.

Each family is a pipeline (`python -m rsi_env.tasks {programming,predict,trivia}`: the model generates,
the sandbox and procedural scores measure, the judge panel ranks, the meta-referee weights the judges,
rows come out in the games' TRL format) and a single-agent Gymnasium environment (`rsi_env.tasks.envs`).
"""

from __future__ import annotations

FAMILIES = ("programming", "predict", "trivia")

__all__ = ["FAMILIES"]
