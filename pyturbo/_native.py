"""Loads pyturbo's libllama/libggml through cffi (ABI mode) and bridges llama.cpp's log.

The only module that touches C (its FFI comes from pyturbo/_ffi_build.py). Everything
else uses `ffi`, `llama`, `ggml`, `ggml_cpu` from here and `captured_log()` to read
what llama.cpp said during a call.

The libraries are opened on first use, not on import: work that needs only a
GGUF header (pyturbo.memory.estimate, fit, info) never maps libllama.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import weakref
from collections import deque
from pathlib import Path

from . import _cdefs, _ffi_build
from .errors import BackendError, LibraryError, PyturboError

logger = logging.getLogger("pyturbo.llama_cpp")
# Quiet unless the application configures logging (the CLIs' --verbose does).
logging.getLogger("pyturbo").addHandler(logging.NullHandler())

LIB_DIR_ENV = "PYTURBO_LIB_DIR"


def library_dir() -> Path:
    """Where pyturbo's native libraries live.

    $PYTURBO_LIB_DIR if set; else this package's lib/; else, when this package is a
    source checkout (run from the repo root), the installed pyturbo's lib/, then
    the newest build tree's bin/.
    """
    override = os.environ.get(LIB_DIR_ENV)
    if override:
        return Path(override)
    package_dir = Path(__file__).resolve().parent
    candidates = [package_dir / "lib"]
    try:
        from importlib.metadata import PackageNotFoundError, distribution
        candidates.append(Path(distribution("pyturbo").locate_file("pyturbo/lib")))
    except PackageNotFoundError:
        pass
    # llama.cpp's CMake writes libraries next to the tools, in <build>/bin
    candidates += sorted(package_dir.parent.glob("build/*/bin"), key=lambda p: p.stat().st_mtime,
                         reverse=True)
    for candidate in candidates:
        if any(candidate.glob("libllama*")) or any(candidate.glob("llama.dll")):
            return candidate
    return candidates[0]


def _library_path(directory: Path, name: str) -> Path:
    if sys.platform == "darwin":
        candidates = sorted(directory.glob(f"lib{name}.[0-9]*.dylib")) + [directory / f"lib{name}.dylib"]
    elif sys.platform == "win32":
        candidates = [directory / f"{name}.dll", directory / f"lib{name}.dll"]
    else:
        # The plain name first: it is the file llama-cpp-python loads, so a process using
        # both loads one copy (an installed pyturbo/lib holds copies, not symlinks). The
        # others' DT_NEEDED SONAMEs still resolve to it: the loader matches SONAMEs.
        candidates = [directory / f"lib{name}.so"]
        candidates += sorted(directory.glob(f"lib{name}.so.[0-9]*"), key=lambda p: len(p.name))
    for path in candidates:
        if path.exists():
            return path
    raise LibraryError(
        f"pyturbo's native library lib{name} is missing from {directory}; "
        "reinstall pyturbo (pip install .) or set PYTURBO_LIB_DIR to a build's library folder")


def _interface():
    """The FFI of _cdefs.py's declarations: pyturbo._pyturbo_cffi, which `pip install` generated
    from them (nothing to parse on import); else, in a source checkout or when _cdefs.py has
    changed since, the declarations parsed now (pyturbo/_ffi_build.py)."""
    try:
        from . import _pyturbo_cffi as generated
    except ImportError:
        generated = None
    if getattr(generated, "DIGEST", None) == _ffi_build.digest(_cdefs):
        return generated.ffi
    return _ffi_build.parse(_cdefs)


ffi = _interface()
# What a library's missing symbol raises: AttributeError from a parsed FFI's libraries,
# ffi.error from a generated one's. _symbol makes both AttributeError.
_NO_SYMBOL = (AttributeError, getattr(ffi, "error", AttributeError))


def _symbol(library, name: str):
    try:
        return getattr(library, name)
    except _NO_SYMBOL as e:
        raise AttributeError(str(e)) from None


def _dlopen(name: str):
    path = _library_path(library_dir(), name)
    try:
        return ffi.dlopen(str(path))
    except OSError as e:
        raise LibraryError(f"could not load {path}: {e}") from e


_load_lock = threading.RLock()
_loaded: dict = {}


def _load_libraries() -> dict:
    """Open libggml-base, libggml-cpu, libggml and libllama once, then route llama.cpp's log to pyturbo."""
    with _load_lock:
        if not _loaded:
            # Load order follows the dependency chain so each dlopen finds its neighbours loaded.
            libraries = {name: _dlopen(name) for name in ("ggml-base", "ggml-cpu", "ggml", "llama")}
            if _has_library("ggml-rpc"):  # GGML_RPC: on in pyturbo's build, perhaps not in another
                libraries["ggml-rpc"] = _dlopen("ggml-rpc")
            _check_turbo_types(libraries["ggml-base"])
            _loaded.update(libraries)
            install_log_bridge()
            libraries["llama"].llama_backend_init()
        return _loaded


