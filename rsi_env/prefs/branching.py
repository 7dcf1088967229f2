"""Branching: same-prompt candidates at a decision, each rolled out to the end, then judged.

At a decision of an LLM agent in a recorded episode, the env is rebuilt exactly (reset with the
episode's seed, then the recorded replies replayed tick by tick), snapshotted, and the agent is
asked K times for its move from the identical conversation. Each candidate is rolled out to the
end from the restored snapshot, with the same opponents (rebuilt with the same seeds and the same
conversation history) and the same moves of any other player acting at that tick. The rollouts
are scored procedurally (payoff, conduct flags) and ranked by the LLM judge panel on the run's
rubric (`prefs.ranking.judge_set`); the result is one `BranchSet` line, from which `prefs build`
makes rows without any new model call.

Where the candidates come from is one function (`sample_candidates`): it draws again a candidate
whose move repeats an earlier one's (a few extra draws at most), so the rollouts can differ.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ..actions import parse_action
from ..agents.base import TurnReport
from ..agents.factory import AgentFactory
from ..agents.llm_agent import LLMAgent
from ..env import GameParallelEnv
from ..referees.meta import Ranker
from ..referees.procedural import conduct_flags
from ..referees.rubric import HOLISTIC, Criteria
from ..referees.transcript import episode_text, game_brief
from ..runner import build_agents, continue_episode
from ..spec import GameSpec
from ..trajectory import Episode, Turn, Usage, abort_status
from .candidates import BRANCHES, BranchCandidate, BranchSet, append_set, decision_id, read_sets
from .ranking import judge_set
from .rows import Message


def objective(payoff: float | None, best: float | None, flags: int, penalty: float) -> float | None:
    """Normalised payoff minus a penalty per conduct flag (lie, broken promise, violation)."""
    if payoff is None or math.isnan(payoff):
        return None
    base = payoff / best if best else payoff
    return base - penalty * flags


def decision_turns(ep: Episode, llm_players: set[str], per_episode: int) -> list[Turn]:
    """Up to `per_episode` valid decisions of LLM agents, spread over the episode."""
    turns = [
        t for t in ep.turns if t.player in llm_players and t.prompt is not None and t.call.status == "ok"
    ]
    if len(turns) <= per_episode:
        return turns
    step = len(turns) / per_episode
    return [turns[int(i * step)] for i in range(per_episode)]


def replay_to(ep: Episode, spec: GameSpec, tick: int, max_cycles: int | None = None) -> GameParallelEnv:
    """The env exactly as it was at the start of `tick`: reset with the seed, replay the replies."""
    env = GameParallelEnv(spec, n_players=ep.n_players, max_cycles=max_cycles)
    env.reset(seed=ep.seed)
    by_tick: dict[int, dict[str, str]] = {}
    for t in ep.turns:
        by_tick.setdefault(t.tick, {})[t.player] = t.raw
    while env.engine.tick_no < tick and env.agents:
        env.advance(by_tick.get(env.engine.tick_no, {}))
    if env.engine.tick_no != tick:
        raise RuntimeError(f"{ep.episode_id}: replay reached tick {env.engine.tick_no}, not {tick}")
    return env


def _restore_histories(agents: dict[str, Any], prefix: list[Turn]) -> None:
    for agent in agents.values():
        if isinstance(agent, LLMAgent):
            agent.restore(prefix)


class NothingBranched(Exception):
    """`prefs generate` found no decision to branch (and has no earlier branch sets to build from)."""


Decision = tuple[Episode, Turn]
# Rolls out every pending decision and hands each (decision, set, rollouts) to `done` as it finishes:
# in this process (`local_rollouts`) or on Ray actors (`runner.ray_backend`, `prefs generate --ray`).
Rollouts = Callable[
    [list[Decision], Callable[[Decision, tuple[BranchSet, list[Episode]]], Awaitable[None]]], Awaitable[None]
]


def pending_decisions(
    episodes: list[Episode], factory: AgentFactory, run_dir: Path, per_episode: int
) -> list[Decision]:
    """Up to `per_episode` decisions of the LLM agents in each finished episode whose set is not in the
    run directory yet (an earlier, interrupted run made it), so rerunning resumes."""
    llm_players = {p.player for ep in episodes for p in ep.players if p.agent in factory.profiles}
    done = {bs.set_id for bs in read_sets(run_dir)} if (run_dir / BRANCHES).is_file() else set()
    return [
        (ep, t)
        for ep in episodes
        if ep.status != "aborted"
        for t in decision_turns(ep, llm_players, per_episode)
        if decision_id(ep.episode_id, t.tick, t.player) not in done
    ]


def local_rollouts(
    spec: GameSpec, factory: AgentFactory, *, k: int, penalty: float, concurrency: int
) -> Rollouts:
    """Roll decisions out in this process, `concurrency` at a time."""

    async def run(
        work: list[Decision],
        done: Callable[[Decision, tuple[BranchSet, list[Episode]]], Awaitable[None]],
    ) -> None:
        sem = asyncio.Semaphore(concurrency)

        async def one(item: Decision) -> None:
            async with sem:
                made = await branch(item[0], spec, factory, item[1], k, penalty=penalty)
                await done(item, made)

        await asyncio.gather(*(one(item) for item in work))

    return run


async def branch_decisions(
    episodes: list[Episode],
    spec: GameSpec,
    factory: AgentFactory,
    run_dir: Path,
    *,
    k: int,
    per_episode: int,
    judges: list[Ranker],
    criteria: Criteria = HOLISTIC,
    penalty: float = 0.25,
    pairwise: bool = False,
    concurrency: int = 4,
    rollouts: Rollouts | None = None,
) -> list[BranchSet]:
    """Branch up to `per_episode` decisions of the LLM agents in each finished episode, K ways, have the
    judges rank each set here, and append each set (and its rollouts) to the run directory as it is made.
    A decision whose set is already there is skipped, so rerunning resumes. `rollouts` runs the branches
    (default: in this process)."""
    work = pending_decisions(episodes, factory, run_dir, per_episode)
    run = rollouts or local_rollouts(spec, factory, k=k, penalty=penalty, concurrency=concurrency)
    made: list[BranchSet] = []

    async def done(item: Decision, result: tuple[BranchSet, list[Episode]]) -> None:
        bs, rolled = result
        shown, context = judge_view(bs, spec, item[0], rolled)
        await judge_set(bs, judges, criteria, shown=shown, context=context, pairwise=pairwise)
        append_set(run_dir, bs, list(rolled))
        made.append(bs)

    if work:
        await run(work, done)
    return made


# Extra samples a decision may take, per candidate, to find moves that differ from the ones drawn.
RESAMPLES_PER_CANDIDATE = 1


def move_key(raw: str, action_names: list[str]) -> str:
    """What the game does with a reply: its action and arguments, without the free text of a message
    (two replies that differ only in wording or spacing play out the same way)."""
    parsed = parse_action(raw, action_names)
    if parsed.name is None:
        return "invalid"
    args = {k: v for k, v in parsed.args.items() if k != "message"}
    return json.dumps([parsed.name, args], sort_keys=True, default=str)


async def sample_candidates(
    decider: LLMAgent, env: GameParallelEnv, player: str, prefix: list[Turn], tick: int, k: int
) -> tuple[list[TurnReport], int]:
    """K moves of `decider` from the identical conversation at `tick`, each with its own sampling seed.

    Candidates that would play out alike teach nothing: a draw whose move (action and arguments)
    repeats an earlier candidate's is drawn again, up to RESAMPLES_PER_CANDIDATE extra draws per
    candidate in all; when the model keeps repeating itself, the repeats are kept (K candidates).
    Returns the candidates and the number of draws (model calls) they took."""
    info = env.agent_info(player)
    names = list(info.get("legal_actions") or [])
    reports: list[TurnReport] = []
    seen: set[str] = set()
    spare = RESAMPLES_PER_CANDIDATE * k
    base_seed = (decider.seed or 0) + 7919 * (tick + 1)
    draw = 0
    while len(reports) < k:
        decider.restore(prefix)
        decider.seed = base_seed + 104_729 * draw - decider.calls  # a distinct sampling seed per draw
        draw += 1
        await decider.act(env.observe(player), info)
        rep = decider.last or TurnReport(raw="")
        key = move_key(rep.raw, names) if rep.status == "ok" else f"failed:{draw}"
        if key in seen and spare > 0:
            spare -= 1
            continue
        seen.add(key)
        reports.append(rep)
    return reports, draw


async def branch(
    base: Episode,
    spec: GameSpec,
    factory: AgentFactory,
    decision: Turn,
    k: int,
    *,
    penalty: float = 0.25,
    run_id: str = "",
) -> tuple[BranchSet, list[Episode]]:
    """Sample K candidates at `decision`, roll each out and score it procedurally (not yet judged)."""
    names = [p.agent for p in base.players]
    player, tick = decision.player, decision.tick
    prefix = [t for t in base.turns if t.tick < tick]
    env = replay_to(base, spec, tick)
    snap = env.snapshot()
    agents = build_agents(factory, env, names, base.seed)
    _restore_histories(agents, prefix)
    decider = agents[player]
    if not isinstance(decider, LLMAgent):
        raise ValueError(f"{player} is not an LLM agent; branching needs a model to sample from")
    prompt, messages = decider.messages_for(env.agent_info(player))
    reports, draws = await sample_candidates(decider, env, player, prefix, tick, k)
    others = {t.player: t for t in base.turns if t.tick == tick and t.player != player}
    sid = decision_id(base.episode_id, tick, player)
    candidates: list[BranchCandidate] = []
    rollouts: list[Episode] = []
    for i, rep in enumerate(reports):
        cand = BranchCandidate(id=f"c{i}", raw=rep.raw, status=rep.status)
        candidates.append(cand)
        if rep.status != "ok" and rep.status not in ("invalid_output", "refused"):
            continue  # the call failed: no candidate, never a zero score
        env.restore(snap)
        roll_agents = build_agents(factory, env, names, base.seed)
        _restore_histories(roll_agents, prefix)
        d = roll_agents[player]
        assert isinstance(d, LLMAgent)
        d.exchanges.append((prompt, rep.raw))
        d.last_tick, d.calls = tick, d.calls + 1
        ep = base.model_copy(
            deep=True, update={"turns": [t.model_copy() for t in prefix], "verdicts": [], "usage": Usage()}
        )
        ep.episode_id = f"{sid}/{cand.id}"
        ep.run_id = run_id or base.run_id
        ep.status, ep.payoffs, ep.abort_reason = "complete", None, None
        ep.branch_of = {"base": base.episode_id, "tick": tick, "player": player, "candidate": cand.id, "k": k}
        ep.duration_s = 0.0
        first = {player: rep}
        for q, t in others.items():
            first[q] = TurnReport(raw=t.raw, prompt=t.prompt, status=t.call.status)
        await continue_episode(ep, env, roll_agents, first_moves=first)
        rollouts.append(ep)
        flags = conduct_flags(ep, player, from_tick=tick)
        pay = ep.payoffs.get(player) if ep.payoffs else None
        best = ep.best.get(player) if ep.best else None
        cand.rollout_id, cand.rollout_status = ep.episode_id, ep.status
        cand.payoff, cand.best, cand.flags = pay, best, flags
        cand.objective = objective(pay, best, flags, penalty) if ep.status != "aborted" else None
    record = BranchSet(
        set_id=sid,
        game=spec.id,
        base_episode=base.episode_id,
        seed=base.seed,
        player=player,
        role=next(p.role for p in base.players if p.player == player),
        tick=tick,
        turn=decision.turn,
        prompt=[Message(**m) for m in messages],  # type: ignore[arg-type]
        candidates=candidates,
        draws=draws,
    )
    return record, rollouts


async def rollouts_at(
    spec: GameSpec, factory: AgentFactory, base: Episode, decision: Turn, k: int, penalty: float
) -> tuple[BranchSet, list[Episode]]:
    """`branch` without the judges, arguments in the order a Ray actor calls it (`RayPool`, `run_on`):
    what an actor does for `prefs generate --ray`; the driver's judges then rank the rollouts."""
    return await branch(base, spec, factory, decision, k, penalty=penalty)


