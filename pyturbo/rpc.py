"""RPC: a model's layers and their KV caches on worker processes, through ggml's RPC backend.

A worker (`python -m pyturbo.rpc_worker`) serves its machine's backend (the CPU here;
CUDA or Metal where built) with `ggml_backend_rpc_start_server`. A client names the
workers (`Model(path, rpc=["10.0.0.2:50052", ...])`, `--rpc` on run, bench and server):
each worker's devices become ggml devices ("RPC0", "RPC1", ...; their description is the
endpoint) and llama.cpp splits the offloaded layers over them as over GPUs, by their free
memory or by `tensor_split`. The workers run the same patched ggml, so turbo caches and
their flash attention run where their layers are.

The protocol has no authentication and no encryption: whoever reaches a worker's port can
make it allocate memory and compute. Workers bind to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
import time
from typing import Sequence

from . import _native
from .errors import BackendError, RPCError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 50052
# How long a client waits for a worker to accept a connection before calling it unreachable.
CONNECT_TIMEOUT_S = 5.0
# A worker killed mid-call breaks its connection before its listening socket is closed (the
# kernel closes a dying process's sockets one by one), so for a moment a new connection is
# still accepted: after a failed call, look again for this long before blaming the backend.
EXIT_SETTLE_S = 2.0

UNAUTHENTICATED_WARNING = (
    "the RPC protocol is unauthenticated and unencrypted: anyone who can reach {endpoint} can "
    "allocate this machine's memory and run computations on it; serve only on a network you trust")


def parse_endpoint(text: str) -> str:
    """A worker's "host:port", checked and normalized (surrounding spaces dropped).

    Raises RPCError for anything else ("host", "host:0", ":50052", "host:port:x").
    """
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise RPCError(f"RPC worker {text.strip()!r} is not host:port (e.g. 127.0.0.1:{DEFAULT_PORT})")
    if ":" in host:
        # ggml's RPC transport is IPv4 (AF_INET) only
        raise RPCError(f"RPC worker {text.strip()!r}: IPv6 addresses are not supported by ggml's RPC transport")
    return f"{host}:{int(port)}"


def parse_endpoints(value: "str | Sequence[str] | None") -> list[str]:
    """Workers from "host:port,host:port" (llama.cpp's --rpc form) or a list of them; no duplicates."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    endpoints = [parse_endpoint(item) for item in items if str(item).strip()]
    duplicates = sorted({e for e in endpoints if endpoints.count(e) > 1})
    if duplicates:
        raise RPCError(f"RPC worker named twice: {', '.join(duplicates)}")
    return endpoints


def is_loopback(host: str) -> bool:
    """Whether host is this machine only (127.0.0.0/8 or "localhost")."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_reachable(endpoint: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """RPCError unless something accepts TCP connections at endpoint within timeout.

    ggml's own connect has no timeout and ends the process when it fails; this check
    turns the common cases (no worker started, wrong port, host down) into an error first.
    """
    host, _, port = endpoint.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        reason = "timed out" if isinstance(e, socket.timeout) else (e.strerror or str(e))
        raise RPCError(f"cannot reach RPC worker {endpoint}: {reason} "
                       f"(start one there: python -m pyturbo.rpc_worker --port {port})") from None


def worker_answers(endpoint: str) -> bool:
    """Whether the worker at endpoint is still there.

    Asked on this process's own connection to it where there is one (ggml's): a worker
    that ended closed it. A new connection would not do: a worker busy with this process
    leaves new ones waiting in its backlog, which a few checks fill. Without a connection
    of ours, whether it accepts a new one (check_reachable).
    """
    connections = _connections_to(endpoint)
    if connections:
        return any(_still_open(connection) for connection in connections)
    try:
        check_reachable(endpoint)
    except RPCError:
        return False
    return True


def _connections_to(endpoint: str) -> "list[int]":
    """The file descriptors of this process's TCP connections to endpoint (Linux, macOS)."""
    host, _, port = endpoint.rpartition(":")
    try:
        peer = (socket.gethostbyname(host), int(port))
        names = os.listdir("/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd")
    except OSError:
        return []
    found = []
    for name in names:
        try:
            fd = int(name)
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            with socket.socket(fileno=os.dup(fd)) as connection:
                if connection.type == socket.SOCK_STREAM and connection.getpeername()[:2] == peer:
                    found.append(fd)
        except (OSError, ValueError):
            continue
    return found


