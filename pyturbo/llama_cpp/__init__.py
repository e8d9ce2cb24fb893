"""llama-cpp-python on pyturbo's library: existing Llama(...) code gets turbo caches.

    import pyturbo.llama_cpp as ptl          # before llama_cpp is first imported
    from llama_cpp import Llama

    llm = Llama(model_path="model.gguf", n_ctx=8192, **ptl.llama_kwargs(cache_k="q8_0", cache_v="turbo3"))

Importing this module points llama-cpp-python at pyturbo/lib (LLAMA_CPP_LIB_PATH),
checks that the installed llama-cpp-python is the release whose llama.h matches
pyturbo's pin, and that its ctypes structs have the sizes of pyturbo's build.
llama-cpp-python's own native build is not needed:

    CMAKE_ARGS="-DLLAMA_BUILD=OFF" pip install "llama-cpp-python==0.3.36"
"""

from __future__ import annotations

import atexit
import ctypes
import itertools
import os
import sys
from pathlib import Path

from .. import _native, layer_types
from ..cache_types import check_cache
from ..upstream.cache_table import GGML_TYPE_TURBO2, GGML_TYPE_TURBO3, GGML_TYPE_TURBO4
from ..cache_types import cache_type as _cache_type
from ..errors import PyturboError
from ..gguf import check_gguf_file, read_gguf_header
from ..upstream.geometry import model_geometry
from ..kv_transform import set_process_default

# llama-cpp-python's release that vendors the same llama.cpp commit as vendor/llama-cpp.pin.
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
INSTALL_HINT = f'CMAKE_ARGS="-DLLAMA_BUILD=OFF" pip install "llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"'
# ctypes structs of llama_cpp checked against pyturbo's declarations (same names in llama.h).
CHECKED_STRUCTS = ("llama_context_params", "llama_model_params", "llama_batch")

__all__ = ["enable", "cache_type", "llama_kwargs", "set_kv_transform", "LlamaCppError", "GGML_TYPE_TURBO2", "GGML_TYPE_TURBO3",
           "GGML_TYPE_TURBO4", "LLAMA_CPP_PYTHON_VERSION"]


class LlamaCppError(PyturboError):
    """llama-cpp-python cannot be pointed at pyturbo's library (wrong version, imported too early, ...)."""


def installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama_cpp_python")
    except PackageNotFoundError:
        raise LlamaCppError(f"llama-cpp-python is not installed; install it without its own native build: "
                            f"{INSTALL_HINT}") from None


def check_version() -> None:
    found = installed_version()
    if found != LLAMA_CPP_PYTHON_VERSION:
        raise LlamaCppError(
            f"llama-cpp-python {found} is installed, but pyturbo's library matches llama-cpp-python "
            f"{LLAMA_CPP_PYTHON_VERSION} (llama.cpp 0c1e57098); install that one: {INSTALL_HINT}")


def check_not_loaded_elsewhere(lib_dir: Path) -> None:
    """Refuse a llama_cpp that was imported with another libllama (two llama.cpp in one process)."""
    bindings = sys.modules.get("llama_cpp.llama_cpp")
    if bindings is None:
        return
    loaded = Path(getattr(bindings, "_base_path", "")).resolve()
    if loaded != lib_dir.resolve():
        raise LlamaCppError(
            f"llama_cpp was imported before pyturbo.llama_cpp and loaded its own library from {loaded}; "
            "import pyturbo.llama_cpp (or call pyturbo.llama_cpp.enable()) before anything imports llama_cpp")


def check_struct_sizes(bindings) -> None:
    for name in CHECKED_STRUCTS:
        theirs = ctypes.sizeof(getattr(bindings, name))
        ours = _native.ffi.sizeof(f"struct {name}")
        if theirs != ours:
            raise LlamaCppError(
                f"llama-cpp-python's {name} is {theirs} bytes but pyturbo's library uses {ours}: "
                f"the two were built from different llama.h; install {INSTALL_HINT}")


def forward_log_to(bindings, bindings_logger) -> None:
    """llama_cpp installs its own llama.cpp log handler on import; make pyturbo's bridge the
    handler again (pyturbo reads llama.cpp's errors and allocation reports from it) and
    pass every fragment on to llama_cpp's, so Llama(verbose=True) still prints.

    At exit llama_cpp's handler takes over again: Llama objects are freed during the
    interpreter's final teardown, when a call into pyturbo's cffi callback crashes.
    """
    handler = bindings_logger.llama_log_callback
    _native.install_log_bridge(lambda level, text: handler(level, text, None))
    atexit.register(bindings.llama_log_set, handler, ctypes.c_void_p(0))


