"""Serve this machine's backend to pyturbo clients over ggml's RPC protocol.

    python -m pyturbo.rpc_worker [--host 127.0.0.1] [--port 50052] [--threads N] [--mem 8GiB]
                                 [--device CUDA0]

A client (`Model(path, rpc=["host:port"])`, `--rpc host:port` on run, bench and server)
then puts layers and their KV caches here. The worker serves one client at a time,
the next when that one disconnects. It offers its accelerators (CUDA, Metal) where this
build has them, else the CPU; --mem sets the memory it reports to clients, which split
layers by it (default: what the device reports). It binds to 127.0.0.1 unless --host
says otherwise: the protocol is unauthenticated (see pyturbo.rpc). Ctrl-C or SIGTERM
stops it.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

from . import _native
from ._cli import ArgumentParser, add_verbose_flag, positive_int, run_main, setup_logging, str_list
from .devices import Device, devices
from .errors import DeviceError, RPCError
from .rpc import DEFAULT_HOST, DEFAULT_PORT, UNAUTHENTICATED_WARNING, is_loopback
from .units import format_size, parse_size

PROG = "python -m pyturbo.rpc_worker"


def served_devices(names: "list[str] | None" = None) -> list[Device]:
    """The named devices, else every GPU this build sees, else the CPU (as ggml's rpc-server picks)."""
    known = [d for d in devices() if not d.endpoint]  # never re-serve another worker's devices
    if names:
        by_name = {d.name: d for d in known}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise DeviceError(f"no device {', '.join(missing)} here; devices: {', '.join(by_name) or 'none'}")
        return [by_name[n] for n in names]
    gpus = [d for d in known if d.kind in ("gpu", "igpu")]
    return gpus or [d for d in known if d.kind == "cpu"]


def check_port_free(host: str, port: int) -> None:
    """RPCError if host:port cannot be bound (taken, or not an address of this machine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # as ggml's server socket does, so a port in TIME_WAIT after a restart is not "taken"
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            raise RPCError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def device_handles(served: list[Device], memory: "int | None"):
    """ggml_backend_dev_t array of the served devices; with memory, each reports that much."""
    handles = []
    for device in served:
        handle = _native.ggml_backend.ggml_backend_dev_by_name(device.name.encode())
        if memory is not None:
            handle = _native.ggml_rpc.pyturbo_rpc_device_with_memory(handle, memory)
        handles.append(handle)
    return _native.ffi.new("ggml_backend_dev_t[]", handles)


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, n_threads: "int | None" = None,
          memory: "int | str | None" = None, device_names: "list[str] | None" = None) -> None:
    """Serve until SIGINT or SIGTERM (then the process exits with status 0).

    Raises RPCError when the port cannot be bound, DeviceError for an unknown device.
    """
    if ":" in host:
        raise RPCError(f"--host {host}: ggml's RPC transport is IPv4 only")
    memory_bytes = parse_size(memory) if memory is not None else None
    served = served_devices(device_names)
    check_port_free(host, port)
    endpoint = f"{host}:{port}"
    if not is_loopback(host):
        print(f"{PROG}: warning: {UNAUTHENTICATED_WARNING.format(endpoint=endpoint)}", file=sys.stderr)
    handles = device_handles(served, memory_bytes)
    threads = n_threads or os.cpu_count() or 1
    offered = format_size(memory_bytes) if memory_bytes else "all their"
    print(f"{PROG}: serving {', '.join(d.name for d in served)} ({offered} memory, {threads} threads) "
          f"on {endpoint}; Ctrl-C stops", file=sys.stderr, flush=True)

    def serve_forever() -> None:
        # returns only when the server socket could not be set up (ggml prints why)
        _native.ggml_rpc.ggml_backend_rpc_start_server(endpoint.encode(), _native.ffi.NULL, threads,
                                                       len(served), handles)

    server = threading.Thread(target=serve_forever, name="rpc-server", daemon=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    while server.is_alive() and not stop.wait(0.2):
        pass
    if not stop.is_set():
        raise RPCError(f"the RPC server on {endpoint} stopped: it could not listen there")
    print(f"{PROG}: stopped", file=sys.stderr, flush=True)
    sys.stdout.flush()
    # The server thread is blocked in C (accept or a client's request) and has no stop
    # call; ending the process closes its sockets, which clients see as the worker gone.
    os._exit(0)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="Serve this machine's backend to pyturbo clients "
                                                   "(ggml RPC): they put layers and KV caches here.")
    parser.add_argument("-H", "--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}, this machine only; the protocol "
                             "is unauthenticated, so serve other machines only on a network you trust)")
    parser.add_argument("-p", "--port", type=positive_int, default=DEFAULT_PORT,
                        help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("-t", "--threads", type=positive_int, default=None,
                        help="CPU threads for the computations (default: all)")
    parser.add_argument("--mem", default=None, metavar="SIZE",
                        help="memory to offer clients, e.g. 8GiB (default: what the device reports); "
                             "llama.cpp splits layers over workers by it")
    parser.add_argument("-d", "--device", type=str_list, default=None, metavar="NAME[,NAME]",
                        help="devices to serve (default: the GPUs, else the CPU)")
    add_verbose_flag(parser)
    return parser


def main(argv: "list[str] | None" = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.port > 65535:
        raise RPCError(f"--port {args.port}: ports go up to 65535")
    serve(args.host, args.port, args.threads, args.mem, args.device)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(PROG, main))
