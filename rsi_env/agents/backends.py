"""Agent backends: what a profile's `backend` names, and the `Chat` its agents and judges call.

A backend is a factory `(endpoint: Endpoint, **options) -> Chat`; usually a class whose `__init__`
takes them. `endpoint` is the profile's `Endpoint` (base_url, model, api_key_env, timeouts, ...);
`options` are the profile's `options:` mapping, passed as keyword arguments. Two are built in:

    local     the embedded model (`rsi_env.local_model`), started on the first call; the option
              `model_path: path/to/model.gguf` serves another GGUF (one server per distinct file)
    endpoint  any OpenAI-compatible server at the profile's `base_url`

Any other backend is named in the profile by import path, `backend: my_backends:EchoChat`: the module
is imported from `sys.path`, or else from the profile file's folder, so a module beside the profile
needs no installing. Code may also `register_backend("echo", EchoChat)` and profiles say `echo`.
Every name is checked when the profile is loaded: an unknown backend or option is one clear error
before anything runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import inspect
import re
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .. import llm, local_model
from ..llm import Chat, Endpoint, on_local_server

__all__ = [
    "BUILTIN_BACKENDS",
    "BackendError",
    "BackendFactory",
    "backend_names",
    "embedded_endpoint",
    "find_backend",
    "make_chat",
    "register_backend",
]

BackendFactory = Callable[..., Chat]
_NAME = re.compile(r"[A-Za-z_][\w-]*")
_IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


class BackendError(ValueError):
    """A backend that cannot be found or built; the message says which and why."""


async def embedded_endpoint(configured: Endpoint, model_path: str | None = None) -> Endpoint:
    """The endpoint of the embedded server for `model_path` (None: the shipped model; started on
    first use, in a thread: it takes ~1 s), with what the profile set explicitly on top."""
    server = await asyncio.to_thread(local_model.ensure_local_endpoint, model_path)
    return on_local_server(configured, server)


def local_chat(endpoint: Endpoint, model_path: str | None = None) -> llm.ChatClient:
    """The `local` backend: the embedded model, or the GGUF at `model_path` (relative to the working
    directory), found when the first call needs it."""
    if model_path is None:
        return llm.ChatClient(endpoint, resolver=embedded_endpoint)
    return llm.ChatClient(endpoint, resolver=functools.partial(embedded_endpoint, model_path=model_path))


def endpoint_chat(endpoint: Endpoint) -> llm.ChatClient:
    """The `endpoint` backend: an OpenAI-compatible server at `endpoint.base_url`."""
    return llm.ChatClient(endpoint)


BUILTIN_BACKENDS: dict[str, BackendFactory] = {"local": local_chat, "endpoint": endpoint_chat}
_registry: dict[str, BackendFactory] = dict(BUILTIN_BACKENDS)
_import_lock = threading.Lock()


def register_backend(name: str, factory: BackendFactory) -> None:
    """Make `name` a backend profiles can name. Replacing a built-in one is refused."""
    if not _NAME.fullmatch(name):
        raise BackendError(f"backend name {name!r}: use letters, digits, `_` and `-`")
    if name in BUILTIN_BACKENDS:
        raise BackendError(f"backend {name!r} is built in")
    if not callable(factory):
        raise BackendError(f"backend {name!r}: {factory!r} is not callable")
    _registry[name] = factory


def backend_names() -> list[str]:
    """Registered backend names (built-in ones first)."""
    return list(_registry)


def find_backend(name: str, *, near: Path | None = None) -> BackendFactory:
    """The factory a profile's `backend` names: a registered name, or `module:attribute` (looked up
    on sys.path, then in the folder `near`, the profile's)."""
    if name in _registry:
        return _registry[name]
    if not _IMPORT_PATH.fullmatch(name):
        raise BackendError(
            f"unknown backend {name!r}; registered: {', '.join(_registry)}; "
            "or an import path such as `my_module:MyChat`"
        )
    module_name, _, attr = name.partition(":")
    module = _import(module_name, near)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise BackendError(f"backend {name!r}: module `{module_name}` has no `{attr}`")
        obj = getattr(obj, part)
    if not callable(obj):
        raise BackendError(f"backend {name!r}: `{attr}` is not a class or function")
    return obj  # type: ignore[no-any-return]


def check_options(name: str, factory: BackendFactory, options: Mapping[str, Any]) -> None:
    """Raise BackendError unless `factory(endpoint, **options)` fits its signature."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return  # a builtin or C callable: nothing to check before calling it
    try:
        signature.bind(Endpoint(base_url="http://unused.invalid"), **options)
    except TypeError as e:
        given = ", ".join(options) or "none"
        raise BackendError(f"backend {name!r} does not take these options ({given}): {e}") from None


def make_chat(
    backend: str, endpoint: Endpoint, options: Mapping[str, Any] | None = None, *, near: Path | None = None
) -> Chat:
    """The `Chat` of `backend` for `endpoint`; BackendError if it cannot be built."""
    factory = find_backend(backend, near=near)
    options = dict(options or {})
    check_options(backend, factory, options)
    chat = factory(endpoint, **options)
    if not isinstance(chat, Chat):
        raise BackendError(
            f"backend {backend!r} made a {type(chat).__name__}, which lacks `async chat(...)` "
            "and `async aclose()` (the Chat protocol in rsi_env.llm)"
        )
    return chat


def _import(module_name: str, near: Path | None) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if near is None or e.name != module_name.split(".")[0]:
            raise BackendError(f"cannot import `{module_name}`: {e}") from None
    except Exception as e:  # the module's own error (syntax, a failed import inside it)
        raise BackendError(f"cannot import `{module_name}`: {type(e).__name__}: {e}") from None
    try:
        with _also_on_path(near):
            return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise BackendError(f"cannot import `{module_name}` (nor from {near}): {e}") from None
    except Exception as e:
        raise BackendError(f"cannot import `{module_name}`: {type(e).__name__}: {e}") from None


@contextlib.contextmanager
def _also_on_path(folder: Path) -> Iterator[None]:
    # Appended, not prepended: a file beside a profile never shadows an installed module; removed
    # again at once (the module stays imported).
    entry = str(folder.resolve())
    with _import_lock:
        sys.path.append(entry)
        importlib.invalidate_caches()
        try:
            yield
        finally:
            with contextlib.suppress(ValueError):
                sys.path.remove(entry)