def _still_open(fd: int) -> bool:
    """Whether the peer has not closed or reset the connection (a peek, which takes no data)."""
    with socket.socket(fileno=os.dup(fd)) as connection:
        try:
            return len(connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)) > 0
        except BlockingIOError:
            return True  # open, nothing to read
        except OSError:
            return False


class WorkerHealth:
    """The health of what one model's native objects (the model, its contexts) live on: the
    model's RPC workers (none for a model in this process alone) and whether ggml gave up.

    Each object is handed it when it takes its handle (pyturbo._native.NativeObject._own),
    frees through it, and reports a failed call to it: then every object sharing it is
    abandoned together: never freed, each later use refused with the reason.
    """

    def __init__(self, endpoints: Sequence[str] = ()) -> None:
        self.endpoints = tuple(endpoints)
        self.failure = ""  # why the objects are unusable; "" while they are fine

    def gone(self) -> "list[str]":
        """The workers that are no longer there (worker_answers)."""
        return [endpoint for endpoint in self.endpoints if not worker_answers(endpoint)]

    def gone_after_failure(self, settle_s: float = EXIT_SETTLE_S) -> "list[str]":
        """The workers that are gone, asked again for up to settle_s while none is (a worker
        that just failed a call may still be exiting)."""
        deadline = time.monotonic() + settle_s
        while True:
            gone = self.gone()
            if gone or not self.endpoints or time.monotonic() >= deadline:
                return gone
            time.sleep(0.1)

    def free(self, free, handle) -> None:
        """free(handle), unless the objects were abandoned or one of the workers is gone:
        freeing talks to each worker, and to a lost one ends the process. The handle is
        leaked instead (a worker frees what a client allocated when its connection ends).
        Runs when an object is closed or garbage collected, also as the interpreter exits."""
        if not self.failure and all(worker_answers(endpoint) for endpoint in self.endpoints):
            free(handle)

    def check_workers(self, what: str) -> None:
        """BackendError, and the objects abandoned, if a worker is gone: `what` (a call that
        reads or writes the caches outside pyturbo's guard) would end the process."""
        if self.endpoints and self.gone():
            raise BackendError(self.backend_failed(f"before {what}"))

    def backend_failed(self, what: str) -> str:
        """Abandon the objects after ggml gave up in one of their calls, or before a call that
        would (what: where, and ggml's message); the reason, naming the workers that are gone."""
        gone = self.gone_after_failure()
        if gone:
            reason = (f"RPC worker {', '.join(gone)} is gone ({what}); load the model again once "
                      f"{'it runs' if len(gone) == 1 else 'they run'}")
        else:
            reason = f"the backend failed ({what}); load the model again"
        self.abandon(reason)
        return reason

    def abandon(self, reason: str) -> None:
        """Never free the objects; refuse their use with reason. Costs their memory until the process ends."""
        self.failure = reason


def connect_workers(endpoints: Sequence[str]) -> None:
    """Register each worker's devices with ggml (once per process): they are then
    pyturbo.devices.devices() whose endpoint is the worker's.

    Raises RPCError when a worker cannot be reached or does not answer as this build's
    RPC backend does (another ggml version: the protocol versions must match).
    """
    for endpoint in endpoints:
        check_reachable(endpoint)
        error = _native.ffi.new("char[]", 1024)
        with _native.captured_log() as log:
            n_devices = _native.llama.pyturbo_guarded_rpc_add_server(endpoint.encode(), error, len(error))
        if n_devices <= 0:
            reason = _native.c_string(error) or _native.last_problem(log) or "no devices"
            raise RPCError(f"RPC worker {endpoint} did not connect: {reason}")
