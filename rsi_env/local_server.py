"""The process the embedded model runs in: llama-cpp-python's OpenAI-compatible server, plus a prompt
cache that keeps each conversation's evaluated prefix, plus `cached_tokens` in every reply's usage.

Started by `rsi_env.local_model.LocalServer` as `python -m rsi_env.local_server ...`; nothing else in
the package imports it (it imports llama-cpp-python's server, which only this child process needs).

Why not the server's own `--cache true` (measured in `scripts/bench_local.py`): its RAM cache keeps the
right states, but each entry also copies the model's logits buffer (n_batch x vocabulary floats:
~100 MB for SmolLM2, uncounted by `cache_size`, and never read back since the server samples inside
llama.cpp), and it keeps every intermediate state of a conversation although the newest one covers
them all. `PrefixCache` stores the KV state only, drops states that a newer state extends, counts
every byte it holds and evicts least-recently-used states beyond its capacity.

How a call reuses a prefix: llama-cpp-python compares the new prompt's tokens with what the context
holds and evaluates only the rest; before that, it loads the cached state sharing the longest prefix
with the prompt when that prefix is longer than the context's. Two players alternating on one
context therefore each find their own previous conversation in the cache.

Sampling under a JSON grammar (`GrammarCheckedSampler`): llama-cpp-python applies the grammar to
every vocabulary entry before sampling; here the token is sampled first and the grammar checks it,
falling back to the full filter only when it refuses (measured on SmolLM2: ~31 instead of ~40 ms
CPU per decoded token; the replies are still schema-valid, and the same with and without the cache).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import numpy as np

# Pure ASGI types (no starlette import needed for the middleware).
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the common prefix of two token arrays (vectorised: keys hold thousands of tokens)."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


class PrefixCache:
    """Evaluated conversation states keyed by their tokens, least recently used evicted first.

    Implements the interface llama-cpp-python's `Llama` calls (`cache[tokens]` returns the state
    sharing the longest prefix with `tokens`; `cache[tokens] = state` stores one) without its
    base class, so the cache is importable without the native library.
    """

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self._states: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self._keys: dict[tuple[int, ...], np.ndarray] = {}
        self._sizes: dict[tuple[int, ...], int] = {}
        self.evictions = 0

    @property
    def cache_size(self) -> int:
        return sum(self._sizes.values())

    def __bool__(self) -> bool:
        return True  # `Llama` tests `if self.cache:`; an empty cache must still be filled

    def __len__(self) -> int:
        return len(self._states)

    @staticmethod
    def state_bytes(state: Any) -> int:
        """Everything an entry holds: the llama.cpp state plus the arrays beside it."""
        return int(state.llama_state_size) + int(state.scores.nbytes) + int(state.input_ids.nbytes)

    def _longest(self, tokens: Sequence[int]) -> tuple[tuple[int, ...] | None, int]:
        probe = np.asarray(tokens, dtype=np.intc)
        best, best_len = None, 0
        for key, arr in self._keys.items():
            n = common_prefix(arr, probe)
            if n > best_len:
                best, best_len = key, n
        return best, best_len

    def __contains__(self, tokens: Sequence[int]) -> bool:
        return self._longest(tokens)[0] is not None

    def __getitem__(self, tokens: Sequence[int]) -> Any:
        key, _ = self._longest(tokens)
        if key is None:
            raise KeyError("no cached state shares a prefix with the prompt")
        self._states.move_to_end(key)
        return self._states[key]

    def __setitem__(self, tokens: Sequence[int], state: Any) -> None:
        # The state holds its first `n_tokens` tokens (the prompt; see AccountingLlama), not the reply.
        key = tuple(int(t) for t in tokens[: int(getattr(state, "n_tokens", len(tokens)))])
        arr = np.asarray(key, dtype=np.intc)
        size = self.state_bytes(state)
        # A state whose tokens the new one extends can serve no prompt better than the new one.
        for old, old_arr in list(self._keys.items()):
            if len(old_arr) <= len(arr) and common_prefix(old_arr, arr) == len(old_arr):
                self._drop(old)
        if size > self.capacity_bytes:
            return  # larger than the whole cache: not kept
        self._states[key], self._keys[key], self._sizes[key] = state, arr, size
        while self.cache_size > self.capacity_bytes:
            self._drop(next(iter(self._states)))
            self.evictions += 1

    def _drop(self, key: tuple[int, ...]) -> None:
        del self._states[key], self._keys[key], self._sizes[key]


class GrammarCheckedSampler:
    """Samples as llama.cpp's own server does: the chain without the grammar first, the token kept
    when the grammar accepts it, else sampled again with the grammar applied to every candidate.

    llama-cpp-python puts the grammar first in the chain, so it checks all ~49k vocabulary entries
    against the grammar at every token; measured on SmolLM2 (2 cores, CPU time, median of 12
    replies): ~40 ms per decoded token so against ~31 with the check (the module's docstring).
    A tiny model's own pick is a valid JSON token nearly always,
    so the check costs one candidate, not 49k. Deterministic for a seed like the chain it replaces
    (replies with and without the prompt cache stay the same), though not the same draws.
    """

    def __init__(self, chain: Any, grammar: Any, n_vocab: int) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self.chain = chain  # llama-cpp-python LlamaSampler: penalties, top-k ... dist; no grammar
        self.grammar = grammar  # a LlamaSampler holding only the grammar
        self.n_vocab = n_vocab
        self._data = (llama_cpp.llama_token_data * n_vocab)()
        view = np.ctypeslib.as_array(self._data)
        self._ids = view["id"]
        self._logits = view["logit"]
        self._p = view["p"]
        self._arange = np.arange(n_vocab, dtype=self._ids.dtype)
        self._one = (llama_cpp.llama_token_data * 1)()
        self.resampled = 0  # tokens the grammar refused (a figure for benchmarks)

    def _candidates(self, ctx: Any, idx: int) -> Any:
        lib = self._lib
        logits = lib.llama_get_logits_ith(ctx.ctx, idx)
        self._logits[:] = np.ctypeslib.as_array(logits, shape=(self.n_vocab,))
        self._p[:] = 0.0
        self._ids[:] = self._arange  # the samplers reorder the candidates in place
        return lib.llama_token_data_array(
            data=ctypes.cast(self._data, lib.llama_token_data_p), size=self.n_vocab, selected=-1, sorted=False
        )

    def _pick(self, cur: Any) -> int:
        return int(cur.data[cur.selected].id)

    def sample(self, ctx: Any, idx: int = -1) -> int:
        lib = self._lib
        cur = self._candidates(ctx, idx)
        lib.llama_sampler_apply(self.chain.sampler, ctypes.byref(cur))
        token = self._pick(cur)
        self._one[0].id, self._one[0].logit, self._one[0].p = token, 1.0, 0.0
        one = lib.llama_token_data_array(
            data=ctypes.cast(self._one, lib.llama_token_data_p), size=1, selected=-1, sorted=False
        )
        lib.llama_sampler_apply(self.grammar.sampler, ctypes.byref(one))
        if not np.isfinite(one.data[0].logit):  # refused: the grammar over every candidate, then the chain
            self.resampled += 1
            cur = self._candidates(ctx, idx)
            lib.llama_sampler_apply(self.grammar.sampler, ctypes.byref(cur))
            lib.llama_sampler_apply(self.chain.sampler, ctypes.byref(cur))
            token = self._pick(cur)
        lib.llama_sampler_accept(self.grammar.sampler, token)
        lib.llama_sampler_accept(self.chain.sampler, token)
        return token

    def reset(self) -> None:
        self.chain.reset()
        self.grammar.reset()

    def close(self) -> None:
        self.chain.close()
        self.grammar.close()


def _accounting_llama_class(base: Any, *, lean_states: bool, checked_grammar: bool = True) -> Any:
    """A subclass of llama-cpp-python's `Llama` that counts the prompt tokens each completion reused
    and keeps only prompt tokens for reuse; with `lean_states`, the states it saves for the cache
    leave out the logits buffer; with `checked_grammar`, a grammar checks the sampled token instead
    of filtering the whole vocabulary first (GrammarCheckedSampler).

    Why only prompt tokens: llama.cpp computes a token's keys and values slightly differently when it
    decodes one token at a time (generation) than in a batch (prompt evaluation), so a prompt reusing
    the KV of a previous reply gets logits up to ~0.4 apart from a fresh evaluation and can sample a
    different reply. Dropping the reply's cells after each completion (its ~20-60 tokens are then
    evaluated in the next prompt's batch) keeps every reply bit-identical to a server without a
    cache for the same seed (checked: batch splits do not change the logits; single-token decodes do).
    """

    class AccountingLlama(base):  # type: ignore[misc]
        # Per completion: the context length when the first evaluation started (= tokens reused),
        # and the prompt's length.
        _rsi_reused: int | None = None
        _rsi_prompt_len: int = 0
        n_tokens: int  # llama-cpp-python's count of tokens in the context (annotation only)

        def _init_sampler(self, *args: Any, grammar: Any = None, **kwargs: Any) -> Any:
            if grammar is None or not checked_grammar:
                return super()._init_sampler(*args, grammar=grammar, **kwargs)
            chain = super()._init_sampler(*args, grammar=None, **kwargs)
            from llama_cpp import _internals

            only_grammar = _internals.LlamaSampler()
            only_grammar.add_grammar(self._model, grammar)
            return GrammarCheckedSampler(chain, only_grammar, int(self._n_vocab))

        def generate(self, tokens: Sequence[int], *args: Any, **kwargs: Any) -> Any:
            self._rsi_prompt_len = len(tokens)
            return super().generate(tokens, *args, **kwargs)

        def eval(self, tokens: Sequence[int]) -> None:
            if self._rsi_reused is None:
                self._rsi_reused = int(self.n_tokens)
            super().eval(tokens)

        def _rsi_keep_prompt_only(self) -> None:
            keep = min(int(self.n_tokens), self._rsi_prompt_len)
            if keep < self.n_tokens:
                self._ctx.kv_cache_seq_rm(-1, keep, -1)
                self.n_tokens = keep
            self._requires_eval = True  # the current logits are the last reply token's, not the prompt's

        def create_chat_completion(self, *args: Any, **kwargs: Any) -> Any:
            self._rsi_reused = None
            try:
                result = super().create_chat_completion(*args, **kwargs)
            finally:
                self._rsi_keep_prompt_only()
            if isinstance(result, dict) and isinstance(result.get("usage"), dict):
                prompt = int(result["usage"].get("prompt_tokens", 0))
                reused = prompt if self._rsi_reused is None else min(self._rsi_reused, prompt)
                LEDGER.put(str(result.get("id")), reused)
            return result

        if lean_states:

            def save_state(self) -> Any:
                import llama_cpp

                self._rsi_keep_prompt_only()
                size = llama_cpp.llama_state_get_size(self._ctx.ctx)
                buf = (ctypes.c_uint8 * int(size))()
                n_bytes = int(llama_cpp.llama_state_get_data(self._ctx.ctx, buf, size))
                if n_bytes > int(size):
                    raise RuntimeError("llama_state_get_data wrote more than its size")
                # One row of scores broadcasts over the rows `load_state` fills; they are never read
                # (the sampler reads llama.cpp's own logits, refreshed by re-evaluating >= 1 token).
                return llama_cpp.LlamaState(
                    input_ids=self.input_ids.copy(),
                    scores=np.zeros((1, self._n_vocab), dtype=np.single),
                    n_tokens=self.n_tokens,
                    llama_state=ctypes.string_at(buf, n_bytes),  # one copy
                    llama_state_size=n_bytes,
                    seed=self._seed,
                )

    return AccountingLlama


class _Ledger:
    """Tokens reused per completion id, from the model thread to the response middleware."""

    def __init__(self, bound: int = 256) -> None:
        self._by_id: OrderedDict[str, int] = OrderedDict()
        self._bound = bound

    def put(self, completion_id: str, reused: int) -> None:
        self._by_id[completion_id] = reused
        while len(self._by_id) > self._bound:
            self._by_id.popitem(last=False)

    def pop(self, completion_id: str) -> int | None:
        return self._by_id.pop(completion_id, None)


LEDGER = _Ledger()


def with_cached_tokens(body: bytes) -> bytes:
    """A chat completion's JSON with `usage.prompt_tokens_details.cached_tokens` added (OpenAI's field)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if not isinstance(data, dict) or not isinstance(data.get("usage"), dict):
        return body
    reused = LEDGER.pop(str(data.get("id")))
    if reused is None:
        return body
    data["usage"]["prompt_tokens_details"] = {"cached_tokens": reused}
    return json.dumps(data).encode()


