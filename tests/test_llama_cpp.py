"""llama-cpp-python 0.3.36 (installed without its native build) on pyturbo's library."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

import pyturbo
from pyturbo._native import library_dir
from allocation_log import KV_SIZE_LINE
from pyturbo.units import MiB

CHILD_ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def ptl():
    import pyturbo.llama_cpp as ptl

    return ptl


def test_cache_types_by_name_and_llama_kwargs(ptl):
    assert ptl.cache_type("turbo3") == 44 == ptl.GGML_TYPE_TURBO3 == pyturbo.GGML_TYPE_TURBO3
    assert ptl.cache_type("Q8_0") == 8
    assert ptl.llama_kwargs(cache_k="q8_0", cache_v="turbo3", n_ctx=2048) == {
        "n_ctx": 2048, "type_k": 8, "type_v": 44, "flash_attn": True}
    assert ptl.llama_kwargs()["flash_attn"] is False  # f16 caches keep llama-cpp-python's default
    with pytest.raises(pyturbo.CacheTypeError, match="valid cache types"):
        ptl.llama_kwargs(cache_v="turbo5")
    with pytest.raises(pyturbo.CacheTypeError, match="requires flash attention"):
        ptl.llama_kwargs(cache_v="turbo3", flash_attn=False)


def test_llama_cpp_loads_pyturbos_library_once(ptl):
    import llama_cpp.llama_cpp as bindings

    assert os.path.realpath(bindings._base_path) == os.path.realpath(library_dir())
    with open("/proc/self/maps") as maps:
        loaded = {line.split()[-1] for line in maps if "libllama" in line}
    assert len(loaded) == 1, loaded


@pytest.mark.slow
def test_llama_generates_with_a_turbo_v_cache_of_pyturbos_size(ptl, smol_path, smol_model, capfd):
    from llama_cpp import Llama

    capfd.readouterr()
    llm = Llama(model_path=str(smol_path), n_ctx=2048, n_threads=2, verbose=True,
                **ptl.llama_kwargs(cache_k="q8_0", cache_v="turbo3"))
    try:
        allocation = capfd.readouterr().err
        out = llm("1, 2, 3, 4, 5, 6, 7, 8,", max_tokens=6, temperature=0.0)
        text = out["choices"][0]["text"]
        assert out["usage"]["completion_tokens"] == 6 and text.startswith(" 9, 10"), text
        import llama_cpp

        # the cache holds the prompt and the generated tokens but the last (sampled, not evaluated)
        memory = llama_cpp.llama_get_memory(llm._ctx.ctx)
        n_prompt = len(llm.tokenize(b"1, 2, 3, 4, 5, 6, 7, 8,"))
        assert llama_cpp.llama_memory_seq_pos_max(memory, 0) == n_prompt + 6 - 2
    finally:
        llm.close()
    # llama.cpp's own allocation report, as llama-cpp-python's verbose log printed it
    theirs = KV_SIZE_LINE.search(allocation)
    assert theirs and (theirs.group(4), theirs.group(6)) == ("q8_0", "turbo3"), allocation[-2000:]
    with smol_model.context(n_ctx=2048, cache_k="q8_0", cache_v="turbo3", flash_attn="on") as ctx:
        ours = ctx.kv_cache_bytes()
    # ours are libllama's exact bytes; llama-cpp-python's log printed them to 0.01 MiB
    assert abs(float(theirs.group(5)) * MiB - ours["k"]) <= 0.005 * MiB
    assert abs(float(theirs.group(7)) * MiB - ours["v"]) <= 0.005 * MiB
    per_token = smol_model.n_layer * smol_model.n_head_kv * smol_model.head_size_v * 3.25 / 8
    assert abs(ours["v"] - 2048 * per_token) <= 0.005 * MiB


def test_llama_takes_a_type_per_layer_through_llama_kwargs(ptl, smol_path, capfd, monkeypatch):
    from llama_cpp import Llama

    from pyturbo import layer_types
    from pyturbo.memory import estimate

    monkeypatch.delenv(layer_types.ENV_K, raising=False)
    monkeypatch.delenv(layer_types.ENV_V, raising=False)
    spec_k, spec_v = "q8_0,turbo3@0-9", "turbo3,q8_0@-2"
    capfd.readouterr()
    # model_path passes through llama_kwargs, which checks the spec against the model's layers
    llm = Llama(n_ctx=2048, n_threads=2, verbose=True,
                **ptl.llama_kwargs(cache_k=spec_k, cache_v=spec_v, model_path=str(smol_path)))
    try:
        allocation = capfd.readouterr().err
        out = llm("1, 2, 3, 4, 5, 6, 7, 8,", max_tokens=6, temperature=0.0)
        assert out["choices"][0]["text"].startswith(" 9, 10"), out
    finally:
        llm.close()
        ptl.llama_kwargs(cache_k="f16", cache_v="f16")   # clears the variables
    theirs = KV_SIZE_LINE.search(allocation)
    # llama.cpp names the standing types; its sizes are the layers' own
    assert theirs and (theirs.group(4), theirs.group(6)) == ("turbo3", "turbo3"), allocation[-2000:]
    est = estimate(smol_path, 2048, spec_k, spec_v)
    assert abs(float(theirs.group(5)) * MiB - est.kv_k) <= 0.005 * MiB
    assert abs(float(theirs.group(7)) * MiB - est.kv_v) <= 0.005 * MiB
    assert layer_types.ENV_K not in os.environ


def test_wrong_llama_cpp_python_version_names_the_one_to_install(ptl, monkeypatch):
    monkeypatch.setattr(ptl, "installed_version", lambda: "0.3.20")
    with pytest.raises(ptl.LlamaCppError, match=r"llama-cpp-python 0.3.20 is installed.*llama-cpp-python==0.3.36"):
        ptl.check_version()


def test_llama_cpp_imported_first_with_another_library_is_refused(tmp_path):
    elsewhere = tmp_path / "lib"
    elsewhere.mkdir()
    for item in library_dir().iterdir():
        (elsewhere / item.name).symlink_to(item.resolve())
    code = "import llama_cpp\nimport pyturbo.llama_cpp\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**CHILD_ENV, "LLAMA_CPP_LIB_PATH": str(elsewhere)})
    assert result.returncode != 0
    assert "llama_cpp was imported before pyturbo.llama_cpp" in result.stderr
    assert str(elsewhere) in result.stderr


def test_server_flag_errors_are_one_line_with_exit_code_2():
    for args, message in ((["--model", "m.gguf", "--type_v", "turbo9"], "valid cache types"),
                          (["--model", "m.gguf", "--type_v", "turbo3", "--flash_attn", "false"],
                           "requires flash attention")):
        result = subprocess.run([sys.executable, "-m", "pyturbo.llama_cpp.server", *args], capture_output=True,
                                text=True, timeout=120, env=CHILD_ENV)
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr


def test_server_translates_type_names_and_turns_flash_attention_on(ptl):
    from pyturbo.llama_cpp.server import translate_argv

    assert translate_argv(["--model", "m", "--type_k", "q8_0", "--type_v=turbo3"]) == [
        "--model", "m", "--type_k", "8", "--type_v=44", "--flash_attn", "true"]
    assert translate_argv(["--model", "m", "--type_k", "8"]) == ["--model", "m", "--type_k", "8",
                                                                "--flash_attn", "true"]
    assert translate_argv(["--model", "m"]) == ["--model", "m"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(smol_path, tmp_path_factory):
    import httpx

    port = free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    log = open(log_path, "w")  # a file, not a pipe: the server's verbose log would fill a pipe and block it
    process = subprocess.Popen(
        [sys.executable, "-m", "pyturbo.llama_cpp.server", "--model", str(smol_path), "--type_k", "q8_0",
         "--type_v", "turbo3", "--n_ctx", "2048", "--n_threads", "2", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=CHILD_ENV)
    process.log_path = log_path
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(base + "/v1/models", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail("the server did not come up:\n" + log_path.read_text()[-3000:])
        time.sleep(0.5)
    yield base, process
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    log.close()


@pytest.mark.slow
def test_server_answers_completions_and_chat_and_streams(server):
    import httpx

    base, process = server
    completion = httpx.post(base + "/v1/completions", json={
        "prompt": "1, 2, 3, 4, 5, 6, 7, 8,", "max_tokens": 6, "temperature": 0}, timeout=120).json()
    assert completion["choices"][0]["text"].startswith(" 9, 10"), completion
    # Worded so that this 135M model answers it under llama-cpp-python's chat formatting with every
    # cache (f16/f16, q8_0/q8_0, q8_0/turbo3); "What is the capital of France?" gets "L'Étoile ..."
    # there even from an f16 cache.
    chat = httpx.post(base + "/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "Name the capital city of France."}], "max_tokens": 16,
        "temperature": 0}, timeout=120).json()
    assert "Paris" in chat["choices"][0]["message"]["content"], chat
    pieces = []
    with httpx.stream("POST", base + "/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "Count from 1 to 5."}], "max_tokens": 24,
            "temperature": 0, "stream": True}, timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                delta = json.loads(line[len("data: "):])["choices"][0]["delta"]
                pieces.append(delta.get("content") or "")
    assert len(pieces) > 3 and re.search(r"1.*2.*3", "".join(pieces), re.S), pieces


@pytest.mark.slow
def test_server_shuts_down_cleanly(server):
    base, process = server
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0
    output = process.log_path.read_text()
    assert "Traceback" not in output and "Application shutdown complete" in output, output[-3000:]
