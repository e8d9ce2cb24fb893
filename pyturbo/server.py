"""Serve a model over HTTP with llama.cpp's own server, turbo caches included.

    python -m pyturbo.server [MODEL] [--cache-k q8_0] [--cache-v turbo3] [-c 16384] [--parallel 4]
                             [--host 127.0.0.1] [--port 8080] [--rpc host:port,...] [llama-server flags]

This runs `llama-server` (continuous batching, parallel slots, an OpenAI-compatible API:
/health, /v1/chat/completions, /v1/completions, ...) built from pyturbo's patched
llama.cpp, after checking in Python what it would otherwise report only in its log: the
model file, the cache types (flash attention is turned on for a quantized V cache), and,
with pyturbo's memory planner, that the model with a context of -c tokens over --parallel
slots fits the memory there is (this machine's, plus that of the GPUs and RPC workers the
layers go to). A context that does not fit is refused before the server starts, with the
largest that would. Other flags go to llama-server as they are. Without MODEL it serves
pyturbo's default model. SIGINT or SIGTERM stops it cleanly (llama-server's own shutdown:
it finishes its requests and exits 0).

Which server: this one for throughput, many clients and RPC workers; llama-cpp-python's
(`python -m pyturbo.llama_cpp.server`) for its Python-side features (its settings file,
several models by alias, function-calling chat formats) with pyturbo's library.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from . import _native
from ._cli import ArgumentParser, add_cache_flags, add_kv_transform_flag, add_rpc_flags, positive_int, run_main
from .host import available_host_memory
from .assets import default_model
from .cache_types import cache_type, check_cache
from .devices import offload_devices
from .errors import ContextError, LibraryError, PyturboError
from .upstream.geometry import model_geometry
from .gguf import check_gguf_file, read_gguf_header
from .kv_transform import ENV as KV_TRANSFORM_ENV
from .kv_transform import env_value as kv_transform_env_value
from .memory import estimate, max_context
from .rpc import check_reachable, parse_endpoints
from .units import format_size, parse_size

PROG = "python -m pyturbo.server"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_PARALLEL = 4  # llama-server's when it picks the slot count itself


def server_binary() -> Path:
    """pyturbo's llama-server: next to the libraries in a build tree, else the package's bin/."""
    name = "llama-server.exe" if sys.platform == "win32" else "llama-server"
    library_dir = _native.library_dir()
    for candidate in (library_dir / name, library_dir.parent / "bin" / name):
        if candidate.is_file():
            return candidate
    raise LibraryError(f"this pyturbo was built without llama-server (no {name} next to {library_dir}); "
                       "reinstall with it: CMAKE_ARGS=\"-DPYTURBO_SERVER=ON\" pip install pyturbo")


def build_parser() -> ArgumentParser:
    # no abbreviations: a prefix of one of these flags may be a whole llama-server flag
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], allow_abbrev=False,
                            epilog="Flags not listed here go to llama-server unchanged.")
    parser.add_argument("-m", "--model", dest="model_flag", default=None, help="GGUF file (or give it first)")
    add_cache_flags(parser)
    parser.add_argument("-c", "--ctx-size", dest="n_ctx", type=int, default=0, metavar="N",
                        help="context of all slots together (default 0: the model's training context)")
    parser.add_argument("-np", "--parallel", dest="parallel", type=positive_int, default=DEFAULT_PARALLEL,
                        metavar="N", help=f"slots, each with n_ctx / N tokens (default {DEFAULT_PARALLEL})")
    parser.add_argument("-fa", "--flash-attn", dest="flash_attn", choices=["on", "off", "auto"], default=None,
                        help="flash attention (default: on for a quantized V cache, else auto)")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=positive_int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("-ngl", "--n-gpu-layers", "--gpu-layers", dest="n_gpu_layers", type=int, default=None,
                        metavar="N", help="layers to offload (default 0; all with --rpc)")
    add_rpc_flags(parser)
    add_kv_transform_flag(parser)
    parser.add_argument("--memory", default=None, metavar="SIZE",
                        help="plan against this much memory instead of what is free (e.g. 8GiB)")
    return parser


def split_model_argument(argv: "list[str]") -> "tuple[str | None, list[str]]":
    """MODEL is the first argument when it is not a flag; anything later may be a
    llama-server flag's value, which argparse would take for MODEL."""
    if argv and not argv[0].startswith("-"):
        return argv[0], argv[1:]
    return None, argv


def rpc_worker_memory(endpoints: "list[str]") -> int:
    """Free memory the workers report. Asked from a child process: a worker serves one
    client at a time, and a connection of this process would outlive the exec into
    llama-server and keep the worker from serving it."""
    if not endpoints:
        return 0
    probe = subprocess.run([sys.executable, "-c", _WORKER_MEMORY_PROBE, json.dumps(endpoints)],
                           capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        raise PyturboError(probe.stderr.strip().splitlines()[-1] if probe.stderr.strip()
                           else "could not ask the RPC workers for their memory")
    return int(probe.stdout)


_WORKER_MEMORY_PROBE = """
import json, sys
from pyturbo.devices import devices
from pyturbo.rpc import connect_workers
endpoints = json.loads(sys.argv[1])
connect_workers(endpoints)
print(sum(d.memory_free for d in devices() if d.endpoint in endpoints))
"""


def memory_budget(args, endpoints: "list[str]") -> "tuple[int | None, str]":
    """The bytes the model and its context may take, and where that figure comes from."""
    if args.memory is not None:
        return parse_size(args.memory), "--memory"
    host = available_host_memory()
    if host is None:
        return None, "unknown"
    offloaded = bool(endpoints) or (args.n_gpu_layers or 0) != 0
    if not offloaded:
        return host, "free on this machine"
    local = sum(d.memory_free for d in offload_devices())
    return host + local + rpc_worker_memory(endpoints), "free here, on the GPUs and the RPC workers"


def check_fits(path: Path, header, args, budget: "int | None", source: str, flash_attn: str) -> str:
    """ContextError unless the model (path, its GGUF header) with its context fits budget; the
    planner's figure otherwise."""
    n_ctx = args.n_ctx or model_geometry(header).n_ctx_train or 4096
    est = estimate(header, n_ctx, args.cache_k, args.cache_v, n_seq=args.parallel, flash_attn=flash_attn)
    if budget is None or est.total <= budget:
        return (f"{path.name}: {n_ctx} tokens over {args.parallel} slots with K {est.cache_k} / V {est.cache_v} "
                f"need about {format_size(est.total)} (KV cache {format_size(est.kv)})"
                + (f" of {format_size(budget)} {source}" if budget is not None else ""))
    fits, _ = max_context(header, budget, args.cache_k, args.cache_v, n_seq=args.parallel, flash_attn=flash_attn)
    advice = (f"-c {fits} fits" if fits >= 256 * args.parallel else "not even the smallest context fits")
    raise ContextError(
        f"{path.name} with {n_ctx} tokens over {args.parallel} slots (K {est.cache_k} / V {est.cache_v}) needs "
        f"about {format_size(est.total)} (weights {format_size(est.weights)}, KV cache {format_size(est.kv)}), "
        f"but {format_size(budget)} is {source}; {advice} (python -m pyturbo.fit {path} --memory SIZE "
        "compares cache types)")


def server_command(path: Path, args, flash_attn: str, extra: "list[str]") -> "list[str]":
    """llama-server's argument vector."""
    command = [str(server_binary()), "-m", str(path), "-c", str(args.n_ctx), "-np", str(args.parallel),
               "-ctk", args.cache_k, "-ctv", args.cache_v, "-fa", flash_attn, "--host", args.host,
               "--port", str(args.port)]
    if args.n_gpu_layers is not None or args.rpc:
        command += ["-ngl", str(args.n_gpu_layers if args.n_gpu_layers is not None else -1)]
    if args.rpc:
        command += ["--rpc", args.rpc]
    if args.tensor_split:
        command += ["-ts", ",".join(f"{x:g}" for x in args.tensor_split)]
    return command + extra


def prepare(argv: "list[str]") -> "tuple[list[str], dict, str]":
    """Check everything and return llama-server's argv, its environment and the line to print."""
    model, rest = split_model_argument(argv)
    args, extra = build_parser().parse_known_args(rest)
    if model and args.model_flag:
        raise PyturboError(f"two models: {model} and -m {args.model_flag}")
    path = Path(model or args.model_flag) if (model or args.model_flag) else default_model()
    check_gguf_file(path)
    k, v = cache_type(args.cache_k), cache_type(args.cache_v)
    args.cache_k, args.cache_v = k.name, v.name
    flash_attn = args.flash_attn or ("on" if v.quantized else "auto")
    header = read_gguf_header(path)
    check_cache(k, v, flash_attn, model_geometry(header))
    endpoints = parse_endpoints(args.rpc)
    for endpoint in endpoints:
        check_reachable(endpoint)
    args.rpc = ",".join(endpoints)
    budget, source = memory_budget(args, endpoints)
    plan_line = check_fits(path, header, args, budget, source, flash_attn)
    env = dict(os.environ)
    env[KV_TRANSFORM_ENV] = kv_transform_env_value(args.kv_transform)
    return server_command(path, args, flash_attn, extra), env, f"{plan_line}; http://{args.host}:{args.port}"


def main(argv: "list[str] | None" = None) -> int:
    command, env, plan_line = prepare(list(sys.argv[1:] if argv is None else argv))
    print(f"{PROG}: {plan_line}", file=sys.stderr, flush=True)
    if sys.platform == "win32":
        return subprocess.call(command, env=env)
    # llama-server takes this process's place: signals reach it directly and it shuts down as
    # it does on its own (SIGINT or SIGTERM: finish, free, exit 0).
    os.execve(command[0], command, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(run_main(PROG, main))
