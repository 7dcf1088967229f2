"""The embedded model's speed: prompt-prefix reuse per player, before and after, in one run.

Three parts:

1. Tokens alone (no model time; `--offline-episodes`): scripted play rendered as the LLM agents'
   prompts, tokenised exactly as the server does (the GGUF's chat template and tokenizer). Per call:
   prompt tokens, and the tokens a server must evaluate when it keeps (a) only its one context, as
   before, or (b) every conversation it served (a prefix cache of unbounded size). For each prompt
   layout: `before` (player named in the system prompt, the rules after the player's own lines, the
   history window sliding by one turn), `after-full` (rules first, the window dropping in blocks with
   a note) and `after` (that, and later turns leaving out what the first prompt states: unchanged
   state lines, the legal actions' descriptions); `after-slide` isolates the window scheme on games
   long enough to fill it.
2. Episodes on the model (`--rounds`): the quick-start negotiation and a 5-player werewolf, played by
   the default `local` profile, one episode at a time; in each round every variant plays the same
   seeds, in rotating order (paired, interleaved: the machine's load hits all variants alike).
     before      llama-cpp-python's server without a cache, the old prompt layout (today before this)
     prefix      our server's PrefixCache, the old layout
     layout      no cache, the new layout
     after-full  PrefixCache and the block window, later turns re-stating the whole state and
                 the legal actions (the package before the compact turns)
     compact     `after-full` with compact later turns
     after       `compact` with the grammar checking the sampled token instead of filtering the
                 whole vocabulary first (what the package now runs)
     stock-ram   llama-cpp-python's own `--cache true --cache_type ram`, the old layout
     stock-disk  the same on disk
     per-seat    one server (no cache) per seat, the old layout: each keeps its player's context
     per-seat-after  one server (no cache) per seat with `after`'s layout and sampling
     inproc      the `after` server's app called in this process (no HTTP, no second process)
   Per variant: seconds per episode and per call (wall), the server's CPU seconds per call (less
   sensitive to other load than wall time), prompt tokens per call split into evaluated and reused
   (the server's `cached_tokens`), the turns the game refused as invalid, and each figure as a
   ratio to `before` over the same seeds.
   Then prompt tokens per call by call index (flat or growing) and tokens per episode against turns.
3. Memory (`--mem-episodes`): the `after` server over N negotiation episodes: its resident memory and
   its cache's bytes against the configured capacity.

    python scripts/bench_local.py [--rounds 2] [--variants before,after] [--games negotiation,werewolf]
                                  [--mem-episodes 50] [--offline-episodes 4] [--max-cycles N]

Timings on a shared machine are noisy: read the ratios (paired by seed) and the token counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Before llama.cpp loads (the tokenizer, the in-process variant): idle OpenMP threads must not spin,
# as in the server processes rsi_env starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from rsi_env import local_model
from rsi_env.agents.baseline import ScriptedAgent
from rsi_env.agents.llm_agent import LLMAgent
from rsi_env.agents.profiles import AgentProfile, load_profile
from rsi_env.catalog import load_game
from rsi_env.env import GameParallelEnv
from rsi_env.llm import ChatClient, ChatResult, Endpoint
from rsi_env.runner import continue_episode, new_episode
from rsi_env.spec import GameSpec
from rsi_env.view import render_observation

QUICK_START = "negotiation"
PLAYERS = {"negotiation": 2, "werewolf": 5}

# ---------------------------------------------------------------------------------------------------
# The prompt layout before issue 18, frozen here as the reference
# ---------------------------------------------------------------------------------------------------

BEFORE_INSTRUCTIONS = (
    'You are {player} in the game "{game}". Each turn you read the game state and the legal actions. '
    "Reply with exactly one JSON object that chooses one legal action, and nothing else."
)


def before_system(profile: AgentProfile, spec: GameSpec, player: str) -> str:
    base = BEFORE_INSTRUCTIONS.format(player=player, game=spec.name)
    return f"{profile.persona.strip()}\n{base}" if profile.persona.strip() else base


def sliding_conversation(
    system: str, exchanges: list[tuple[str, str]], prompt: str, window: int
) -> list[dict[str, str]]:
    """The window before: the first exchange and the last `window - 1`, sliding by one per turn."""
    kept = exchanges if len(exchanges) <= window else [exchanges[0], *exchanges[-(window - 1) :]]
    messages = [{"role": "system", "content": system}]
    for user, assistant in kept:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    messages.append({"role": "user", "content": prompt})
    return messages


def before_first_prompt(text: str, spec: GameSpec, player: str, info: dict[str, Any]) -> str:
    """The first observation as it was: the player's own lines before the rules."""
    role = info["view"]["role"][player]
    desc = next(r.description for r in spec.roles if r.name == role)
    own = [f"YOUR ROLE: {desc}"] if desc else []
    rules = ["RULES:", spec.rules.strip()]
    new_head = "\n".join([f"GAME: {spec.name}", *rules, f"YOU: {player}, role: {role}", *own])
    if not text.startswith(new_head):
        raise AssertionError("render_observation's first lines changed: update bench_local.py")
    old_head = "\n".join([f"GAME: {spec.name} — you are {player}, role: {role}", *own, *rules])
    return old_head + text[len(new_head) :]


