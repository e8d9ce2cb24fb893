"""Every bad input gives a clear PyturboError (CLI: one line on stderr, exit code 2), never a crash."""

from __future__ import annotations

import subprocess
import sys

import pytest

import pyturbo
from tiny_gguf import write_tiny_llama


def test_missing_file_raises_model_not_found(tmp_path):
    with pytest.raises(pyturbo.ModelNotFoundError, match="not found"):
        pyturbo.Model(tmp_path / "nope.gguf")


def test_non_gguf_file_is_rejected_by_its_magic(tmp_path):
    path = tmp_path / "notes.gguf"
    path.write_text("these are not weights")
    with pytest.raises(pyturbo.InvalidModelError, match="not a GGUF file"):
        pyturbo.Model(path)


def test_truncated_gguf_is_refused_with_the_reason(tiny_path, tmp_path):
    data = tiny_path.read_bytes()
    for cut, reason in ((200, "21 tensors cannot fit in the 184 bytes left"),
                        (len(data) - 1000, "data ends at byte 1488576 but the file has 1487576 bytes")):
        path = tmp_path / f"cut{cut}.gguf"
        path.write_bytes(data[:cut])
        with pytest.raises(pyturbo.InvalidModelError, match=reason):
            pyturbo.Model(path)


def test_unknown_cache_type_lists_the_valid_names(tiny_model):
    with pytest.raises(pyturbo.CacheTypeError) as info:
        tiny_model.context(n_ctx=256, cache_k="q3_0")
    message = str(info.value)
    assert "'q3_0'" in message
    for name in ("f16", "q8_0", "q4_0", "iq4_nl", "q5_1"):
        assert name in message


def test_quantized_v_without_flash_attention_is_refused(tiny_model):
    with pytest.raises(pyturbo.CacheTypeError, match="requires flash attention"):
        tiny_model.context(n_ctx=256, cache_v="q4_0", flash_attn="off")


def test_quantized_k_without_flash_attention_gives_the_f16_caches_tokens(tiny_model):
    with tiny_model.context(n_ctx=256, flash_attn="off") as ctx:
        reference = ctx.complete("the cat", max_tokens=8)
    with tiny_model.context(n_ctx=256, cache_k="q8_0", cache_v="f16", flash_attn="off") as ctx:
        assert ctx.complete("the cat", max_tokens=8) == reference
        assert ctx.last_stats.n_gen == 8


def test_head_size_not_a_multiple_of_the_block_is_refused(tmp_path):
    path = write_tiny_llama(tmp_path / "head48.gguf", n_embd=96, n_head=2, n_head_kv=1)
    with pyturbo.Model(path) as model:
        assert model.head_size_k == 48
        with pytest.raises(pyturbo.CacheTypeError, match="head size is 48, not a multiple of 32"):
            model.context(n_ctx=256, cache_k="q8_0", cache_v="f16")
        with model.context(n_ctx=256, cache_k="f16", cache_v="f16") as ctx:  # unquantized is fine
            assert ctx.n_ctx == 256


def test_prompt_longer_than_the_context_raises_overflow(tiny_model):
    with tiny_model.context(n_ctx=256) as ctx:
        prompt = " the cat" * 300
        assert len(ctx.tokenize(prompt)) > 256
        with pytest.raises(pyturbo.ContextOverflowError, match="tokens but the context holds 256"):
            ctx.generate(prompt)


def test_bad_flash_attn_value_is_a_value_error(tiny_model):
    with pytest.raises(ValueError, match="on, off, auto"):
        tiny_model.context(n_ctx=256, flash_attn="sometimes")


def test_closed_objects_refuse_use(tiny_path):
    model = pyturbo.Model(tiny_path)
    ctx = model.context(n_ctx=256)
    model.close()
    assert ctx.closed and model.closed
    with pytest.raises(pyturbo.PyturboError, match="closed"):
        ctx.tokenize("the cat")
    model.close()  # idempotent


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "pyturbo.run", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("make_args, message", [
    (lambda p, tmp: [str(tmp / "missing.gguf")], "model file not found"),
    (lambda p, tmp: [str(p), "-ctk", "q3_0"], "unsupported cache type 'q3_0'; valid cache types: f32, f16"),
    (lambda p, tmp: [str(p), "-ctv", "q4_0", "-fa", "off"], "requires flash attention"),
    (lambda p, tmp: [str(p), "-c", "256", "-p", " the cat" * 300], "context holds 256"),
    (lambda p, tmp: [str(p), "-fa", "maybe"], "invalid choice"),
])
def test_cli_errors_are_one_line_on_stderr_with_exit_code_2(tiny_path, tmp_path, make_args, message):
    result = run_cli(*make_args(tiny_path, tmp_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr
