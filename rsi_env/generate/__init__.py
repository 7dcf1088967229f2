"""LLM-generated games: generate specs, validate (+ one repair round), play-test, rank, guard diversity.

`python -m rsi_env.games generate --n N` runs `pipeline.run_generation`; see docs/generate.md.
"""

from .diversity import DiversityReport, diversity, near_duplicates
from .generator import Brief, GenerationConfig, generate, validate_text
from .pipeline import AttemptRecord, RunConfig, RunReport, run_generation
from .playtest import PlaytestResult, ProceduralMetrics, playtest

__all__ = [
    "AttemptRecord",
    "Brief",
    "DiversityReport",
    "GenerationConfig",
    "PlaytestResult",
    "ProceduralMetrics",
    "RunConfig",
    "RunReport",
    "diversity",
    "generate",
    "near_duplicates",
    "playtest",
    "run_generation",
    "validate_text",
]