class BeforeLayoutAgent(LLMAgent):
    """An LLM agent with an earlier prompt layout (same model calls, old prompts): `slide` (the window
    sliding by one turn), `old_header` (player named first, rules after its own lines), `full_turns`
    (later turns re-state the whole state and the legal actions, as before the compact turns)."""

    def __init__(
        self, *args: Any, slide: bool = True, old_header: bool = True, full_turns: bool = True, **kw: Any
    ) -> None:
        super().__init__(*args, **kw)
        self.slide, self.old_header, self.full_turns = slide, old_header, full_turns
        if old_header:
            self.system = before_system(self.profile, self.spec, self.player)

    def prompt_for(self, info: dict[str, Any]) -> str:
        if self.full_turns and self.exchanges:
            return render_observation(
                self.spec, info["view"], info["action_schema"], info.get("feedback"),
                include_rules=False, since_tick=self.last_tick,
            )  # fmt: skip
        text = super().prompt_for(info)
        if self.exchanges or not self.old_header:
            return text
        return before_first_prompt(text, self.spec, self.player, info)

    def messages_for(self, info: dict[str, Any]) -> tuple[str, list[dict[str, str]]]:
        if not self.slide:
            return super().messages_for(info)
        prompt = self.prompt_for(info)
        return prompt, sliding_conversation(self.system, self.exchanges, prompt, self.profile.window)


LAYOUTS = {
    "before": dict(slide=True, old_header=True),
    "after-slide": dict(slide=True, old_header=False),
    "after-full": dict(slide=False, old_header=False),  # the block window, later turns in full
    "after": None,  # the package's: the block window and compact later turns
}


def make_agent(
    layout: str, profile: AgentProfile, client: Any, spec: GameSpec, player: str, seed: int
) -> LLMAgent:
    opts = LAYOUTS[layout]
    if opts is None:
        return LLMAgent(profile, client, spec, player, seed=seed)
    return BeforeLayoutAgent(profile, client, spec, player, seed=seed, **opts)


# ---------------------------------------------------------------------------------------------------
# Part 1: tokens alone
# ---------------------------------------------------------------------------------------------------


class Tokenizer:
    """The server's own prompt formatting and tokenisation (no weights loaded)."""

    def __init__(self, path: Path) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.llama = Llama(model_path=str(path), vocab_only=True, verbose=False)
        meta = self.llama.metadata
        eos = self.llama._model.token_get_text(self.llama.token_eos())
        bos = self.llama._model.token_get_text(self.llama.token_bos())
        self.formatter = Jinja2ChatFormatter(
            template=meta["tokenizer.chat_template"], eos_token=eos, bos_token=bos
        )

    def prompt(self, messages: list[dict[str, str]]) -> list[int]:
        res = self.formatter(messages=messages)
        return self.llama.tokenize(res.prompt.encode(), add_bos=not res.added_special, special=True)

    def reply(self, text: str) -> list[int]:
        return self.llama.tokenize(text.encode(), add_bos=False, special=False)