def _has_library(name: str) -> bool:
    try:
        _library_path(library_dir(), name)
    except LibraryError:
        return False
    return True


def _check_turbo_types(ggml_base) -> None:
    """Refuse a libggml without pyturbo's types: its type ids would mean other things."""
    try:
        _symbol(ggml_base, "dequantize_row_turbo3")
    except AttributeError:
        raise LibraryError(f"the libggml in {library_dir()} has no turbo cache types: it was not built "
                           "from pyturbo's patched llama.cpp (reinstall pyturbo or fix PYTURBO_LIB_DIR)") from None


class _Library:
    """A native library opened on first attribute access; each symbol is then cached as an
    attribute of its own, so later calls cost a plain attribute lookup."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, symbol: str):
        libraries = _load_libraries()
        if self._name not in libraries:
            raise LibraryError(f"this build of pyturbo has no lib{self._name} in {library_dir()}")
        value = _symbol(libraries[self._name], symbol)
        setattr(self, symbol, value)
        return value

    def __repr__(self) -> str:
        return f"<pyturbo native library {self._name}{'' if _loaded else ' (not loaded yet)'}>"


ggml = _Library("ggml-base")
ggml_cpu = _Library("ggml-cpu")
ggml_backend = _Library("ggml")  # the backend registry: devices
ggml_rpc = _Library("ggml-rpc")  # the RPC backend's server side (pyturbo.rpc_worker)
llama = _Library("llama")


def loaded() -> bool:
    """Whether the native libraries have been opened in this process."""
    return bool(_loaded)


_PY_LEVELS = {
    1: logging.DEBUG,    # GGML_LOG_LEVEL_DEBUG
    2: logging.INFO,     # GGML_LOG_LEVEL_INFO
    3: logging.WARNING,  # GGML_LOG_LEVEL_WARN
    4: logging.ERROR,    # GGML_LOG_LEVEL_ERROR
}
_LOG_LEVEL_CONT = 5


class _LogBridge:
    """Turns llama.cpp's log fragments into lines: to `logging`, to active captures, to a ring buffer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._partial = ""
        self._level = logging.INFO
        self.recent: deque[tuple[int, str]] = deque(maxlen=200)
        self.captures: list[list[tuple[int, str]]] = []
        self.forwards: list = []  # callables(level, text bytes): another binding's log handler

    def feed(self, level: int, text: str) -> None:
        for forward in self.forwards:
            forward(level, text.encode("utf-8"))
        with self._lock:
            if level != _LOG_LEVEL_CONT:
                if self._partial:
                    self._emit(self._partial)
                    self._partial = ""
                self._level = _PY_LEVELS.get(level, logging.INFO)
            *lines, self._partial = (self._partial + text).split("\n")
            for line in lines:
                self._emit(line)

    def _emit(self, line: str) -> None:
        line = line.rstrip()
        if not line:
            return
        record = (self._level, line)
        self.recent.append(record)
        for capture in self.captures:
            capture.append(record)
        logger.log(self._level, "%s", line)


