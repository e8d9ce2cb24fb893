"""Hostile GGUF files (tests/fuzz_gguf.py): a seeded run over every entry point ends each case
in a result or a clean PyturboError, and the harness really catches what it is there to catch."""

from __future__ import annotations

import pytest

import fuzz_gguf

# About a minute on this project's 2-core machine; `python tests/fuzz_gguf.py --cases 20000`
# is the long run (docs/results/reliability-fuzz.json).
CI_CASES = 1620
CI_SEED = 14


@pytest.mark.slow
def test_mutated_files_give_a_result_or_a_clean_error_everywhere(smol_path, tmp_path):
    summary = fuzz_gguf.fuzz(CI_CASES, CI_SEED, progress=False, workdir=tmp_path, smol=smol_path)
    assert not summary.failures, f"{summary.n_failures} failures:\n{summary.failure_report()}\n{summary.table()}"
    # Every entry point and every base file took part; some commands ran as real processes.
    assert all(sum(counts.values()) == CI_CASES // len(fuzz_gguf.ENTRY_POINTS) for counts in summary.entries.values())
    assert set(summary.bases) == {"tiny-llama", "tiny-qwen2", "tiny-gemma3", "smol-header"}
    assert summary.subprocess_cases > 0
    # The mutations reach the loaders: some files still load, some are refused.
    for counts in summary.entries.values():
        assert counts["ok"] > 0 and counts["clean"] > 0


def test_the_harness_catches_crashes_tracebacks_hangs_memory_and_bad_commands(tmp_path):
    # After the crash and the hang, the next case runs in a new worker.
    entries = ["selftest-ok", "selftest-crash", "selftest-traceback", "selftest-hang", "selftest-memory",
               "selftest-badcli", "selftest-ok"]
    summary = fuzz_gguf.fuzz(len(entries), 0, entries, timeout=2.0, progress=False, workdir=tmp_path, smol=False)
    outcomes = {entry: dict(counts) for entry, counts in summary.entries.items()}
    assert outcomes == {"selftest-ok": {"ok": 2}, "selftest-crash": {"crash": 1},
                        "selftest-traceback": {"traceback": 1}, "selftest-hang": {"hang": 1},
                        "selftest-memory": {"traceback": 1}, "selftest-badcli": {"bad-cli": 1}}
    details = {f["entry"]: f["detail"] for f in summary.failures}
    assert "SIGABRT" in details["selftest-crash"]
    assert "MemoryError" in details["selftest-memory"]  # RLIMIT_AS turned the allocation into an error
    assert "KeyError" in details["selftest-traceback"]
    assert "2 stderr lines" in details["selftest-badcli"]
    assert all(f["replay"].startswith("python tests/fuzz_gguf.py --seed 0 --replay ") for f in summary.failures)


def test_a_case_is_the_same_bytes_every_time(tmp_path):
    bases = fuzz_gguf.build_bases(tmp_path, smol=False)
    for index in range(40):
        first = fuzz_gguf.make_case(3, index, "info", bases)
        again = fuzz_gguf.make_case(3, index, "info", bases)
        assert first == again


def test_the_command_line_judge(tmp_path):
    judge = fuzz_gguf.judge_cli
    assert judge("info", 0, "file  x\n", "")[0] == "ok"
    assert judge("info", 2, "", "python -m pyturbo.info: error: corrupt GGUF header\n")[0] == "clean"
    assert judge("info", 2, "", "error\nmore\n")[0] == "bad-cli"
    assert judge("info", 1, "", "Traceback (most recent call last):\n  ...\nValueError: x\n")[0] == "traceback"
    assert judge("info-json", 0, "{not json", "")[0] == "bad-cli"
    assert judge("fit-json", 0, '{"n_ctx": -5}', "")[0] == "invalid"
    assert judge("fit", 0, "", "")[0] == "bad-cli"


# -- the failures the fuzzer found, one hostile file each ----------------------------------------

F = fuzz_gguf


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    return F.build_bases(tmp_path_factory.mktemp("bases"), smol=False)


def _tokens_with(data: bytes, index: int, text: str) -> bytes:
    tokens = list(F.parse_layout(data).metadata["tokenizer.ggml.tokens"])
    tokens[index] = text
    return F.with_metadata(data, "tokenizer.ggml.tokens", F.ARRAY, (F.STRING, tokens))


def _retyped(data: bytes, name: str, type_id: int) -> bytes:
    layout = F.parse_layout(data)
    tensor = next(t for t in layout.tensors if t.name == name)
    return F.relayout_tensor(data, layout, name, tensor.shape, type_id)


def _load_and_run(path):
    import pyturbo

    with pyturbo.Model(path) as model, model.context(n_ctx=256, n_threads=1) as ctx:
        return ctx.complete("the cat", max_tokens=2)


def _estimate(path):
    from pyturbo import memory

    return memory.estimate(path, 4096, "q8_0", "q8_0")


def _info(path):
    from pyturbo import info

    return info.inspect(path)


def _quantize(path):
    from pyturbo.weights import quantize

    return quantize(path, path.with_name("out.gguf"), "q8_0", threads=1, progress=False, overwrite=True)


# (base, how the file is damaged, the call, what the InvalidModelError says); each comment says
# what the file did before (every one checked against the previous commit).
HOSTILE_FILES = {
    # llama.cpp: GGML_ASSERT(n_layer_all > 0 && n_layer_all <= LLAMA_MAX_LAYERS), SIGABRT
    "block count 0": ("tiny-qwen2", lambda d: F.with_metadata(d, "qwen2.block_count", F.UINT32, 0), _quantize,
                      "qwen2.block_count is 0, expected an integer from 1 to 512"),
    # geometry: [...] * 2**31: MemoryError
    "block count 2^31": ("tiny-llama", lambda d: F.with_metadata(d, "llama.block_count", F.UINT32, 2**31),
                         _estimate, "llama.block_count is 2147483648"),
    # geometry: int("longrope"): ValueError
    "head count a string": ("tiny-llama",
                            lambda d: F.with_metadata(d, "llama.attention.head_count", F.STRING, "longrope"),
                            _estimate, "llama.attention.head_count is the string 'longrope'"),
    # geometry: int([...]): TypeError
    "context length an array": ("tiny-llama",
                                lambda d: F.with_metadata(d, "llama.context_length", F.ARRAY, (F.UINT32, [1, 2])),
                                _info, "llama.context_length is an array of 2"),
    # gguf: int(0.5) is 0, then -(-tell // 0): ZeroDivisionError
    "alignment 0.5": ("tiny-llama", lambda d: F.with_metadata(d, "general.alignment", F.FLOAT32, 0.5), _info,
                      "general.alignment is 0.5, not a power of two"),
    # weights.weight_stats: GGMLQuantizationType(2**32 - 1): ValueError
    "tensor type -1": ("tiny-llama", lambda d: F.with_field(d, "tensor[output.weight].type", -1), _quantize,
                       "unknown ggml type 4294967295"),
    # llama_vocab::load: GGML_ASSERT(id_to_token.size() == token_to_id.size()), SIGABRT
    "a token twice": ("tiny-llama", lambda d: _tokens_with(d, 10, "<0x06>"), _load_and_run, "'<0x06>' twice"),
    # llama_tokenize: std::out_of_range from byte_to_token, terminate
    "a byte token missing": ("tiny-llama", lambda d: _tokens_with(d, 107, "<0\ufffd68>"), _load_and_run,
                             "lacks the byte token <0x68>"),
    # qwen2 graph: GGML_ASSERT(n_embd_head == n_rot) at the first context, SIGABRT
    "RoPE not the whole head": ("tiny-qwen2", lambda d: F.with_metadata(d, "qwen2.rope.dimension_count", F.UINT32, 62),
                                _load_and_run, "qwen2.rope.dimension_count is 62"),
    # ggml rope: GGML_ASSERT(n_dims % 2 == 0) at the first decode, SIGABRT
    "odd RoPE width": ("tiny-gemma3", lambda d: F.with_metadata(d, "gemma3.rope.dimension_count", F.UINT32, 63),
                       _load_and_run, "gemma3.rope.dimension_count is 63, expected an even number"),
    # set_input_kq_mask reserves 4 bytes a window token at every decode: 8 GiB, bad_alloc under a limit
    "window 2^31": ("tiny-gemma3",
                    lambda d: F.with_metadata(d, "gemma3.attention.sliding_window", F.UINT32, 2**31 - 1),
                    _load_and_run, "gemma3.attention.sliding_window is 2147483647"),
    # ggml rms_norm: GGML_ASSERT(eps >= 0.0f) at the first decode, SIGABRT
    "norm epsilon NaN": ("tiny-llama",
                         lambda d: F.with_metadata(d, "llama.attention.layer_norm_rms_epsilon", F.FLOAT32,
                                                   float("nan")),
                         _load_and_run, "layer_norm_rms_epsilon is nan"),
    # ggml-cpu mul_mat: no vec_dot for I8, SIGSEGV at the first decode
    "an I8 weight": ("tiny-llama", lambda d: _retyped(d, "blk.0.ffn_up.weight", 24), _load_and_run,
                     "blk.0.ffn_up.weight is stored as I8"),
    # ggml-cpu binary_op: "unsupported types" f32 * bf16, SIGABRT
    "a BF16 norm": ("tiny-llama", lambda d: _retyped(d, "blk.0.attn_norm.weight", 30), _load_and_run,
                    "blk.0.attn_norm.weight is a vector stored as BF16"),
    # ggml-backend: GGML_ASSERT(ptr % TENSOR_ALIGNMENT == 0 && "buffer pointer must be aligned"), SIGABRT
    "alignment 2": ("tiny-llama", lambda d: F.with_metadata(d, "general.alignment", F.UINT32, 2), _load_and_run,
                    "not a multiple of 32"),
}


@pytest.mark.parametrize("name", list(HOSTILE_FILES))
def test_a_hostile_file_is_refused_naming_what_is_wrong(name, bases, tmp_path):
    import pyturbo

    base, damage, call, message = HOSTILE_FILES[name]
    path = tmp_path / "hostile.gguf"
    path.write_bytes(damage(bases[base]))
    with pytest.raises(pyturbo.InvalidModelError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        call(path)
    assert str(path) in str(error.value)


def test_a_corrupt_key_is_one_short_line_of_error(bases, tmp_path):
    # A key length reaching into the keys after it used to put kilobytes of them, newlines
    # included, into the message: thousands of lines on stderr.
    layout = F.parse_layout(bases["tiny-llama"])
    path = tmp_path / "hostile.gguf"
    path.write_bytes(F.with_field(bases["tiny-llama"], f"kv[{layout.kvs[5].key}].key_len", 3000))
    code, out, err = F.run_cli_in_process("pyturbo.fit", [str(path), "--memory", "8GiB"])
    assert code == 2 and len(err.splitlines()) == 1 and len(err) < 400, err