def common(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def table(head: list[str], rows: list[list[Any]]) -> None:
    """Print rows under a header, each column right-aligned to its widest cell (the first left)."""
    cells = [head] + [[f"{c:.2f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    for r in cells:
        pairs = enumerate(zip(r, widths, strict=True))
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in pairs))


@dataclass
class TokenSim:
    """Per call: prompt tokens and the tokens evaluated with one context or with a prefix cache."""

    prompt: list[int] = field(default_factory=list)
    eval_context: list[int] = field(default_factory=list)
    eval_cache: list[int] = field(default_factory=list)
    per_episode: list[tuple[int, int, int, int]] = field(default_factory=list)  # calls, prompt, ctx, cache


async def simulate(tok: Tokenizer, game: str, layout: str, episodes: int, profile: AgentProfile) -> TokenSim:
    spec = load_game(game)
    sim = TokenSim()
    cache: list[list[int]] = []  # every sequence served, across episodes (one server for the run)
    context: list[int] = []
    for seed in range(episodes):
        env = GameParallelEnv(spec, n_players=PLAYERS.get(game))
        env.restart(seed=seed)
        agents = {p: make_agent(layout, profile, None, spec, p, seed) for p in env.possible_agents}
        policy = {p: ScriptedAgent(spec, seed * 1000 + i) for i, p in enumerate(env.possible_agents)}
        calls = prompt_sum = ctx_sum = cache_sum = 0
        while env.agents:
            acting = env.engine.current_actors()
            moves = {}
            for p in [p for p in env.agents if p in acting]:
                info = env.agent_info(p)
                prompt, messages = agents[p].messages_for(info)
                reply = await policy[p].act(env.observe(p), info)
                ids = tok.prompt(messages)
                # llama.cpp re-evaluates at least the last prompt token.
                ctx = len(ids) - min(common(context, ids), len(ids) - 1)
                best = max((common(s, ids) for s in cache), default=0)
                cached = len(ids) - min(best, len(ids) - 1)
                sim.prompt.append(len(ids))
                sim.eval_context.append(ctx)
                sim.eval_cache.append(cached)
                calls, prompt_sum, ctx_sum, cache_sum = (
                    calls + 1,
                    prompt_sum + len(ids),
                    ctx_sum + ctx,
                    cache_sum + cached,
                )
                context = ids + tok.reply(reply)  # the stock server keeps the reply in its context
                cache.append(ids)  # our cache keeps prompts only (see rsi_env.local_server)
                agents[p].exchanges.append((prompt, reply))  # as LLMAgent.act does
                agents[p].last_tick = info.get("tick")
                moves[p] = reply
            env.advance(moves)
        sim.per_episode.append((calls, prompt_sum, ctx_sum, cache_sum))
    return sim


async def offline(episodes: int) -> None:
    tok = Tokenizer(local_model.gguf_path())
    profile = load_profile("local")
    print(f"## 1. Prompt tokens per call, from the tokenizer alone ({episodes} scripted episodes per game)")
    print("evaluated: the tokens a server must run per call when it keeps only its one context (`ctx`,")
    print("the server before) or every conversation it served (`cache`, a prefix cache)\n")
    rows = []
    for game in ("negotiation", "werewolf", "prisoners_dilemma", "commons"):
        for layout in ("before", "after-slide", "after-full", "after"):
            sim = await simulate(tok, game, layout, episodes, profile)
            ctx, cache = statistics.mean(sim.eval_context), statistics.mean(sim.eval_cache)
            rows.append([game, layout, len(sim.prompt), round(statistics.mean(sim.prompt)), round(ctx),
                         round(cache), cache / ctx, max(sim.prompt)])  # fmt: skip
    head = ["game", "layout", "calls", "prompt/call", "eval ctx", "eval cache", "cache/ctx", "longest prompt"]
    table(head, rows)
    print()


# ---------------------------------------------------------------------------------------------------
# Part 2: episodes on the model
# ---------------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class Call:
    wall_s: float
    cpu_s: float
    prompt: int
    reused: int
    index: int  # the player's k-th call (1-based)


class RecordingChat:
    """Passes calls to the real client and keeps each call's figures (instrumentation, not a double)."""

    def __init__(self, inner: ChatClient, pids: list[int] | None) -> None:
        self.inner, self.pids = inner, pids
        self.calls: list[Call] = []
        self._index: dict[int, int] = defaultdict(int)

    def _cpu(self) -> float:
        if self.pids is None:  # in-process: this process's CPU (client included)
            return time.process_time()
        return sum(cpu_seconds(p) for p in self.pids)

    async def chat(self, messages: list[dict[str, Any]], **kw: Any) -> ChatResult:
        c0, t0 = self._cpu(), time.perf_counter()
        res = await self.inner.chat(messages, **kw)
        wall, cpu = time.perf_counter() - t0, self._cpu() - c0
        rec = res.record
        key = hash(messages[0]["content"] + messages[1]["content"])  # one conversation
        self._index[key] += 1
        self.calls.append(Call(wall, cpu, rec.prompt_tokens or 0, rec.cached_tokens or 0, self._index[key]))
        return res

    async def aclose(self) -> None:
        await self.inner.aclose()


# grammar: "first" is llama-cpp-python's sampling (the grammar filters the whole vocabulary at each
# token), "checked" the package's (the grammar checks the sampled token; see local_server).
VARIANTS: dict[str, dict[str, Any]] = {
    "before": dict(cache="none", layout="before", servers="one", grammar="first"),
    "prefix": dict(cache="prefix", layout="before", servers="one", grammar="first"),
    "layout": dict(cache="none", layout="after", servers="one", grammar="first"),
    "after-full": dict(cache="prefix", layout="after-full", servers="one", grammar="first"),
    "compact": dict(cache="prefix", layout="after", servers="one", grammar="first"),
    "after": dict(cache="prefix", layout="after", servers="one", grammar="checked"),
    "stock-ram": dict(cache="ram", layout="before", servers="one", grammar="first"),
    "stock-disk": dict(cache="disk", layout="before", servers="one", grammar="first"),
    "per-seat": dict(cache="none", layout="before", servers="per-seat", grammar="first"),
    "per-seat-after": dict(cache="none", layout="after", servers="per-seat", grammar="checked"),
    "inproc": dict(cache="prefix", layout="after", servers="in-process", grammar="checked"),
}


class Backend:
    """The server(s) of one variant, started once and kept for the run (its cache stays warm)."""

    def __init__(
        self, name: str, n_threads: int | None, cache_states: float = local_model.DEFAULT_CACHE_STATES
    ) -> None:
        self.name, self.cfg = name, VARIANTS[name]
        self.n_threads = n_threads
        self.cache_states = cache_states
        self.servers: list[local_model.LocalServer] = []
        self._inproc: Any = None

    def _server(self) -> local_model.LocalServer:
        s = local_model.LocalServer(
            cache=self.cfg["cache"],
            n_threads=self.n_threads,
            cache_states=self.cache_states,
            grammar=self.cfg["grammar"],
        )
        s.start()
        self.servers.append(s)
        return s

    def clients(self, n_players: int) -> list[RecordingChat]:
        """One recording client per seat (the same underlying client but for `per-seat`)."""
        if self.cfg["servers"] == "in-process":
            return [RecordingChat(self._inprocess_client(), None)] * n_players
        if self.cfg["servers"] == "per-seat":
            while len(self.servers) < n_players:
                self._server()
            return [RecordingChat(ChatClient(s.endpoint()), [s.pid]) for s in self.servers[:n_players]]  # type: ignore[list-item]
        server = self.servers[0] if self.servers else self._server()
        shared = RecordingChat(ChatClient(server.endpoint()), [server.pid])  # type: ignore[list-item]
        return [shared] * n_players

    def _inprocess_client(self) -> ChatClient:
        import httpx

        from rsi_env import local_server

        if self._inproc is None:
            threads = self.n_threads or os.cpu_count() or 1
            args = local_server.build_parser().parse_args(
                ["--model", str(local_model.gguf_path()), "--model_alias", local_model.MODEL_ALIAS,
                 "--n_ctx", str(local_model.DEFAULT_N_CTX), "--n_threads", str(threads),
                 "--grammar", self.cfg["grammar"]]
            )  # fmt: skip
            self._inproc, _ = local_server.build_app(args)
        ep = Endpoint(
            base_url="http://in-process/v1", model=local_model.MODEL_ALIAS, dialect="json_object",
            timeout_s=600.0, max_parallel=1,
        )  # fmt: skip
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self._inproc), timeout=600.0)
        return ChatClient(ep, http_client=http)

    def stop(self) -> None:
        for s in self.servers:
            s.stop()