class CachedTokensMiddleware:
    """Adds `cached_tokens` to non-streamed chat completions. The server's response model drops
    fields it does not declare, so the figure is added after it serialised the reply."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or scope.get("path") != "/v1/chat/completions":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def send_json(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                sent = dict(message.get("headers") or [])
                if not sent.get(b"content-type", b"").startswith(b"application/json"):
                    await send(message)  # streamed or an error page: untouched
                    return
                start = message
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = with_cached_tokens(b"".join(chunks))
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, send_json)


def kv_bytes_per_token(metadata: dict[str, str], type_bytes: float = 2.0) -> int:
    """Bytes one token takes in the KV cache (keys and values, every layer; F16 by default)."""
    arch = metadata.get("general.architecture", "llama")
    layers = int(metadata[f"{arch}.block_count"])
    embd = int(metadata[f"{arch}.embedding_length"])
    heads = int(metadata[f"{arch}.attention.head_count"])
    kv_heads = int(metadata.get(f"{arch}.attention.head_count_kv", heads))
    head_k = int(metadata.get(f"{arch}.attention.key_length", embd // heads))
    head_v = int(metadata.get(f"{arch}.attention.value_length", embd // heads))
    return int(layers * kv_heads * (head_k + head_v) * type_bytes)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m rsi_env.local_server", description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--model_alias", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--n_ctx", type=int, required=True)
    ap.add_argument("--n_threads", type=int, required=True)
    ap.add_argument(
        "--cache",
        choices=("prefix", "none", "ram", "disk"),
        default="prefix",
        help="prefix: PrefixCache (default); none; ram/disk: llama-cpp-python's own (for benchmarks)",
    )
    ap.add_argument(
        "--cache_states",
        type=float,
        default=4.0,
        help="cache capacity in full-context states (n_ctx tokens of KV each)",
    )
    ap.add_argument("--cache_dir", default=None, help="folder of the disk cache (--cache disk)")
    ap.add_argument(
        "--grammar",
        choices=("checked", "first"),
        default="checked",
        help="checked: the grammar checks the sampled token (default); first: llama-cpp-python's "
        "grammar over the whole vocabulary before sampling (for benchmarks)",
    )
    return ap


def build_app(args: argparse.Namespace) -> tuple[ASGIApp, int]:
    """llama-cpp-python's app for the model (loaded now) with the cache set up; and its capacity."""
    from llama_cpp import Llama, LlamaDiskCache, LlamaRAMCache
    from llama_cpp.server import app as server_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    app = server_app.create_app(
        server_settings=ServerSettings(host=args.host, port=args.port, interrupt_requests=False),
        model_settings=[
            ModelSettings(
                model=args.model,
                model_alias=args.model_alias,
                n_ctx=args.n_ctx,
                n_threads=args.n_threads,
                n_threads_batch=args.n_threads,
                verbose=False,
            )
        ],
    )
    proxy = server_app._llama_proxy  # holds the one model create_app loaded
    assert proxy is not None
    llama = proxy()
    llama.__class__ = _accounting_llama_class(
        Llama, lean_states=args.cache == "prefix", checked_grammar=args.grammar == "checked"
    )
    capacity = int(args.cache_states * args.n_ctx * kv_bytes_per_token(llama.metadata))
    if args.cache == "prefix":
        llama.set_cache(PrefixCache(capacity))  # type: ignore[arg-type]
    elif args.cache == "ram":
        llama.set_cache(LlamaRAMCache(capacity))
    elif args.cache == "disk":
        llama.set_cache(
            LlamaDiskCache(cache_dir=args.cache_dir or ".cache/llama_cache", capacity_bytes=capacity)
        )
    cache = llama.cache

    async def cache_stats() -> dict[str, Any]:
        """What the prompt cache holds (for benchmarks and tests)."""
        return {
            "kind": args.cache,
            "capacity_bytes": capacity,
            "bytes": int(cache.cache_size) if cache is not None else 0,
            "states": len(cache) if isinstance(cache, PrefixCache) else None,
            "evictions": cache.evictions if isinstance(cache, PrefixCache) else None,
        }

    app.add_api_route("/rsi/cache", cache_stats, methods=["GET"])
    return CachedTokensMiddleware(app), capacity


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    args = build_parser().parse_args(argv)
    app, capacity = build_app(args)
    print(f"rsi_env.local_server: cache={args.cache}, capacity {capacity} bytes", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