def check_files_before_loading(package, bindings) -> None:
    """Make llama_cpp's llama_model_load_from_file run pyturbo's checks of the file first
    (pyturbo.gguf.check_gguf_file): llama.cpp aborts the whole process on some corrupt
    files (a GGML_ASSERT), where this raises InvalidModelError, a ValueError as
    llama-cpp-python's own "Failed to load model from file" is."""
    load = bindings.llama_model_load_from_file
    if getattr(load, "checks_file", False):
        return

    def load_checked(path_model, params):
        check_gguf_file(os.fsdecode(path_model))
        return load(path_model, params)

    load_checked.checks_file = True
    # Llama looks the function up in llama_cpp.llama_cpp at each call; code using the
    # low-level API may take it from the package.
    bindings.llama_model_load_from_file = package.llama_model_load_from_file = load_checked


_enabled = False


def enable() -> None:
    """Point llama-cpp-python at pyturbo's library and check it fits; safe to call twice."""
    global _enabled
    if _enabled:
        return
    lib_dir = _native.library_dir()
    check_version()
    check_not_loaded_elsewhere(lib_dir)
    os.environ["LLAMA_CPP_LIB_PATH"] = str(lib_dir)
    import llama_cpp  # noqa: F401  (loads the library now, from lib_dir)
    import llama_cpp._logger as bindings_logger
    import llama_cpp.llama_cpp as bindings

    check_struct_sizes(bindings)
    forward_log_to(bindings, bindings_logger)
    check_files_before_loading(llama_cpp, bindings)
    _enabled = True


def cache_type(name: str) -> int:
    """The ggml type id llama-cpp-python's type_k / type_v take, by cache type name ("turbo3" -> 44)."""
    return _cache_type(name).type_id


def llama_kwargs(cache_k: str = "f16", cache_v: str = "f16", flash_attn: "bool | None" = None, **kwargs) -> dict:
    """Keyword arguments for llama_cpp.Llama with cache types by name.

    flash_attn defaults to on whenever a cache is quantized (llama-cpp-python's
    default, off, cannot hold a quantized V cache); passing flash_attn=False with
    a quantized V is refused here rather than by llama.cpp's log line.

    cache_k / cache_v may name a type per layer ("turbo3,q8_0@0-1,q8_0@-2",
    pyturbo.layer_types): llama-cpp-python has no field for that, so the spec goes to
    $PYTURBO_CACHE_K_LAYERS / $PYTURBO_CACHE_V_LAYERS, which every Llama created from
    then on takes (a later call with one type per side clears them), and type_k /
    type_v get the type standing for the layers. Pass model_path here too to have the
    spec checked against the model's layers now rather than when Llama loads it.
    """
    k, v = (_side_types(spec, env, kwargs.get("model_path"))
            for spec, env in ((cache_k, layer_types.ENV_K), (cache_v, layer_types.ENV_V)))
    if flash_attn is None:
        flash_attn = any(t.quantized for t in k + v)
    for type_k, type_v in itertools.product(set(k), set(v)):
        check_cache(type_k, type_v, bool(flash_attn))
    return {**kwargs, "type_k": layer_types.standing_type(k).type_id,
            "type_v": layer_types.standing_type(v).type_id, "flash_attn": bool(flash_attn)}


# Layers assumed when llama_kwargs checks a per-layer spec without the model: enough for any
# model's layer numbers; the native library checks them against the real count.
UNKNOWN_N_LAYER = 1 << 16


def _side_types(spec, env: str, model_path) -> list:
    """The types a cache_k / cache_v value names, its per-layer spec put in (or its variable
    cleared from) the environment."""
    if not layer_types.is_layered(spec):
        os.environ.pop(env, None)
        return [_cache_type(spec)]
    if model_path:
        n_layer = model_geometry(read_gguf_header(model_path)).n_layer
    else:
        n_layer = len(spec) if isinstance(spec, (list, tuple)) else UNKNOWN_N_LAYER
    types = layer_types.parse(spec, n_layer)
    if isinstance(spec, (list, tuple)):
        spec = types.spec
    os.environ[env] = spec
    return list(types.types)


def set_kv_transform(value: str = "auto") -> None:
    """The exact K/V transforms (pyturbo.kv_transform) of every Llama created from now on:
    "auto" (the default: the calibrated key transform and value equalization where the
    model allows them) or "off". The same as setting PYTURBO_KV_TRANSFORM before starting
    the program."""
    set_process_default(value)


def started_as_server() -> bool:
    """Whether this process is `python -m pyturbo.llama_cpp.server` (which enables the
    library itself, so that a failure is one line on stderr rather than a traceback)."""
    argv = getattr(sys, "orig_argv", [])
    return "-m" in argv[:-1] and argv[argv.index("-m") + 1] == __name__ + ".server"


if not started_as_server():
    enable()