@dataclass
class EpisodeRun:
    variant: str
    game: str
    seed: int
    wall_s: float
    turns: int
    calls: list[Call]
    actions: list[str | None]
    invalid: int  # turns whose reply the game refused


async def play(
    backend: Backend, game: str, seed: int, max_cycles: int | None, profile: AgentProfile
) -> EpisodeRun:
    spec = load_game(game)
    env = GameParallelEnv(spec, n_players=PLAYERS.get(game), max_cycles=max_cycles)
    env.restart(seed=seed)
    clients = backend.clients(len(env.possible_agents))
    agents = {
        p: make_agent(backend.cfg["layout"], profile, clients[i], spec, p, seed * 1000 + i)
        for i, p in enumerate(env.possible_agents)
    }
    ep = new_episode(
        f"{backend.name}-{game}-{seed}", "bench", spec, env, ["local"] * len(agents), dict(agents), seed
    )
    t0 = time.perf_counter()
    ep = await continue_episode(ep, env, dict(agents))
    wall = time.perf_counter() - t0
    calls = [c for cl in {id(c): c for c in clients}.values() for c in cl.calls]
    for cl in {id(c): c for c in clients}.values():
        await cl.inner.aclose()
    if ep.status == "aborted":
        print(f"  ! {backend.name} {game} seed {seed} aborted: {ep.abort_reason}", file=sys.stderr)
    invalid = sum(1 for t in ep.turns if not t.valid)
    return EpisodeRun(
        backend.name, game, seed, wall, len(ep.turns), calls, [t.action for t in ep.turns], invalid
    )


