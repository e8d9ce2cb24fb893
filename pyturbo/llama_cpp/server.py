"""llama-cpp-python's OpenAI-compatible server on pyturbo's library, cache types by name.

    python -m pyturbo.llama_cpp.server --model model.gguf --type_k q8_0 --type_v turbo3 --port 8000

Every flag of `python -m llama_cpp.server` works as there; --type_k and
--type_v also take cache type names, and flash attention is switched on when a
cache is quantized unless --flash_attn is given.
"""

from __future__ import annotations

import sys

from .._cli import run_main
from ..cache_types import cache_type
from . import enable, llama_kwargs

PROG = "python -m pyturbo.llama_cpp.server"
CACHE_FLAGS = ("--type_k", "--type_v")


def flag_values(argv: list[str]) -> dict[str, str]:
    """{flag: value} for '--flag value' and '--flag=value' forms (the last one wins)."""
    values = {}
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name.startswith("--") and eq:
            values[name] = value
        elif arg.startswith("--") and i + 1 < len(argv):
            values[arg] = argv[i + 1]
    return values


def replace_flag(argv: list[str], flag: str, value: str) -> list[str]:
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == flag and i + 1 < len(argv):
            out += [flag, value]
            skip = True
        elif arg.startswith(flag + "="):
            out.append(f"{flag}={value}")
        else:
            out.append(arg)
    return out


def translate_argv(argv: list[str]) -> list[str]:
    """llama_cpp.server's argv with cache type names turned into ggml type ids and
    flash attention on for quantized caches."""
    values = flag_values(argv)
    names = {}
    for flag in CACHE_FLAGS:
        if flag in values:
            value = values[flag]
            ctype = cache_type(int(value) if value.lstrip("-").isdigit() else value)
            names[flag] = ctype.name
            argv = replace_flag(argv, flag, str(ctype.type_id))
    flash_attn = None
    if "--flash_attn" in values:
        flash_attn = values["--flash_attn"].strip().lower() in ("1", "true", "yes", "on")
    kwargs = llama_kwargs(names.get("--type_k", "f16"), names.get("--type_v", "f16"), flash_attn)
    if flash_attn is None and kwargs["flash_attn"]:
        argv = argv + ["--flash_attn", "true"]
    return argv


def main(argv: "list[str] | None" = None) -> int:
    argv = translate_argv(list(sys.argv[1:] if argv is None else argv))
    enable()
    from llama_cpp.server.__main__ import main as serve

    sys.argv = [PROG] + argv
    serve()
    return 0


if __name__ == "__main__":
    sys.exit(run_main(PROG, main))
