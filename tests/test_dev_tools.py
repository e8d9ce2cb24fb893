"""llama.cpp's own kernel tests for the turbo types and pyturbo's CPU flash attention.

test-backend-ops compares the CPU backend with its reference mode (the per-row
flash-attention loop, scalar kernels); test-quantize-fns checks the turbo
quantizers and dot products.

They need the developer tools (README, "Developing"): cmake -S . -B build-dev
-DPYTURBO_DEV_TOOLS=ON ... CI builds them before running pytest, so these run
there; PYTURBO_DEV_BUILD points at another build folder.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEV_BIN = Path(os.environ.get("PYTURBO_DEV_BUILD", ROOT / "build-dev")) / "bin"

pytestmark = pytest.mark.skipif(
    not (DEV_BIN / "test-backend-ops").exists() or not (DEV_BIN / "test-quantize-fns").exists(),
    reason=f"llama.cpp developer tools not built in {DEV_BIN} (README: Developing)")

# Cases patches/0003-turbo-tests.patch adds per op (or that ggml's own type lists
# gain from the turbo types), so a filter that silently matches nothing fails.
MIN_TURBO_CASES = {"SET_ROWS": 120, "CPY": 85, "GET_ROWS": 40, "MUL_MAT": 60, "FLASH_ATTN_EXT": 465}


def run_tool(*args: str) -> str:
    result = subprocess.run([str(DEV_BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


@pytest.mark.parametrize("op", sorted(MIN_TURBO_CASES))
def test_backend_ops_turbo_cases_match_the_cpu_reference(op):
    output = run_tool("test-backend-ops", "test", "-b", "CPU", "-o", op, "-p", "turbo")
    passed = re.search(r"(\d+)/(\d+) tests passed", output)
    assert passed, output[-4000:]
    n_passed, n_total = int(passed.group(1)), int(passed.group(2))
    assert n_passed == n_total >= MIN_TURBO_CASES[op], output[-4000:]
    assert "FAIL" not in output


def test_backend_ops_upstream_quantized_caches_take_the_new_path_and_match_the_reference():
    # q8_0/q4_0 K with q8_0/q4_0/f16 V: llama.cpp's cases plus patch 0003's, which
    # cover the split-KV decode, the dot-product and GEMM tiles, sinks, ALiBi, softcap
    output = run_tool("test-backend-ops", "test", "-b", "CPU", "-o", "FLASH_ATTN_EXT",
                      "-p", "type_K=(q8_0|q4_0),type_V=(q8_0|q4_0|f16)")
    passed = re.search(r"(\d+)/(\d+) tests passed", output)
    assert passed, output[-4000:]
    assert int(passed.group(1)) == int(passed.group(2)) >= 700, output[-4000:]
    assert "FAIL" not in output


def test_quantize_fns_pass_for_every_turbo_type():
    output = run_tool("test-quantize-fns", "-v")
    for name in ("turbo2", "turbo3", "turbo4", "turbo3t", "turbo2t"):
        lines = [line for line in output.splitlines() if line.strip().startswith(name + " ")]
        # absolute error, reference error, dot product error (+ nrc=2 where supported)
        assert len(lines) >= 3, output[-4000:]
        assert all(re.search(r":\s+ok \(", line) for line in lines), "\n".join(lines)
    assert "0 tests failed" in output
