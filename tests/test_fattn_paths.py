"""pyturbo's CPU flash attention gives the same result on each of its paths.

tests/native/fattn_paths_check.cpp runs FLASH_ATTN_EXT through ggml's API on random
data, each query row alone (token segments, over 200 cells and split across threads
over 1000) and twelve rows together (query tiles), for turbo, q8_0, q4_0 and mixed
K/V pairs. They must agree bit for bit: every path runs the one reduction order of
csrc/cpu/turbo-fattn-reduce.h (tests/test_fattn_invariance.py checks the same with
several sequences in a batch).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pyturbo import _native

ROOT = Path(__file__).resolve().parent.parent
GGML_INCLUDE = ROOT / "vendor" / "llama.cpp" / "ggml" / "include"
SOURCE = ROOT / "tests" / "native" / "fattn_paths_check.cpp"

pytestmark = pytest.mark.skipif(not (GGML_INCLUDE / "ggml.h").exists(),
                                reason="vendor/llama.cpp is not materialized (pip install . or cmake does it)")

LINE = re.compile(r"^(\S+)/(\S+) kv=(\d+): max_diff=(\S+) max_out=(\S+)$")


def test_one_row_and_a_batch_of_rows_agree_bit_for_bit_on_every_path(tmp_path):
    compiler = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    assert compiler, "a C++ compiler is needed"
    lib_dir = _native.library_dir()
    exe = tmp_path / "fattn_paths_check"
    subprocess.run([compiler, "-O2", "-std=c++17", str(SOURCE), f"-I{GGML_INCLUDE}", f"-L{lib_dir}",
                    "-lggml", "-lggml-base", "-lggml-cpu", f"-Wl,-rpath,{lib_dir}", "-o", str(exe)], check=True)
    output = subprocess.run([str(exe)], check=True, capture_output=True, text=True, timeout=300).stdout
    results = [LINE.match(line).groups() for line in output.splitlines()]
    pairs = {(k, v) for k, v, *_ in results}
    assert {("turbo2", "turbo2"), ("turbo3", "turbo3"), ("turbo4", "turbo4"), ("q8_0", "turbo3")} <= pairs
    assert len(results) == 16
    for type_k, type_v, n_kv, max_diff, max_out in results:
        assert float(max_out) > 0.5, f"{type_k}/{type_v} kv={n_kv}: an all-zero output proves nothing"
        assert float(max_diff) == 0.0, f"{type_k}/{type_v} kv={n_kv}: paths differ by {max_diff}"
