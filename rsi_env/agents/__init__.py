"""Agents: anything with `async act(observation, info) -> str` (see `base.Agent`).

`profiles` reads agent profiles (configuration only); `backends` maps a profile's backend to the
`Chat` its calls go through; `factory` turns profiles into agents and shared chat clients.
"""
