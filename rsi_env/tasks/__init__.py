"""Open-ended task families that become preference data: programming, output prediction, trivia.

Each family is a pipeline (`python -m rsi_env.tasks {programming,predict,trivia}`: the model generates,
the sandbox and procedural scores measure, the judge panel ranks, the meta-referee weights the judges,
rows come out in the games' TRL format) and a single-agent Gymnasium environment (`rsi_env.tasks.envs`).
A family is one registered object (`registry.TaskFamily`); importing this package registers the
built-in ones, and `python -m rsi_env.tasks --import MODULE` adds those a module registers.
"""

from __future__ import annotations

# The built-in families, in this order; each module registers its own.
from . import programming, predict, trivia  # noqa: F401  # isort: skip
from .registry import Option, TaskError, TaskFamily, families, get_family, import_families, register

__all__ = ["Option", "TaskError", "TaskFamily", "families", "get_family", "import_families", "register"]
