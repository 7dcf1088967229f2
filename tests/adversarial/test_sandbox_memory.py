"""The sandbox's private tmpfs counts toward `--memory` (issue 17): files written to /tmp are RAM."""

from __future__ import annotations

import pytest

from rsi_env.sandbox import SandboxLimits, isolation_level, run_python

# Writes 12 files of 8 MB to /tmp (96 MB in all) and then waits: its own memory stays small.
FILL_TMP = """
import time
for i in range(12):
    with open(f"/tmp/f{i}", "wb") as f:
        f.write(b"x" * (8 << 20))
time.sleep(30)
print("done")
"""


def test_files_on_the_sandboxes_tmpfs_count_toward_its_memory_limit() -> None:
    if "private-tmp" not in isolation_level().features:
        pytest.skip("no private tmpfs on this machine (the sandbox's fallback mode)")
    limits = SandboxLimits(memory_mb=64, disk_mb=128, timeout_s=20)
    res = run_python(FILL_TMP, limits=limits)
    assert res.killed_by == "memory" and "done" not in res.stdout, res