def judge_view(
    record: BranchSet, spec: GameSpec, base: Episode, rollouts: list[Episode]
) -> tuple[dict[str, str], str]:
    """What judges see of a decision: each candidate's move and everything that followed it (by candidate
    id), and before them the game's rules and the game until the decision."""
    by_id = {ep.episode_id: ep for ep in rollouts}
    shown = {}
    for c in record.candidates:
        ep = by_id.get(c.rollout_id)
        if ep is not None:
            after = episode_text(ep, from_tick=record.tick).split("What happened:\n", 1)[-1]
            shown[c.id] = f"{record.player}'s move: {c.raw}\n{after}"
    history = episode_text(
        base.model_copy(update={"events": [e for e in base.events if e.tick < record.tick]})
    )
    context = f"{game_brief(spec)}\n\nTHE GAME UNTIL THE DECISION:\n{history.rsplit('Final payoffs', 1)[0]}"
    return shown, context


def nothing_branched(episodes: list[Episode]) -> NothingBranched:
    """Why no decision was branched: how many episodes aborted, and with which statuses."""
    aborted = [ep for ep in episodes if ep.status == "aborted"]
    statuses = Counter(abort_status(ep) for ep in aborted)
    why = ", ".join(f"{status}: {n}" for status, n in statuses.most_common())
    if aborted and len(aborted) == len(episodes):
        msg = f"all {len(episodes)} episode(s) aborted ({why}), so no decision could be branched"
    elif aborted:
        msg = (
            f"no decision could be branched: {len(aborted)} of {len(episodes)} episode(s) aborted ({why}), "
            "the others had no successful LLM decision"
        )
    else:
        msg = (
            f"no decision could be branched: none of the {len(episodes)} episode(s) "
            "had a successful LLM decision"
        )
    return NothingBranched(msg + "; check the endpoint (--base-url, --model) and the agents")
