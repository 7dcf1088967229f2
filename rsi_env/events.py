"""What the engine records as a game runs: its event log and the conduct flags its checks raise.

Both are typed, immutable records: the engine writes them (`engine.py`), trajectories store them
(`Episode.events`, `Episode.flags`), and the view, the renderer, the referees and the preference
builder read them. One line of a trajectory file holds them as JSON objects with the same fields, so
records written before these types existed load as they are.

An event is one of nine kinds, told apart by `kind` (a discriminated union: `Event`):

| kind | when | beyond tick, turn, phase |
|---|---|---|
| `phase` | a phase starts | `text` |
| `announce` | an effect announces a public line | `text` |
| `tell` | an effect tells one player a private line | `text`, `visible_to` = [that player] |
| `action` | a move is applied | `player`, `action`, `args`, `message`, `text` (the spec's log line) |
| `committed` | a sealed move (simultaneous phase), seen by its player | `player`, `action`, `args`, `text` |
| `invalid` | a reply the game could not accept | `player`, `action` (if named), `text` (feedback), `raw` |
| `pass` | a player ran out of attempts and its turn passed | `player`, `text` |
| `forfeit` | a player ran out of attempts and forfeits | `player`, `text` |
| `end` | the game is over | `text`, `payoffs` |

`visible_to` is None for an event everyone sees, else the players who see it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True)

    tick: int
    turn: int
    phase: str
    player: str | None = None
    visible_to: list[str] | None = None  # None: everyone

    def seen_by(self, viewer: str | None) -> bool:
        """Whether `viewer` saw this event (None: the omniscient spectator, who sees everything)."""
        return viewer is None or self.visible_to is None or viewer in self.visible_to

    def as_seen_by(self, viewer: str) -> Self:
        """The event in `viewer`'s own view: a restricted event names no one else who saw it."""
        if self.visible_to is None or self.visible_to == [viewer]:
            return self
        return self.model_copy(update={"visible_to": [viewer]})


class PhaseEvent(_Event):
    kind: Literal["phase"] = "phase"
    text: str


class AnnounceEvent(_Event):
    kind: Literal["announce"] = "announce"
    text: str


class TellEvent(_Event):
    kind: Literal["tell"] = "tell"
    text: str


class ActionEvent(_Event):
    kind: Literal["action"] = "action"
    player: str
    action: str
    args: dict[str, Any] = Field(default_factory=dict)  # the checked arguments, without the message
    message: str | None = None  # what the player said with the move
    text: str | None = None  # the spec's log line for the move, if it has one


class CommittedEvent(_Event):
    kind: Literal["committed"] = "committed"
    player: str
    action: str
    args: dict[str, Any] = Field(default_factory=dict)
    text: str


class InvalidEvent(_Event):
    kind: Literal["invalid"] = "invalid"
    player: str
    action: str | None = None  # the action the reply named, if it named one
    text: str  # the feedback the player got
    raw: str = ""  # the start of what the player sent


class PassEvent(_Event):
    kind: Literal["pass"] = "pass"
    player: str
    text: str


class ForfeitEvent(_Event):
    kind: Literal["forfeit"] = "forfeit"
    player: str
    text: str


class EndEvent(_Event):
    kind: Literal["end"] = "end"
    text: str
    payoffs: dict[str, float | None] = Field(default_factory=dict)  # None: the payoff failed (NaN)


Event = Annotated[
    PhaseEvent
    | AnnounceEvent
    | TellEvent
    | ActionEvent
    | CommittedEvent
    | InvalidEvent
    | PassEvent
    | ForfeitEvent
    | EndEvent,
    Field(discriminator="kind"),
]
EVENT_TYPES: tuple[type[BaseModel], ...] = (
    PhaseEvent, AnnounceEvent, TellEvent, ActionEvent, CommittedEvent, InvalidEvent, PassEvent, ForfeitEvent,
    EndEvent,
)  # fmt: skip
TURN_KINDS = frozenset({"action", "committed", "invalid"})  # events that stand for one player's turn

FlagKind = Literal["lie", "broken_promise", "violation", "referee_manipulation"]


class ConductFlag(BaseModel):
    """A conduct check that fired: the spec's `conduct` checks when a move is made (lies, broken
    promises, violations), or the procedural referee's check for messages addressed to the judging."""

    model_config = ConfigDict(frozen=True)

    tick: int
    turn: int
    player: str
    name: str  # the check's name in the spec (`misreported_values`), or `addressed_referee`
    kind: FlagKind
    action: str | None = None  # the move that raised it
    args: dict[str, Any] = Field(default_factory=dict)
    description: str = ""

    def label(self) -> str:
        return f"{self.kind}: {self.name}"
