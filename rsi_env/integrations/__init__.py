"""rsi_env inside the RL libraries people train with: one module per library, each an optional extra.

| module | library | what it gives |
|---|---|---|
| `session` | (none) | one seat of a game driven from outside, the other seats played inside by agents |
| `trl` | TRL (`[trl]`) | `GRPOTrainer(environment_factory=...)` classes, one typed tool per spec action |
| `openenv` | OpenEnv (`[openenv]`) | an `Environment` over HTTP and WebSocket: `python -m rsi_env.serve` |
| `verifiers` | verifiers (`[verifiers]`) | a `Taskset` and a self-play `Env` |
| `textarena` | TextArena (`[textarena]`) | `textarena.make("rsi-<game>-v0")` |

Every adapter drives the same PettingZoo env, runner, agents and referees; none re-implements a rule.
"""