_bridge = _LogBridge()


@ffi.callback("ggml_log_callback", onerror=lambda *exc: None)
def _log_callback(level, text, user_data):
    _bridge.feed(int(level), ffi.string(text).decode("utf-8", "replace"))


@contextlib.contextmanager
def captured_log():
    """Collect the (level, line) pairs llama.cpp logs inside the `with` block."""
    lines: list[tuple[int, str]] = []
    with _bridge._lock:
        _bridge.captures.append(lines)
    try:
        yield lines
    finally:
        with _bridge._lock:
            # by identity: nested captures may hold equal lists
            _bridge.captures = [c for c in _bridge.captures if c is not lines]


def last_problem(lines: list[tuple[int, str]]) -> str:
    """The most telling line of a failed call: its first error (the cause; later ones
    are its consequences), else its last warning."""
    for level, line in lines:
        if level >= logging.ERROR:
            return line
    for level, line in reversed(lines):
        if level >= logging.WARNING:
            return line
    return ""


def install_log_bridge(forward=None) -> None:
    """Make pyturbo's bridge llama.cpp's log handler again (one process has one), passing
    each fragment on to `forward(level, text)` too, e.g. llama-cpp-python's handler."""
    if forward is not None and forward not in _bridge.forwards:
        _bridge.forwards.append(forward)
    _load_libraries()["llama"].llama_log_set(_log_callback, ffi.NULL)


def c_string(value) -> str:
    return ffi.string(value).decode("utf-8", "replace") if value != ffi.NULL else ""


class NativeObject:
    """Owns one C handle: freed once, by close(), the end of a `with` block or garbage collection.

    Its `health` (a pyturbo.rpc.WorkerHealth, shared by a model and its contexts) is handed
    over with the handle: it knows what the handle lives on, frees it only while that is
    there, and once told of a failure keeps every object sharing it unfreed and unusable.
    """

    def _own(self, handle, free, health) -> None:
        self._handle = handle
        self.health = health
        # health.free, not a method of self: the finalizer must not keep self alive
        self._finalizer = weakref.finalize(self, health.free, free, handle)

    @property
    def handle(self):
        if self.health.failure:
            raise PyturboError(f"this {type(self).__name__} is unusable: {self.health.failure}")
        if self.closed:
            raise PyturboError(f"this {type(self).__name__} is closed")
        return self._handle

    def abandon(self, reason: str) -> None:
        """Never free this object nor the others that share its health (its backend is gone:
        freeing would talk to it) and refuse every later use with `reason`. Costs their memory
        until the process ends."""
        self.health.abandon(reason)

    def close(self) -> None:
        """Free the native object. Safe to call twice."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive or bool(self.health.failure)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


GUARD_ABORTED = -1000  # PYTURBO_GUARD_ABORTED, csrc/llama/turbo-guard.h


def guarded_call(context, what: str, function, *args) -> int:
    """function(*args, error, error_size), one of csrc/llama/turbo-guard.h's calls, and its result.

    Where ggml would have ended the process instead (a lost RPC worker, a failed assertion
    in this thread), the context's health is told (its model and all its contexts are
    abandoned) and BackendError raised, saying where (`what`) and ggml's message.
    """
    error = ffi.new("char[]", 1024)
    status = function(*args, error, len(error))
    if status != GUARD_ABORTED:
        return status
    message = re.sub(r"^\S+:\d+: ", "", c_string(error).strip())  # ggml's "file:line: " prefix
    raise BackendError(context.health.backend_failed(f"during {what}: {message}"))


def guarded_decode(context, batch) -> int:
    """llama_decode on context's handle, and the wait for its work: llama_decode's status."""
    return guarded_call(context, "llama_decode", llama.pyturbo_guarded_decode, context.handle, batch)


def guarded_memory_clear(context) -> None:
    """Empty context's cache, clearing its buffers (llama_memory_clear)."""
    guarded_call(context, "llama_memory_clear", llama.pyturbo_guarded_memory_clear, context.handle)
