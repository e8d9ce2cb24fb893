"""pyturbo's CPU flash attention is batch-invariant and keeps sequences apart.

tests/native/fattn_invariance_check.cpp runs FLASH_ATTN_EXT through ggml's API: one sequence
alone (its cells contiguous, 1 and 4 threads, and its queries one at a time) against the same
sequence in a batch with others whose cells are interleaved with its own and hold extreme
values (quantized from +-1e4, or bytes 0xFF: NaN and inf scales), with 1 to 4 threads, on the
decode (token segments), prefill (query tiles mixing sequences) and long split paths, for
turbo, q8_0, q4_0 and mixed pairs. Its rows must be bit for bit the same in every run (the
kernel's reduction order depends only on the row's own visible cells,
csrc/cpu/turbo-fattn-reduce.h), and within float rounding of a float64 softmax over them.
Before that order was fixed the differences were rounding (up to 1.4e-6 with finite
extremes) and NaN leaked in from other sequences' non-finite cells (docs/results/server-load.md).
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
SOURCE = ROOT / "tests" / "native" / "fattn_invariance_check.cpp"

pytestmark = pytest.mark.skipif(not (GGML_INCLUDE / "ggml.h").exists(),
                                reason="vendor/llama.cpp is not materialized (pip install . or cmake does it)")

LINE = re.compile(r"^(\S+)/(\S+) (decode|prefill|split) (big|nan): "
                  r"max_diff=(\S+) max_err=(\S+) max_out=(\S+) runs=(\d+)$")


def test_each_sequence_in_a_batch_equals_it_alone_bit_for_bit_whatever_the_others_hold(tmp_path):
    compiler = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    assert compiler, "a C++ compiler is needed"
    lib_dir = _native.library_dir()
    exe = tmp_path / "fattn_invariance_check"
    subprocess.run([compiler, "-O2", "-std=c++17", str(SOURCE), f"-I{GGML_INCLUDE}", f"-L{lib_dir}",
                    "-lggml", "-lggml-base", "-lggml-cpu", f"-Wl,-rpath,{lib_dir}", "-o", str(exe)], check=True)
    output = subprocess.run([str(exe)], check=True, capture_output=True, text=True, timeout=600).stdout
    lines = output.splitlines()
    assert all(LINE.match(line) for line in lines), output
    results = [LINE.match(line).groups() for line in lines]
    assert len(results) == 8 * 3 * 2  # pairs x paths x fills
    assert {("q8_0", "q8_0"), ("q8_0", "turbo3"), ("turbo3", "turbo3")} <= {(k, v) for k, v, *_ in results}
    for type_k, type_v, path, fill, max_diff, max_err, max_out, runs in results:
        case = f"{type_k}/{type_v} {path} {fill}"
        assert int(runs) >= 6, case
        assert float(max_out) > 0.1, f"{case}: an all-zero output proves nothing"
        assert float(max_diff) == 0.0, f"{case}: the sequence in a batch differs from it alone by {max_diff}"
        assert float(max_err) < 1e-5 * float(max_out), f"{case}: {max_err} from the float64 softmax"
