"""rsi-games: the verifiers environment of rsi_env's games (taskset id `rsi-games`).

verifiers imports the taskset id as this module and takes the `Taskset` and `Env` it exports in
`__all__`; both live in `rsi_env.integrations.verifiers`.
"""

from rsi_env.integrations.verifiers import GamesEnv, GamesTaskset

__all__ = ["GamesEnv", "GamesTaskset"]