def _gmean(xs: list[float]) -> float:
    xs = [x for x in xs if x > 0]
    return math.exp(statistics.mean(math.log(x) for x in xs)) if xs else float("nan")


def per_call(r: EpisodeRun, f: Any) -> float:
    return statistics.mean(f(c) for c in r.calls) if r.calls else float("nan")


FIGURES = {"wall": lambda c: c.wall_s, "cpu": lambda c: c.cpu_s, "eval": lambda c: c.prompt - c.reused}


def report(runs: list[EpisodeRun], variants: list[str], games: list[str]) -> None:
    print("## 2. Episodes on the embedded model (the default `local` profile)")
    print("x: the variant's per-call figure / `before`'s on the same seed (geometric mean over seeds);")
    print("cpu: the server process's CPU seconds (all its threads; this process's for `inproc`)\n")
    by = defaultdict(list)
    for r in runs:
        by[(r.variant, r.game)].append(r)
    rows = []
    for game in games:
        base = {r.seed: r for r in by[("before", game)] if r.calls}
        for v in variants:
            rs = by[(v, game)]
            calls = [c for r in rs for c in r.calls]
            if not calls:
                continue
            x = {
                name: _gmean([per_call(r, f) / per_call(base[r.seed], f) for r in rs if r.seed in base])
                for name, f in FIGURES.items()
            }
            prompt = statistics.mean(c.prompt for c in calls)
            reused = statistics.mean(c.reused for c in calls)
            rows.append([
                game, v, len(rs), len(calls), statistics.mean(r.wall_s for r in rs),
                statistics.mean(c.wall_s for c in calls), statistics.mean(c.cpu_s for c in calls),
                round(prompt), round(prompt - reused), f"{reused / prompt:.0%}",
                f"{sum(r.invalid for r in rs)}/{sum(r.turns for r in rs)}",
                x["wall"], x["cpu"], x["eval"],
            ])  # fmt: skip
    table(["game", "variant", "eps", "calls", "s/episode", "s/call", "cpu s/call", "prompt/call", "eval/call",
           "reused", "invalid", "x s/call", "x cpu", "x eval"], rows)  # fmt: skip
    print()
    for game in games:
        print(f"### {game}: prompt tokens / evaluated tokens by the player's k-th call")
        for v in variants:
            idx: dict[int, list[Call]] = defaultdict(list)
            for r in by[(v, game)]:
                for c in r.calls:
                    idx[c.index].append(c)
            cells = [
                f"k={k}: {statistics.mean(c.prompt for c in cs):.0f}/"
                f"{statistics.mean(c.prompt - c.reused for c in cs):.0f}"
                for k, cs in sorted(idx.items())
            ]
            print(f"  {v:<11} " + "  ".join(cells))
        print(f"### {game}: tokens per episode against turns (turns: prompt tokens, evaluated)")
        for v in variants:
            eps = sorted(by[(v, game)], key=lambda r: r.turns)
            cells = [
                f"{r.turns}: {sum(c.prompt for c in r.calls)}, {sum(c.prompt - c.reused for c in r.calls)}"
                for r in eps
            ]
            print(f"  {v:<11} " + " | ".join(cells))
        print()
    quick = by[("after", QUICK_START)]
    if quick:
        model_s = statistics.mean(sum(c.wall_s for c in r.calls) for r in quick)
        cpu_s = statistics.mean(sum(c.cpu_s for c in r.calls) for r in quick)
        n = statistics.mean(len(r.calls) for r in quick)
        print(f"quick-start negotiation with `after`: {n:.1f} calls, model time {model_s:.1f} s per episode "
              f"(wall), {cpu_s:.1f} s of server CPU\n")  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Part 3: memory
