"""The trusted side of one validator × solution check, run as the sandbox's program (standard library only).

It finds ``validator.py``, ``solution.py`` and ``solution_server.py`` beside it; stdin holds a nonce line and
the entry point's name. It loads the validator here, starts ``solution_server.py`` as a separate process
for the solution, hands ``validate`` a proxy that forwards each call there, and writes one line to stdout:
the nonce followed by the verdict as JSON. Why a separate process: in one interpreter a solution can
patch ``os.write``, walk the stack or read the nonce and forge its own verdict. Here it can only answer
calls:
- this process makes itself non-dumpable before the solution starts, so the solution's process (same
  uid) can open none of its ``/proc/PID/fd``, ``mem`` or ``environ`` and cannot ptrace it;
- the validator's source is read and deleted before the solution starts, so it cannot read the checks;
- what comes back is unpickled with a safelist of plain types, so crafted bytes cannot run code here.
"""

import builtins
import collections
import ctypes
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import traceback
import types

HERE = os.path.dirname(os.path.abspath(__file__))
RECORD, NAMEDTUPLE = "\x00rsi-record", "\x00rsi-namedtuple"  # as in solution_server.py
_SAFE = {
    "builtins": {"set", "frozenset", "complex", "bytearray", "range", "slice", "list", "dict", "int",
                 "float", "str", "tuple", "bool", "bytes"},
    "datetime": {"date", "time", "datetime", "timedelta", "timezone"},
    "decimal": {"Decimal"},
    "fractions": {"Fraction"},
    "collections": {"OrderedDict", "Counter", "defaultdict", "deque"},
}  # fmt: skip


class SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if name in _SAFE.get(module, ()):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} may not come from the solution's process")


class Record:
    """An object the solution returned (dataclass or plain instance), as its class name and attributes."""

    def __init__(self, **attrs):
        self.__dict__.update(attrs)

    def __eq__(self, other):
        return type(other).__name__ == type(self).__name__ and vars(other) == vars(self)

    def __hash__(self):
        return hash(type(self).__name__)

    def __repr__(self):
        inner = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({inner})"


def from_wire(value):
    if type(value) is tuple and len(value) == 3 and value[0] == RECORD:
        cls = type(str(value[1]), (Record,), {})
        return cls(**{str(k): from_wire(v) for k, v in dict(value[2]).items()})
    if type(value) is tuple and len(value) == 4 and value[0] == NAMEDTUPLE:
        cls = collections.namedtuple(str(value[1]), [str(f) for f in value[2]], rename=True)
        return cls(*[from_wire(v) for v in value[3]])
    if type(value) in (list, tuple, set, frozenset):
        return type(value)(from_wire(v) for v in value)
    if type(value) is collections.deque:
        return collections.deque((from_wire(v) for v in value), value.maxlen)
    if isinstance(value, dict):
        out = (
            type(value)()
            if type(value) is not collections.defaultdict
            else collections.defaultdict(value.default_factory)
        )
        for k, v in value.items():  # item by item: Counter.update would count the pairs instead
            out[from_wire(k)] = from_wire(v)
        return out
    return value


class SolutionFault(Exception):
    """Marks an exception as the solution's doing (it raised, died, or returned something unusable)."""


def _relayed(names, message):
    """An exception of the solution's class name, deriving from the nearest builtin exception in its MRO,
    so the validator's ``except ValueError`` still catches a solution's ``ParseError(ValueError)``."""
    found = (getattr(builtins, n, None) for n in names)
    base = next((c for c in found if isinstance(c, type) and issubclass(c, Exception)), Exception)
    name = str(names[0]) if names else "Exception"
    cls = base if name == base.__name__ else type(name, (base,), {"__module__": "solution"})
    exc = cls(message)
    exc.rsi_fault = "solution"
    return exc


