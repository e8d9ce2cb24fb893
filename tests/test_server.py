"""python -m pyturbo.server: llama.cpp's server with a q8_0/turbo3 cache, from a real HTTP
client, on 127.0.0.1. Every wait is bounded."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from pyturbo import server

START_S = 180
REQUEST_S = 120
PROG = "python -m pyturbo.server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_server_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyturbo.server", *args], capture_output=True, text=True,
                          timeout=120)


def wait_healthy(process: subprocess.Popen, base: str, log) -> None:
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    pytest.fail("the server did not become healthy in time")


def start_server(log, *args: str) -> "tuple[str, subprocess.Popen]":
    """The server with its output in the file log (a pipe nobody reads would fill and stall it)."""
    port = free_port()
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "pyturbo.server", *args, "--port", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    wait_healthy(process, base, log)
    return base, process


@pytest.fixture(scope="module")
def served(smol_path, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    # -lv 4 is llama-server's own flag, passed through: its log then shows the KV cache it made
    base, process = start_server(log, str(smol_path), "--cache-k", "q8_0", "--cache-v", "turbo3", "-c", "2048",
                                 "--parallel", "2", "-t", "2", "-lv", "4")
    yield base, process, log
    if process.poll() is None:
        process.kill()
        process.wait(timeout=30)


def chat_request(question: str, **extra) -> dict:
    # Without a system message SmolLM2's template adds its own, under which this 135M model's
    # greedy answer to these questions flips with the CPU's rounding (AVX2 vs AVX-512), even at
    # f16. Under this one it named Paris and Rome with eight K/V cache types, f16 to turbo2.
    return {"messages": [{"role": "system", "content": "Answer in one short sentence."},
                         {"role": "user", "content": question}], "max_tokens": 24, "temperature": 0, **extra}


def chat(base: str, question: str) -> httpx.Response:
    return httpx.post(f"{base}/v1/chat/completions", timeout=REQUEST_S, json=chat_request(question))


@pytest.mark.slow
def test_health_and_the_cache_it_runs_with(served):
    base, _, log = served
    assert httpx.get(f"{base}/health", timeout=10).json() == {"status": "ok"}
    props = httpx.get(f"{base}/props", timeout=10).json()
    assert props["total_slots"] == 2
    assert props["default_generation_settings"]["n_ctx"] == 1024  # 2048 over 2 slots
    text = log.read_text()
    planned = re.search(r"KV cache ([\d.]+) MiB", text.splitlines()[0]).group(1)
    made = re.search(r"llama_kv_cache: size = +([\d.]+) MiB .*K \(q8_0\): .* V \(turbo3\)", text)
    assert made and made.group(1) == planned  # the planner's figure is what llama.cpp allocated


@pytest.mark.slow
def test_chat_completions_answer_and_stream_the_same_answer(served):
    base, _, _ = served
    reply = chat(base, "What is the capital of France?")
    assert reply.status_code == 200
    body = reply.json()
    answer = body["choices"][0]["message"]["content"]
    assert "Paris" in answer
    assert body["usage"]["completion_tokens"] > 0
    pieces = []
    with httpx.stream("POST", f"{base}/v1/chat/completions", timeout=REQUEST_S,
                      json=chat_request("What is the capital of France?", stream=True)) as stream:
        assert stream.status_code == 200
        for line in stream.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            delta = json.loads(line[len("data: "):])["choices"][0]["delta"]
            pieces.append(delta.get("content") or "")
    assert len([p for p in pieces if p]) > 3  # streamed in pieces, not as one
    assert "".join(pieces) == answer  # greedy: the same tokens


@pytest.mark.slow
def test_completions_continue_a_prompt(served):
    base, _, _ = served
    reply = httpx.post(f"{base}/v1/completions", timeout=REQUEST_S, json={
        "prompt": "The capital of France is", "max_tokens": 12, "temperature": 0})
    assert reply.status_code == 200
    text = reply.json()["choices"][0]["text"]
    assert "Paris" in text


@pytest.mark.slow
def test_two_concurrent_clients_both_get_their_answers(served):
    base, _, _ = served
    questions = {"What is the capital of France?": "Paris", "What is the capital of Italy?": "Rome"}
    alone = {q: chat(base, q).json()["choices"][0]["message"]["content"] for q in questions}
    answers, errors = {}, []
    barrier = threading.Barrier(len(questions))

    def ask(question: str) -> None:
        try:
            barrier.wait(timeout=30)
            answers[question] = chat(base, question).json()["choices"][0]["message"]["content"]
        except Exception as e:  # reported below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(q,)) for q in questions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=REQUEST_S + 30)
    assert not errors and len(answers) == 2
    for question, word in questions.items():
        assert word in answers[question], answers
    # both slots ran (continuous batching), and each answer is the one it gets alone
    slots = httpx.get(f"{base}/slots", timeout=10)
    if slots.status_code == 200:
        assert len(slots.json()) == 2
    assert answers == alone


def test_a_context_that_does_not_fit_is_refused_before_start(smol_path):
    result = run_server_cli(str(smol_path), "--cache-k", "q8_0", "--cache-v", "turbo3", "-c", "65536",
                            "--parallel", "2", "--memory", "250MiB", "--port", str(free_port()))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{PROG}: error: SmolLM2-135M-Instruct.Q4_1.gguf with 65536 tokens over 2 slots")
    assert "but 250.00 MiB is --memory; -c " in lines[0] and " fits (python -m pyturbo.fit " in lines[0]
    fits = int(lines[0].split("; -c ")[1].split()[0])
    assert 512 <= fits < 65536


def test_bad_cache_types_and_flags_are_one_line_errors(smol_path):
    result = run_server_cli(str(smol_path), "--cache-k", "turbo5")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"{PROG}: error: unsupported cache type 'turbo5'; valid cache types: "
        "f32, f16, bf16, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1, turbo2, turbo3, turbo4, turbo3t, turbo2t"]
    result = run_server_cli(str(smol_path), "--cache-v", "turbo3", "-fa", "off")
    assert result.returncode == 2 and "requires flash attention" in result.stderr
    result = run_server_cli("/no/such/model.gguf")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


def test_the_command_line_llama_server_gets(smol_path):
    command, env, line = server.prepare([str(smol_path), "--cache-k", "q8_0", "--cache-v", "turbo3", "-c", "4096",
                                         "--parallel", "4", "--port", "8091", "--temp", "0.7", "--kv-transform", "off"])
    assert command[0].endswith("llama-server")
    flags = command[1:]
    pairs = dict(zip(flags[::2], flags[1::2]))
    assert pairs["-ctk"] == "q8_0" and pairs["-ctv"] == "turbo3" and pairs["-fa"] == "on"  # quantized V
    assert pairs["-c"] == "4096" and pairs["-np"] == "4" and pairs["--port"] == "8091"
    assert pairs["--host"] == "127.0.0.1"
    assert flags[-2:] == ["--temp", "0.7"]  # passed through
    assert env["PYTURBO_KV_TRANSFORM"] == "0"
    assert "4096 tokens over 4 slots" in line and "http://127.0.0.1:8091" in line
    command, _, _ = server.prepare([str(smol_path), "--cache-v", "f16"])
    assert dict(zip(command[1::2], command[2::2]))["-fa"] == "auto"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_sigint_stops_the_server_cleanly(smol_path, tmp_path, signum):
    base, process = start_server(tmp_path / "server.log", str(smol_path), "--cache-k", "q8_0", "--cache-v", "turbo3",
                                 "-c", "1024", "--parallel", "1")
    process.send_signal(signum)
    try:
        code = process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"the server did not stop within 60 s of {signal.Signals(signum).name}")
    assert code == 0, (tmp_path / "server.log").read_text()[-2000:]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/health", timeout=2)