# ---------------------------------------------------------------------------------------------------


def cache_stats(server: local_model.LocalServer) -> dict[str, Any]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(server.base_url.removesuffix("/v1") + "/rsi/cache", timeout=10) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


async def memory(
    episodes: int, max_cycles: int | None, profile: AgentProfile, n_threads: int | None, cache_states: float
) -> None:
    print(f"## 3. Memory of the `after` server over {episodes} negotiation episodes")
    backend = Backend("after", n_threads, cache_states)
    try:
        backend.clients(1)
        server = backend.servers[0]
        assert server.pid is not None
        rss0 = rss_bytes(server.pid)
        samples = []
        for i in range(episodes):
            await play(backend, "negotiation", 10_000 + i, max_cycles, profile)
            stats = cache_stats(server)
            samples.append((i + 1, rss_bytes(server.pid), stats))
        cap = samples[-1][2]["capacity_bytes"]
        print(f"capacity {cap / 2**20:.0f} MiB; server RSS after loading: {rss0 / 2**20:.0f} MiB")
        print(
            f"{'episode':>7} {'RSS MiB':>8} {'growth MiB':>10} {'cache MiB':>9} {'states':>6} {'evicted':>7}"
        )
        for n, rss, st in samples:
            if n in (1, 2, 5, 10, 20, 30, 40, 50) or n == len(samples):
                print(f"{n:>7} {rss / 2**20:>8.0f} {(rss - rss0) / 2**20:>10.0f} {st['bytes'] / 2**20:>9.0f} "
                      f"{st['states']:>6} {st['evictions']:>7}")  # fmt: skip
        peak = max(rss for _, rss, _ in samples)
        print(f"peak growth {(peak - rss0) / 2**20:.0f} MiB against a capacity of {cap / 2**20:.0f} MiB\n")
    finally:
        backend.stop()


# ---------------------------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> None:
    if args.offline_episodes:
        await offline(args.offline_episodes)
    variants = args.variants.split(",")
    games = args.games.split(",")
    profile = load_profile("local")
    if args.rounds:
        backends = {v: Backend(v, args.threads) for v in variants}
        runs: list[EpisodeRun] = []
        try:
            for r in range(args.rounds):
                for gi, game in enumerate(games):
                    order = variants[(r + gi) % len(variants) :] + variants[: (r + gi) % len(variants)]
                    for v in order:
                        run = await play(backends[v], game, r, args.max_cycles, profile)
                        print(
                            f"  round {r} {game:<12} {v:<11} {run.wall_s:6.1f} s  {len(run.calls)} calls",
                            file=sys.stderr,
                        )
                        runs.append(run)
        finally:
            for b in backends.values():
                b.stop()
        report(runs, variants, games)
    if args.mem_episodes:
        await memory(args.mem_episodes, args.max_cycles, profile, args.threads, args.cache_states)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2, help="seeds per game, each played by every variant")
    ap.add_argument("--variants", default="before,after", help=f"comma-separated, from {', '.join(VARIANTS)}")
    ap.add_argument("--games", default="negotiation,werewolf")
    ap.add_argument("--max-cycles", type=int, default=None, help="cap on ticks per episode")
    ap.add_argument("--threads", type=int, default=None, help="model threads (default: all cores)")
    ap.add_argument("--mem-episodes", type=int, default=50)
    ap.add_argument(
        "--cache-states", type=float, default=local_model.DEFAULT_CACHE_STATES,
        help="capacity of the memory part's cache in full-context states (smaller: see eviction sooner)",
    )  # fmt: skip
    ap.add_argument(
        "--offline-episodes", type=int, default=1,
        help="scripted episodes per game in part 1 (scripted play may repeat itself across seeds)",
    )  # fmt: skip
    args = ap.parse_args()
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown or "before" not in args.variants.split(","):
        ap.error(f"--variants: must include `before`; unknown: {', '.join(sorted(unknown)) or 'none'}")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
