"""Runs a model-written solution in its own process and answers calls to its entry point.

Started by ``check_harness.py`` inside the sandbox (standard library only; ``python -s -P THIS ENTRY``).
It is a separate process so that the solution shares no memory, file descriptors or modules with the
validator and the verdict: whatever the solution patches or prints stays here.

Protocol (length-prefixed pickles on the inherited stdin/stdout, which are moved off fds 0 and 1 first
so the solution's own prints and reads cannot touch them):
    -> ("ready",) | ("load_error", message)
    <- (args, kwargs)
    -> ("ok", value, args) | ("raise", [exception class names along the MRO], message)
Values leave this process as plain data only (see ``to_wire``); the harness unpickles them with a
safelist, so bytes a cheating solution writes here itself cannot run code there.
"""

import collections
import dataclasses
import datetime
import decimal
import fractions
import importlib.util
import os
import pickle
import struct
import sys

RECORD, NAMEDTUPLE = "\x00rsi-record", "\x00rsi-namedtuple"  # markers the harness rebuilds
_PLAIN = (type(None), bool, int, float, complex, str, bytes, bytearray, range)
_STDLIB = (datetime.date, datetime.time, datetime.timedelta, datetime.timezone, decimal.Decimal,
           fractions.Fraction)  # fmt: skip
_FACTORIES = (int, float, str, list, dict, set)  # defaultdict factories the harness may rebuild
_MAX_DEPTH = 500  # deep enough for tries and trees; the recursion limit is raised to match


def to_wire(value, depth=0):
    """The value as builtins and safelisted stdlib types only; objects become marked records."""
    if depth > _MAX_DEPTH:
        raise TypeError("the returned value is nested too deeply (or contains itself)")
    down = depth + 1
    if type(value) in _PLAIN or isinstance(value, _STDLIB):
        return value
    if type(value) in (list, tuple, set, frozenset):
        return type(value)(to_wire(v, down) for v in value)
    if type(value) is dict or type(value) is collections.OrderedDict:
        return type(value)((to_wire(k, down), to_wire(v, down)) for k, v in value.items())
    if type(value) is collections.Counter:
        return collections.Counter({to_wire(k, down): v for k, v in value.items()})
    if type(value) is collections.defaultdict:
        factory = value.default_factory if value.default_factory in _FACTORIES else None
        items = {to_wire(k, down): to_wire(v, down) for k, v in value.items()}
        return collections.defaultdict(factory, items)
    if type(value) is collections.deque:
        return collections.deque((to_wire(v, down) for v in value), value.maxlen)
    if isinstance(value, tuple) and hasattr(type(value), "_fields"):
        fields = list(type(value)._fields)
        return (NAMEDTUPLE, type(value).__name__, fields, [to_wire(v, down) for v in value])
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return (RECORD, type(value).__name__, {k: to_wire(v, down) for k, v in fields.items()})
    if isinstance(value, BaseException):
        return (RECORD, type(value).__name__, {"args": to_wire(value.args, down)})
    if hasattr(value, "__next__") or type(value).__name__ in (
        "generator",
        "dict_keys",
        "dict_values",
        "dict_items",
        "map",
        "filter",
        "zip",
    ):
        return [to_wire(v, down) for v in value]  # iterators and views: what the caller would list()
    if hasattr(value, "__dict__") and not callable(value):
        return (RECORD, type(value).__name__, {k: to_wire(v, down) for k, v in vars(value).items()})
    raise TypeError(f"the solution returned a {type(value).__name__}, which cannot leave its process")


def main():
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 4 * _MAX_DEPTH))
    entry = sys.argv[1]
    proto_in, proto_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the solution reading stdin gets nothing, not the protocol
    os.dup2(2, 1)  # the solution's prints go to stderr
    inp, out = os.fdopen(proto_in, "rb"), os.fdopen(proto_out, "wb")

    def send(message):
        data = pickle.dumps(message, protocol=4)
        out.write(struct.pack(">I", len(data)) + data)
        out.flush()

    try:
        spec = importlib.util.spec_from_file_location("solution", "solution.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["solution"] = module
        spec.loader.exec_module(module)
        fn = getattr(module, entry, None)
        if not callable(fn):
            raise NameError(f"solution.py defines no function {entry}")
    except BaseException as exc:
        send(("load_error", f"{type(exc).__name__}: {exc}"[:300]))
        return
    send(("ready",))
    while True:
        head = inp.read(4)
        if len(head) < 4:
            return
        try:
            args, kwargs = pickle.loads(inp.read(struct.unpack(">I", head)[0]))
        except Exception as exc:  # the validator's doing: an object of a class this process cannot import
            send(("bad_arguments", f"{type(exc).__name__}: {exc}"[:300]))
            continue
        try:  # listing a returned generator runs solution code too: its errors are the solution's
            value = to_wire(fn(*args, **kwargs))
        except BaseException as exc:
            send(("raise", [c.__name__ for c in type(exc).__mro__], str(exc)[:1000]))
            continue
        try:
            mutated = to_wire(args)
        except BaseException:
            mutated = None  # the caller keeps its arguments as they were
        send(("ok", value, mutated))


main()