class Solution:
    """The solution's process and a callable proxy for its entry point."""

    def __init__(self, entry):
        self.entry = self.__name__ = self.__qualname__ = entry  # validators may print fn.__name__
        self.proc = subprocess.Popen(
            [sys.executable, "-s", "-P", os.path.join(HERE, "solution_server.py"), entry],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
        )  # fmt: skip
        self.dead = ""

    def receive(self):
        head = self.proc.stdout.read(4)
        if len(head) < 4:
            try:
                code = self.proc.wait(timeout=2)  # it closed its end: normally it has exited
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait()
            self.dead = f"the solution's process ended (exit code {code})"
            raise SolutionFault(self.dead)
        try:
            data = self.proc.stdout.read(struct.unpack(">I", head)[0])
            return SafeUnpickler(io.BytesIO(data)).load()
        except Exception as exc:
            raise SolutionFault(f"unreadable answer from the solution's process: {exc}") from None

    def start(self):
        message = self.receive()
        if message[0] != "ready":
            raise SolutionFault(str(message[1]) if len(message) > 1 else "the solution did not load")

    def __call__(self, *args, **kwargs):
        if self.dead:
            raise SolutionFault(self.dead)
        try:
            data = pickle.dumps((args, kwargs), protocol=4)
        except Exception as exc:
            what = f"validate passed {self.entry} something that cannot be sent to another process: {exc}"
            error = TypeError(what)
            error.rsi_fault = "validator"
            raise error from None
        self.proc.stdin.write(struct.pack(">I", len(data)) + data)
        self.proc.stdin.flush()
        message = self.receive()
        if message[0] == "raise":
            raise _relayed(list(message[1]), str(message[2]))
        if message[0] == "bad_arguments":  # e.g. an instance of a class only validator.py defines
            error = TypeError(f"validate passed {self.entry} arguments its process cannot load: {message[1]}")
            error.rsi_fault = "validator"
            raise error
        _, value, mutated = message
        if mutated is not None:
            _copy_back(args, from_wire(mutated))  # in-place changes the solution made to its arguments
        return from_wire(value)


def _copy_back(args, after):
    for before, new in zip(args, after, strict=False):
        if type(before) is list and type(new) is list:
            before[:] = new
        elif type(before) is dict and isinstance(new, dict):
            before.clear()
            before.update(new)
        elif type(before) is set and type(new) is set:
            before.clear()
            before.update(new)
        elif type(before) is bytearray and type(new) is bytearray:
            before[:] = new


def _describe(exc):
    return f"{type(exc).__name__}: {exc}"[:300]


def _fault(exc):
    """Whose doing an exception out of ``validate`` is: the validator's own frames, the solution's answer."""
    seen = exc
    while seen is not None:
        fault = getattr(seen, "rsi_fault", None) or ("solution" if isinstance(seen, SolutionFault) else None)
        if fault:
            return fault
        seen = seen.__context__
    frames = [os.path.basename(f.f_code.co_filename) for f, _ in traceback.walk_tb(exc.__traceback__)]
    return "validator" if "validator.py" in frames else "harness"


def _checks(value):
    """(checks, score) from what validate returned; (None, None) when it is not a verdict."""
    if isinstance(value, bool):
        return [value], None
    if isinstance(value, (int, float)):
        return (None, float(value)) if 0 <= value <= 1 else (None, None)
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)) and value:
        out = []
        for item in value:
            if isinstance(item, (tuple, list)) and item and isinstance(item[-1], (bool, int)):
                item = item[-1]  # ("name", passed) pairs
            if isinstance(item, (bool, int, float)):
                out.append(bool(item))
            else:
                return None, None
        return out, None
    return None, None


def load_validator():
    with open("validator.py", encoding="utf-8") as f:
        source = f.read()
    os.remove("validator.py")  # the solution must not read the checks
    module = types.ModuleType("validator")
    module.__file__ = "validator.py"
    sys.modules["validator"] = module
    exec(compile(source, "validator.py", "exec"), module.__dict__)
    return module


def verdict(entry):
    try:
        validate = getattr(load_validator(), "validate", None)
        if not callable(validate):
            raise NameError("validator.py defines no function validate(fn)")
    except BaseException as exc:
        return dict(phase="validator", score=None, error=_describe(exc), error_in="validator")
    solution = Solution(entry)
    try:
        solution.start()
    except BaseException as exc:
        return dict(phase="solution", score=0.0, error=_describe(exc), error_in="solution")
    try:
        value = validate(solution)
    except BaseException as exc:
        fault = _fault(exc)
        # A validator that cannot even call the function is broken: the pair says nothing about the solution.
        score = None if getattr(exc, "rsi_fault", None) == "validator" else 0.0
        return dict(phase="validate", score=score, error=_describe(exc), error_in=fault)
    try:
        checks, score = _checks(value)
    except BaseException:
        checks, score = None, None
    if checks is None and score is None:
        what = f"validate returned {type(value).__name__}, not checks"
        return dict(phase="verdict", score=None, error=what, error_in="validator")
    if checks is not None:
        score = sum(checks) / len(checks)
    return dict(phase="done", score=score, checks=checks or [], error="", error_in="")


def main():
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 2000))  # values nested as deep as the server sends
    nonce, entry = sys.stdin.readline().strip(), sys.stdin.readline().strip()
    # PR_SET_DUMPABLE 0: processes of our uid (the solution's) lose access to our /proc files and ptrace.
    if ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0)")
    verdict_fd = os.dup(1)
    os.set_inheritable(verdict_fd, False)
    os.dup2(2, 1)  # the validator's own prints go to stderr: stdout carries only the verdict line
    line = nonce + json.dumps(verdict(entry)) + "\n"
    os.write(verdict_fd, line.encode())
    os._exit(0)  # no atexit hooks or lingering threads of the programs after the verdict


main()
