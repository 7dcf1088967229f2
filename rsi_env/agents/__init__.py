"""Agents: anything with `async act(observation, info) -> str` (see `base.Agent`)."""
