"""The CUDA kernels' block math against the CPU reference, bit for bit, on the host (no GPU needed).

csrc/cuda/turbo-block.h holds the per-block math that the CUDA kernels run
(code picking, scale, packing, dequantization, the K*Q integer dot of flash
attention). tests/native/turbo_cuda_block_check.cpp compiles it as plain C++
with -ffp-contract=off (as ggml compiles the CPU reference) and links pyturbo's
libggml-base, which holds csrc/turbo-quants.c: identical blocks on random and
edge-case data (zeros, negative zeros, constant blocks, huge, tiny and
subnormal values, infinities), identical dequantized values, and exact integer
K*Q dots. The CUDA compile of the same code is .ci/run's turbo-cuda-check.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pyturbo import _native

ROOT = Path(__file__).resolve().parent.parent
GGML = ROOT / "vendor" / "llama.cpp" / "ggml"
CSRC = ROOT / "csrc"
INCLUDES = [GGML / "include", GGML / "src", CSRC, CSRC / "cuda"]
CHECKED_TYPES = ("turbo2", "turbo3", "turbo4")

pytestmark = pytest.mark.skipif(not (GGML / "include" / "ggml.h").exists(),
                                reason="vendor/llama.cpp is not materialized (pip install . or cmake does it)")


@pytest.fixture(scope="module")
def block_check(tmp_path_factory):
    compiler = shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler (c++) on the PATH")
    lib_dir = _native.library_dir()
    exe = tmp_path_factory.mktemp("cuda-host") / "turbo_cuda_block_check"
    cmd = [compiler, "-std=c++17", "-O2", "-ffp-contract=off", "-Wall", "-Wextra",
           *(f"-I{p}" for p in INCLUDES), str(ROOT / "tests" / "native" / "turbo_cuda_block_check.cpp"),
           f"-L{lib_dir}", "-lggml-base", f"-Wl,-rpath,{lib_dir}", "-o", str(exe)]
    built = subprocess.run(cmd, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-4000:]
    assert "turbo-block.h" not in built.stderr, built.stderr[-4000:]  # no warnings in the shared header
    return exe


def test_cuda_block_math_matches_the_cpu_reference_bit_for_bit(block_check):
    result = subprocess.run([str(block_check)], capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for name in CHECKED_TYPES:
        assert f"{name} k16 codebook: ok" in output, output
        match = re.search(rf"{name} blocks: identical \((\d+) blocks, 0 differ\)", output)
        assert match and int(match.group(1)) > 20000, output
        assert f"{name} dequantize: identical (0 values differ)" in output, output
        assert f"{name} dot4: identical (0 codes, 0 dots differ)" in output, output
    assert "0 checks failed" in output


def test_the_cuda_quantizer_is_compiled_with_ieee_rounding():
    # turbo-block.h's _rn intrinsics keep products and sums unfused; flush-to-zero
    # (part of ggml-cuda's -use_fast_math) has to be undone for the quantizer's file
    cmake = (CSRC / "cuda" / "pyturbo-cuda.cmake").read_text()
    assert "-ftz=false;-prec-div=true;-prec-sqrt=true;-fmad=false" in cmake
    assert re.search(r"set_source_files_properties\(\$\{PYTURBO_CUDA_DIR\}/turbo-cuda\.cu TARGET_DIRECTORY ggml-cuda", cmake)


def test_cuda_trellis_block_math_matches_the_cpu_reference_bit_for_bit(tmp_path):
    # csrc/cuda/turbo-tcq-block.h: the encoder (a serial Viterbi search), the fp16 rounding and
    # the decoder of turbo3t/turbo2t, against csrc/turbo-tcq.c in libggml-base
    compiler = shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler (c++) on the PATH")
    lib_dir = _native.library_dir()
    exe = tmp_path / "turbo_cuda_tcq_check"
    cmd = [compiler, "-std=c++17", "-O2", "-ffp-contract=off", "-Wall", "-Wextra",
           *(f"-I{p}" for p in INCLUDES), str(ROOT / "tests" / "native" / "turbo_cuda_tcq_check.cpp"),
           f"-L{lib_dir}", "-lggml-base", f"-Wl,-rpath,{lib_dir}", "-o", str(exe)]
    built = subprocess.run(cmd, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-4000:]
    assert "turbo-tcq-block.h" not in built.stderr, built.stderr[-4000:]
    result = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert re.search(r"fp16 rounding: identical \(\d+ floats, 0 differ\)", output), output
    for name in ("turbo3t", "turbo2t"):
        match = re.search(rf"{name} blocks: identical \((\d+) blocks, 0 differ\)", output)
        assert match and int(match.group(1)) > 3000, output
        assert f"{name} dequantize: identical (0 values differ)" in output, output
    assert "0 checks failed" in output
