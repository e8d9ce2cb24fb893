"""RPC workers on 127.0.0.1: a model split over two worker processes, turbo caches on them,
and what a client sees when a worker is gone. Every wait is bounded."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

import pyturbo
from pyturbo import rpc
from pyturbo.errors import BackendError, RPCError

WORKER_START_S = 60
PROMPT = "The three primary colors are"
LIST_DEVICES = """
import dataclasses, json, sys
from pyturbo.devices import devices
from pyturbo.rpc import connect_workers, parse_endpoints
connect_workers(parse_endpoints(sys.argv[1]))
print(json.dumps([dict(dataclasses.asdict(d), endpoint=d.endpoint) for d in devices()]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def start_worker(port: int, *extra: str) -> subprocess.Popen:
    worker = subprocess.Popen([sys.executable, "-m", "pyturbo.rpc_worker", "--port", str(port), "--threads", "1",
                               *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + WORKER_START_S
    while not accepts(port):
        if worker.poll() is not None or time.monotonic() > deadline:
            worker.kill()
            out, err = worker.communicate(timeout=10)
            pytest.fail(f"worker on {port} did not start: {err or out}")
        time.sleep(0.2)
    return worker


def stop_worker(worker: subprocess.Popen) -> int:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
    try:
        return worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait(timeout=10)
        return -9


@pytest.fixture
def two_workers():
    ports = [free_port(), free_port()]
    workers = [start_worker(port, "--mem", "1GiB") for port in ports]
    yield [f"127.0.0.1:{port}" for port in ports], workers
    for worker in workers:
        stop_worker(worker)


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyturbo.run", *args], capture_output=True, text=True,
                          timeout=timeout)


# --- names and errors, no worker needed

def test_endpoints_are_checked_and_normalized():
    assert rpc.parse_endpoint(" 127.0.0.1:50052 ") == "127.0.0.1:50052"
    assert rpc.parse_endpoints("127.0.0.1:1,localhost:02") == ["127.0.0.1:1", "localhost:2"]
    assert rpc.parse_endpoints(["10.0.0.2:50052"]) == ["10.0.0.2:50052"]
    for bad in ("127.0.0.1", "127.0.0.1:0", ":50052", "host:70000", "host:port", "::1:50052"):
        with pytest.raises(RPCError, match="not host:port|IPv6"):
            rpc.parse_endpoint(bad)
    with pytest.raises(RPCError, match="named twice: 127.0.0.1:5"):
        rpc.parse_endpoints("127.0.0.1:5,127.0.0.1:5")


def test_a_missing_worker_is_a_clear_error_not_an_abort(tiny_path):
    port = free_port()  # nothing listens there
    started = time.monotonic()
    with pytest.raises(RPCError, match=f"cannot reach RPC worker 127.0.0.1:{port}.*pyturbo.rpc_worker"):
        pyturbo.Model(tiny_path, rpc=[f"127.0.0.1:{port}"])
    assert time.monotonic() - started < rpc.CONNECT_TIMEOUT_S + 1
    result = run_cli(str(tiny_path), "-p", "hi", "-n", "2", "--rpc", f"127.0.0.1:{port}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"python -m pyturbo.run: error: cannot reach RPC worker 127.0.0.1:{port}: Connection refused "
        f"(start one there: python -m pyturbo.rpc_worker --port {port})"]


def test_a_worker_takes_its_memory_as_mem_only_since_m_means_a_model():
    from pyturbo.rpc_worker import build_parser

    assert build_parser().parse_args(["--mem", "8GiB"]).mem == "8GiB"
    result = subprocess.run([sys.executable, "-m", "pyturbo.rpc_worker", "-m", "8GiB"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "python -m pyturbo.rpc_worker: error: unrecognized arguments: -m 8GiB"]


def test_a_lost_worker_stops_freeing_and_fails_the_check_before_a_state_call():
    lost = f"127.0.0.1:{free_port()}"  # nothing listens there, and this process has no connection to it
    health = rpc.WorkerHealth([lost])
    freed = []
    health.free(freed.append, "handle")
    assert health.gone() == [lost] and freed == [] and not health.failure
    with pytest.raises(BackendError, match=re.escape(f"RPC worker {lost} is gone (before llama_state_get_data); "
                                                     "load the model again once it runs")):
        health.check_workers("llama_state_get_data")
    assert health.failure.startswith(f"RPC worker {lost} is gone")


def test_a_backend_failure_abandons_the_model_and_its_contexts_together(tiny_path):
    model = pyturbo.Model(tiny_path)
    ctx = model.context(n_ctx=64, n_threads=1)
    assert ctx.health is model.health and model.health.endpoints == ()
    assert model.health.backend_failed("during a test") == "the backend failed (during a test); load the model again"
    assert model.closed and ctx.closed
    for use in (lambda: ctx.decode([1]), lambda: model.n_layer):
        with pytest.raises(pyturbo.PyturboError, match=r"is unusable: the backend failed \(during a test\)"):
            use()
    freed = []
    model.health.free(freed.append, "handle")  # what closing, collection and exit run: nothing is freed
    model.close()
    assert freed == []


def test_a_worker_refuses_a_taken_port_and_warns_off_loopback():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "pyturbo.rpc_worker", "--port", str(port)],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"python -m pyturbo.rpc_worker: error: cannot listen on 127.0.0.1:{port}: Address already in use"]
    port = free_port()
    worker = subprocess.Popen([sys.executable, "-m", "pyturbo.rpc_worker", "--host", "0.0.0.0", "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + WORKER_START_S
        while not accepts(port) and time.monotonic() < deadline and worker.poll() is None:
            time.sleep(0.2)
    finally:
        assert stop_worker(worker) == 0
    err = worker.stderr.read()
    assert "warning: the RPC protocol is unauthenticated and unencrypted" in err
    assert "serving CPU" in err and "stopped" in err


# --- two workers, SmolLM2 split over them

@pytest.mark.slow
def test_workers_show_as_rpc_devices_with_the_memory_they_offer(two_workers):
    endpoints, _ = two_workers
    # in a child process: the workers serve one client at a time, and this one would stay connected
    listing = subprocess.run([sys.executable, "-c", LIST_DEVICES, ",".join(endpoints)],
                             capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    found = json.loads(listing.stdout)
    remote = [d for d in found if d["endpoint"]]
    assert [d["endpoint"] for d in remote] == endpoints
    assert all(d["name"].startswith("RPC") and d["kind"] == "gpu" for d in remote)
    assert all(d["memory_free"] == d["memory_total"] == 2**30 for d in remote)  # --mem 1GiB
    assert any(d["name"] == "CPU" for d in found)
    listed = subprocess.run([sys.executable, "-m", "pyturbo.selftest", "--list-devices", "--rpc", ",".join(endpoints)],
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert f"RPC0: {endpoints[0]} (gpu, 1.0 of 1.0 GiB free)" in listed.stdout.splitlines()


@pytest.mark.slow
@pytest.mark.parametrize("cache", [("q8_0", "turbo3"), ("turbo4", "turbo4"), ("turbo2", "turbo2")])
def test_greedy_output_over_two_workers_equals_one_process(smol_path, two_workers, cache):
    endpoints, _ = two_workers
    cache_k, cache_v = cache
    args = [str(smol_path), "-p", PROMPT, "-n", "24", "-c", "512", "-ctk", cache_k, "-ctv", cache_v, "-t", "1"]
    local = run_cli(*args)
    assert local.returncode == 0, local.stderr
    split = run_cli(*args, "--rpc", ",".join(endpoints), "--verbose")
    assert split.returncode == 0, split.stderr[-3000:]
    assert split.stdout == local.stdout and len(local.stdout.split()) >= 10
    # the layers and their turbo caches were on the workers, half each (equal --mem), and flash attention on
    cache_devices = re.findall(r"llama_kv_cache: layer +\d+: dev = (\w+)", split.stderr)
    assert len(cache_devices) == 30 and set(cache_devices) == {"RPC0", "RPC1"}
    assert 12 <= cache_devices.count("RPC0") <= 18
    assert "flash_attn            = enabled" in split.stderr
    assert f"K ({cache_k})" in split.stderr and f"V ({cache_v})" in split.stderr


@pytest.mark.slow
def test_killing_a_worker_mid_generation_is_a_clear_error_in_bounded_time(smol_path, two_workers):
    endpoints, workers = two_workers
    # bench's tg test decodes one token at a time and never stops at an end-of-text token
    client = subprocess.Popen([sys.executable, "-m", "pyturbo.bench", str(smol_path), "-p", "0", "-n", "4000",
                               "-r", "1", "-ctk", "q8_0", "-ctv", "turbo3", "-t", "1", "--rpc", ",".join(endpoints)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = ""
        deadline = time.monotonic() + 120
        while "tg4000" not in seen and time.monotonic() < deadline:  # the bar names the running test
            chunk = client.stderr.read(1)
            if not chunk:
                break
            seen += chunk
        assert "tg4000" in seen and client.poll() is None, seen
        time.sleep(1)
        workers[1].kill()
        killed = time.monotonic()
        out, err = client.communicate(timeout=90)
    finally:
        if client.poll() is None:
            client.kill()
    elapsed = time.monotonic() - killed
    assert client.returncode == 2, err[-2000:]
    assert "Traceback" not in err and elapsed < 60
    errors = [line.split("\r")[-1] for line in err.splitlines() if "error:" in line]
    assert errors == [f"python -m pyturbo.bench: error: RPC worker {endpoints[1]} is gone (during llama_decode: "
                      "Remote RPC server crashed or returned malformed response); load the model again once "
                      "it runs"]


def after_a_worker_is_killed(smol_path, endpoints, workers, then: str, *args: str) -> subprocess.CompletedProcess:
    """A Python process with SmolLM2 split over the workers and a context that has decoded
    (ctx; its state in `state`) runs `then` after the first worker was killed (its port closed)."""
    script = f"""
import os, signal, socket, sys, time
import pyturbo
from pyturbo.errors import BackendError
model = pyturbo.Model({str(smol_path)!r}, rpc={endpoints!r})
ctx = model.context(n_ctx=512, cache_k="q8_0", cache_v="turbo3", n_threads=1)
ctx.decode(model.tokenize({PROMPT!r}))
state = ctx.save_state()
os.kill({workers[0].pid}, signal.SIGKILL)
deadline = time.monotonic() + 10
while time.monotonic() < deadline:  # until the worker's port is closed: the process is gone
    try:
        socket.create_connection(("127.0.0.1", {endpoints[0].rsplit(":", 1)[1]}), timeout=1).close()
        time.sleep(0.05)
    except OSError:
        break
""" + then
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("call, what", [
    ("ctx.decode(model.tokenize(' red, yellow and blue'))", "during llama_decode: Remote RPC server crashed or "
                                                            "returned malformed response"),
    ("ctx.save_state(sys.argv[1])", "before llama_state_get_data"),
    ("ctx.load_state(state)", "during llama_memory_clear: Remote RPC server crashed or returned malformed response"),
    ("ctx.reset()", "during llama_memory_clear: Remote RPC server crashed or returned malformed response"),
])
def test_the_python_api_raises_and_the_model_can_still_be_closed(smol_path, two_workers, tmp_path, call, what):
    endpoints, workers = two_workers
    result = after_a_worker_is_killed(smol_path, endpoints, workers, f"""
try:
    {call}
except BackendError as e:
    print("raised:", e)
try:
    ctx.decode([1])
except pyturbo.PyturboError as e:
    print("then:", e)
model.close()
print("closed")
""", str(tmp_path / "state.bin"))
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0] == f"raised: RPC worker {endpoints[0]} is gone ({what}); load the model again once it runs"
    assert lines[1].startswith(f"then: this Context is unusable: RPC worker {endpoints[0]} is gone")
    assert lines[2] == "closed"


@pytest.mark.slow
@pytest.mark.parametrize("then, printed", [
    ("ctx.close()\nprint('context closed')", "context closed"),  # the model is freed as the process exits
    ("del ctx\nimport gc; gc.collect()\nprint('context collected')", "context collected"),
    ("print('nothing closed')", "nothing closed"),  # both freed as the interpreter exits
])
def test_freeing_what_a_lost_worker_held_does_not_end_the_process(smol_path, two_workers, then, printed):
    # freeing talks to every worker that holds buffers: to a lost one, ggml would end the process
    endpoints, workers = two_workers
    result = after_a_worker_is_killed(smol_path, endpoints, workers, then)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [printed]


@pytest.mark.slow
def test_the_server_serves_a_model_split_over_workers(smol_path, two_workers, tmp_path):
    endpoints, _ = two_workers
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "pyturbo.server", str(smol_path), "-ctk", "q8_0", "-ctv",
                                   "turbo3", "-c", "1024", "--parallel", "1", "--port", str(port),
                                   "--rpc", ",".join(endpoints)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        answer = None
        while answer is None and time.monotonic() < deadline and server.poll() is None:
            try:
                reply = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=60, json={
                    "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0})
                answer = reply.json()["choices"][0]["text"] if reply.status_code == 200 else None
            except httpx.HTTPError:
                time.sleep(0.5)
        assert answer is not None and "Paris" in answer, log.read_text()[-3000:]
        text = log.read_text()
        assert "free here, on the GPUs and the RPC workers" in text.splitlines()[0]  # the planner asked them
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
