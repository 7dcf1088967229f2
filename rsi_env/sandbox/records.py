"""What a sandbox run takes and gives: its limits, its result, the machine's isolation, its errors."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

Mode = Literal["auto", "namespaces", "plain"]
Launcher = Literal["namespaces", "plain"]


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the program): the run must not be scored."""


class SandboxLimits(BaseModel):
    """Resource limits for one run. Sizes are in MiB, times in seconds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    timeout_s: float = Field(10.0, gt=0, le=3600, allow_inf_nan=False, description="wall-clock limit")
    memory_mb: int = Field(
        512,
        ge=32,
        le=65536,
        description="RLIMIT_AS per process and cap on the tree's total memory (summed Pss)",
    )
    cpu_s: float | None = Field(
        None,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="RLIMIT_CPU per process; default: ceil(timeout_s) + 1",
    )
    nproc: int = Field(64, ge=1, le=4096, description="RLIMIT_NPROC (processes + threads)")
    fsize_mb: int = Field(16, ge=1, le=4096, description="RLIMIT_FSIZE: largest file the program may write")
    nofile: int = Field(256, ge=16, le=65536, description="RLIMIT_NOFILE")
    output_bytes: int = Field(64 * 1024, ge=1, le=64 * 1024 * 1024, description="cap on stdout and on stderr")
    disk_mb: int = Field(64, ge=1, le=4096, description="size of the private /sandbox and /tmp tmpfs")

    @property
    def effective_cpu_s(self) -> int:
        return math.ceil(self.cpu_s) if self.cpu_s is not None else math.ceil(self.timeout_s) + 1


class IsolationInfo(BaseModel):
    """What this machine provides, found by running a probe program through the sandbox."""

    model_config = ConfigDict(frozen=True)

    level: str
    features: tuple[str, ...]
    mode: Launcher
    interpreter: str
    interpreter_version: str
    notes: tuple[str, ...] = ()

    @property
    def network_isolated(self) -> bool:
        return "netns" in self.features


class SandboxResult(BaseModel):
    stdout: str
    stderr: str
    exit_code: int | None = Field(description="exit status; -N when killed by signal N (as subprocess does)")
    signal: str | None = Field(None, description="name of the signal that ended the program, if any")
    timed_out: bool
    killed_by: str | None = Field(
        None, description='"timeout", "memory", "cpu", "fsize", "signal:SIGxxx" or None'
    )
    duration_s: float
    cpu_s: float | None = Field(description="user+system CPU of the whole process tree")
    max_rss_mb: float | None = Field(description="largest resident set of any process in the tree")
    stdout_truncated: bool
    stderr_truncated: bool
    stdout_bytes: int = Field(description="bytes the program wrote to stdout, including discarded ones")
    stderr_bytes: int
    isolation: str
    isolation_features: list[str]
    interpreter: str
    workdir: str
    limits: SandboxLimits

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


def isolation_level_name(features: list[str] | tuple[str, ...]) -> str:
    """The isolation level a set of applied mechanisms amounts to (strongest first)."""
    f = set(features)
    if {"netns", "pidns", "mountns", "minimal-root", "kill-tree"} <= f:
        return "namespaces+uid" if "unique-uid" in f else "namespaces"
    if "unique-uid" in f and "kill-tree" in f:
        return "uid+rlimits"
    return "rlimits-only"
