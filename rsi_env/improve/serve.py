"""Serve: the loop's models behind OpenAI-compatible servers, and an agent profile for each.

- A GGUF is served by the embedded llama.cpp server (`local_model.LocalServer`): one server per
  distinct file, on its own loopback port, one request at a time, with llama-cpp-python's
  structured-output dialect. Several models (new, parent, original) play each other this way.
- With `--serve-cmd`, a command template starts each model's server instead (vLLM, SGLang, TGI,
  llama.cpp's `llama-server` …): `{checkpoint}` (transformers checkpoint directory), `{gguf}`,
  `{port}` and `{name}` are filled in; the loop starts it, waits until `GET /v1/models` answers and
  stops it (the whole process group) when done. Example:
  `vllm serve {checkpoint} --port {port} --served-model-name {name}`.

Each served model gets a profile file `DIR/profiles/<name>.yaml`: the base profile (persona,
sampling, history window) pointed at that server. Agents are named by those paths, so episode ids
stay the same across reruns (the port may change; the path does not).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import yaml
from pydantic import BaseModel

from ..agents.profiles import AgentProfile
from ..local_model import LocalServer, free_port, wait_until_serving


class ServeError(RuntimeError):
    """A model server did not come up."""


class ModelNode(BaseModel):
    """A model of the lineage, as files: what trains (checkpoint) and what llama.cpp serves (gguf)."""

    name: str  # "original", "iter-1", … (also the served model name)
    gguf: str | None = None
    checkpoint: str | None = None  # a transformers checkpoint directory; None until converted

    @property
    def file(self) -> str:
        """The file that identifies this model in the lineage."""
        path = self.gguf or self.checkpoint
        if path is None:
            raise ValueError(f"model {self.name} has no file")
        return path


class Server(Protocol):
    def start(self) -> str: ...  # base URL (…/v1)
    def stop(self) -> None: ...


class CommandServer:
    """A server started from a `--serve-cmd` template, checked with GET /v1/models, stopped with its
    process group."""

    def __init__(
        self, template: str, node: ModelNode, log_path: Path, startup_timeout_s: float = 600.0
    ) -> None:
        self.template = template
        self.node = node
        self.log_path = log_path
        self.startup_timeout_s = startup_timeout_s
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        fields = {"checkpoint": self.node.checkpoint or "", "gguf": self.node.gguf or "", "port": self.port,
                  "name": self.node.name}  # fmt: skip
        try:
            return shlex.split(self.template.format(**fields))
        except (KeyError, IndexError, ValueError) as exc:
            raise ServeError(
                f"--serve-cmd: cannot fill in {self.template!r} ({exc}); placeholders: "
                "{checkpoint} {gguf} {port} {name}"
            ) from None

    def start(self) -> str:
        self.port = free_port()
        cmd = self.command()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        base = f"http://127.0.0.1:{self.port}/v1"
        why = wait_until_serving(self._proc, base, self.startup_timeout_s, 0.5)
        if why is not None:
            self.stop()
            raise ServeError(f"{cmd[0]} {why}; see {self.log_path}")
        return base

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


class EmbeddedServer:
    """The embedded llama.cpp server on one GGUF file."""

    def __init__(self, node: ModelNode, log_path: Path, n_ctx: int | None = None) -> None:
        if node.gguf is None:
            raise ServeError(f"model {node.name} has no GGUF to serve; give --serve-cmd to serve checkpoints")
        kw: dict[str, Any] = {"n_ctx": n_ctx} if n_ctx else {}
        self.server = LocalServer(node.gguf, model_alias=node.name, log_path=log_path, **kw)

    def start(self) -> str:
        return self.server.start()

    def stop(self) -> None:
        self.server.stop()


class ServedModels:
    """Serve a set of models for the duration of a `with` block; `agent(name)` is the profile path
    to seat that model with."""

    def __init__(
        self,
        nodes: list[ModelNode],
        base_profile: AgentProfile,
        profile_dir: Path,
        *,
        serve_cmd: str | None = None,
        n_ctx: int | None = None,
        tag: str = "",
    ) -> None:
        self.nodes = {n.name: n for n in nodes}
        self.base = base_profile
        self.profile_dir = profile_dir
        self.serve_cmd = serve_cmd
        self.n_ctx = n_ctx
        self.tag = tag  # distinguishes profiles with other sampling (collection) from evaluation ones
        self._servers: list[Server] = []
        self._paths: dict[str, str] = {}

    def agent(self, name: str) -> str:
        return self._paths[name]

    def label(self, agent: str) -> str | None:
        """The model name behind a profile path (None for other agents)."""
        return next((n for n, p in self._paths.items() if p == agent), None)

    def __enter__(self) -> ServedModels:
        try:
            for node in self.nodes.values():
                log = self.profile_dir / "logs" / f"{node.name}.log"
                log.parent.mkdir(parents=True, exist_ok=True)
                server: Server = (
                    CommandServer(self.serve_cmd, node, log)
                    if self.serve_cmd
                    else EmbeddedServer(node, log, self.n_ctx)
                )
                self._servers.append(server)
                self._paths[node.name] = str(
                    self._write_profile(node, server.start(), embedded=not self.serve_cmd)
                )
        except BaseException:
            self.stop()
            raise
        return self

    def _write_profile(self, node: ModelNode, base_url: str, *, embedded: bool) -> Path:
        data = self.base.model_dump(mode="json", exclude_none=True)
        data.update(
            name=f"{node.name}{self.tag}",
            description=f"rsi_env.improve: model {node.name} ({node.file})",
            backend="endpoint",
            base_url=base_url,
            model=node.name,
            api_key_env="RSI_ENV_IMPROVE_API_KEY",  # loopback servers need no key
        )
        if embedded:
            # llama-cpp-python's server: its structured-output dialect, one request at a time, and
            # room for slow calls on a shared CPU (as the embedded default profile has).
            data.update(dialect="json_object", max_parallel=1, timeout_s=max(self.base.timeout_s, 300.0))
        path = self.profile_dir / f"{node.name}{self.tag}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path.resolve()

    def stop(self) -> None:
        for s in self._servers:
            s.stop()
        self._servers.clear()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
