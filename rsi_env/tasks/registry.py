"""Task families, one registered object each: its name, command-line options, pipeline and Gymnasium env.

A family module ends with one `register(TaskFamily(...))` call. The built-in families (programming,
predict, trivia) register when `rsi_env.tasks` is imported; another module registers its own when it
is imported, e.g. by `python -m rsi_env.tasks --import my_family NAME ...` (README: "Adding a task
family"). Registering a family also registers its Gymnasium env id, so `gymnasium.make(env_id)` works
once the module is imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gymnasium
from pydantic import BaseModel

if TYPE_CHECKING:
    from .common import CandidateSet

# A family's pipeline: `await run(ctx, **options)` with a `TaskContext` -> (candidate sets, the tasks it
# kept for its env, which go to `bank.jsonl`).
RunFn = Callable[..., Awaitable[tuple[list["CandidateSet"], Sequence[BaseModel]]]]


class TaskError(Exception):
    """A family that cannot be found, imported or registered; the message names it."""


@dataclass(frozen=True)
class Option:
    """One command-line option of a family (`--name VALUE`), passed to its `run` as `name=VALUE`."""

    name: str  # a Python identifier; the flag is `--` + name with `-` for `_`
    default: Any
    help: str
    type: Callable[[str], Any] = str  # int, float or str (or any function of the text)
    minimum: float | None = None  # smallest value accepted (int and float options)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class TaskFamily:
    """A task family: everything the CLI, the Gymnasium registry and a reader need to know about it."""

    name: str
    summary: str  # one line for `--help`: what the model is asked and how replies are ranked
    run: RunFn  # async run(ctx: TaskContext, **options) -> (candidate sets, task bank)
    options: tuple[Option, ...] = ()
    levels: tuple[str, ...] = ()  # the kinds of candidate set it makes (a set's `level`)
    # The rubric (id in referees/ or a YAML path) whose `ranking` block says what judges are asked
    # about each level; the default of --rubric. None: no judges rank its sets unless --rubric names
    # a rubric (their procedural truth ranks them).
    rubric: str | None = None
    # The family runs programs: the CLI checks the sandbox before a run, records its isolation level,
    # and passes `limits=SandboxLimits(...)` (from --sandbox-timeout) to `run`.
    sandbox: bool = False
    # Says why the family cannot run here (None: it can), e.g. a missing data package; checked before
    # anything runs or is written.
    check: Callable[[], str | None] | None = None
    # Its single-agent Gymnasium env: "module:Class" (imported when first made) or the class itself.
    env: str | Callable[..., gymnasium.Env[Any, Any]] | None = None
    env_id: str | None = None  # default: rsi_env/<Name>-v0

    @property
    def gym_id(self) -> str | None:
        if self.env is None:
            return None
        return self.env_id or f"rsi_env/{self.name.title().replace('_', '')}-v0"


_FAMILIES: dict[str, TaskFamily] = {}


def register(family: TaskFamily) -> TaskFamily:
    """Add `family` (and its Gymnasium env id); returns it, so a module can keep it as a constant.
    Registering a name again replaces the family (a module reloaded in a notebook)."""
    if not family.name.isidentifier():
        raise TaskError(f"task family name {family.name!r} is not an identifier (letters, digits, _)")
    names = [o.name for o in family.options]
    bad = [n for n in names if not n.isidentifier() or n in _RESERVED]
    if bad or len(set(names)) != len(names):
        raise TaskError(
            f"task family {family.name!r}: option names must be distinct identifiers, not the shared "
            f"options ({', '.join(sorted(_RESERVED))}): {', '.join(bad) or 'duplicates'}"
        )
    _FAMILIES[family.name] = family
    gym_id = family.gym_id
    if gym_id is not None:
        if gym_id in gymnasium.registry:
            del gymnasium.registry[gym_id]  # the newest registration wins, as for the family itself
        gymnasium.register(gym_id, entry_point=family.env)
    return family


def families() -> dict[str, TaskFamily]:
    """Every registered family by name, in registration order (the built-in ones first)."""
    return dict(_FAMILIES)


def get_family(name: str) -> TaskFamily:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise TaskError(f"no task family {name!r}; known: {', '.join(_FAMILIES)}") from None


def import_families(modules: list[str]) -> list[TaskFamily]:
    """Import modules that register families (`--import`); returns the families they added."""
    before = set(_FAMILIES)
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # any failure of someone else's module: one clear message, no traceback
            raise TaskError(f"--import {module}: {type(exc).__name__}: {exc}") from None
    return [f for name, f in _FAMILIES.items() if name not in before]


# Options every family gets from the CLI (the generator, the judges, the output); a family's own
# options must not reuse their names.
_RESERVED = frozenset(
    {
        "profile", "judges", "meta_judge", "meta_sets", "out", "output", "unleashed", "all_pairs", "seed",
        "max_tokens", "concurrency", "sandbox_timeout", "timeout", "limits", "ctx", "family", "imports",
        "base_url", "model", "api_key_env", "call_timeout",
    }
)  # fmt: skip
