"""The turbo types on a Vulkan device (csrc/vulkan, patches/0011), run on Mesa's llvmpipe.

llvmpipe (lavapipe) is a conforming Vulkan 1.3 device that runs on the CPU, so CI executes
the Vulkan kernels where no GPU is. They need the developer tools built with Vulkan
(README, "Build options"; .ci/run does it): cmake -S . -B build-dev -DPYTURBO_DEV_TOOLS=ON
-DGGML_VULKAN=ON, with Debian's glslc, libvulkan-dev, spirv-headers and mesa-vulkan-drivers;
PYTURBO_DEV_BUILD points at another build folder. ggml leaves CPU-type Vulkan devices out
unless asked: GGML_VK_VISIBLE_DEVICES=0 asks for the first.

Pipeline compilation dominates on llvmpipe (a head size 256 prefill pipeline takes over two
minutes), so flash attention runs one decode case per K/V pair and head size and one prefill
case per pair (head size 64); SET_ROWS, GET_ROWS and CPY run every turbo case.
docs/results/vulkan-lavapipe.md has every turbo flash-attention case, run by hand.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyturbo.selftest import DEFAULT_PAIRS

ROOT = Path(__file__).resolve().parent.parent
DEV_BIN = Path(os.environ.get("PYTURBO_DEV_BUILD", ROOT / "build-dev")) / "bin"
GGML_INCLUDE = ROOT / "vendor" / "llama.cpp" / "ggml" / "include"

pytestmark = pytest.mark.skipif(
    not (DEV_BIN / "test-backend-ops").exists() or not list(DEV_BIN.glob("libggml-vulkan*")),
    reason=f"no Vulkan build of the developer tools in {DEV_BIN} (cmake ... -DGGML_VULKAN=ON)")

VULKAN_ENV = {**os.environ, "GGML_VK_VISIBLE_DEVICES": os.environ.get("GGML_VK_VISIBLE_DEVICES", "0")}

# every turbo case patches/0003 gives these ops, less those the Vulkan backend refuses (CPY
# between turbo and f16/bf16, which llama.cpp never asks for: the scheduler runs them on the CPU)
MIN_SUPPORTED = {"SET_ROWS": 120, "GET_ROWS": 40, "CPY": 35}
FA_DECODE = (r"nr23=\[2,1\],kv=512,nb=1,mask=1,sinks=0,max_bias=0.000000,logit_softcap=0.000000,prec=f32,"
             r"type_K=(turbo.t?|q8_0),type_V=turbo.t?,")
FA_PREFILL = (r"hsk=64,hsv=64,nh=4,nr23=\[2,1\],kv=512,nb=32,mask=1,sinks=0,max_bias=0.000000,"
              r"logit_softcap=0.000000,prec=f32,type_K=(turbo.t?|q8_0),type_V=turbo.t?,")


def backend_ops(op: str, pattern: str) -> "tuple[int, int, str]":
    """(passed, total) of test-backend-ops on Vulkan0 against the CPU, and its output."""
    result = subprocess.run([str(DEV_BIN / "test-backend-ops"), "test", "-b", "Vulkan0", "-o", op, "-p", pattern],
                            capture_output=True, text=True, timeout=1200, env=VULKAN_ENV)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "llvmpipe" in output or "Vulkan0" in output, output[-2000:]
    passed = re.search(r"(\d+)/(\d+) tests passed", output)
    assert passed, output[-4000:]
    return int(passed.group(1)), int(passed.group(2)), output


@pytest.mark.parametrize("op", sorted(MIN_SUPPORTED))
def test_the_kv_write_reads_and_copies_match_the_cpu_on_vulkan(op):
    passed, total, output = backend_ops(op, "turbo")
    assert passed == total >= MIN_SUPPORTED[op], output[-4000:]
    assert "FAIL" not in output


def test_flash_attention_with_turbo_k_and_v_matches_the_cpu_on_vulkan():
    # turbo2/3/4/3t/2t symmetric and q8_0 K with each turbo V, head sizes 64, 128 and 256
    passed, total, output = backend_ops("FLASH_ATTN_EXT", FA_DECODE)
    assert passed == total == 30, output[-4000:]
    passed, total, output = backend_ops("FLASH_ATTN_EXT", FA_PREFILL)  # the same pairs, 32 queries, head size 64
    assert passed == total == 10, output[-4000:]


def test_mul_mat_with_a_turbo_operand_is_refused_not_computed_on_vulkan():
    passed, total, output = backend_ops("MUL_MAT", "turbo")
    assert (passed, total) == (0, 0), output[-4000:]
    assert output.count("not supported [Vulkan0]") >= 60


def test_the_vulkan_block_math_equals_the_cpu_byte_for_byte(tmp_path):
    compiler = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    assert compiler, "a C++ compiler is needed"
    exe = tmp_path / "turbo_vulkan_check"
    subprocess.run([compiler, "-O2", "-std=c++17", str(ROOT / "tests" / "native" / "turbo_vulkan_check.cpp"),
                    f"-I{GGML_INCLUDE}", f"-L{DEV_BIN}", "-lggml", "-lggml-base", "-lggml-cpu",
                    f"-Wl,-rpath,{DEV_BIN}", "-o", str(exe)], check=True)
    output = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600, env=VULKAN_ENV, check=True).stdout
    results = re.findall(r"^(turbo\dt?) (\S+): rows=\d+ bytes=(\d+) differing=(\d+)$", output, re.M)
    assert len(results) == 20, output
    assert all(int(n_bytes) > 0 and differing == "0" for _, _, n_bytes, differing in results), output


def run_pyturbo(code: str, *args: str) -> str:
    """A Python child using the Vulkan build's libraries (PYTURBO_LIB_DIR)."""
    env = {**VULKAN_ENV, "PYTURBO_LIB_DIR": str(DEV_BIN)}
    result = subprocess.run([sys.executable, *(["-c", code] if code else []), *args], capture_output=True, text=True,
                            timeout=1500, env=env, cwd=ROOT)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result.stdout


@pytest.mark.slow
def test_selftest_passes_every_default_pair_on_the_vulkan_device(smol_path, tmp_path):
    report = tmp_path / "selftest.json"
    output = run_pyturbo("", "-m", "pyturbo.selftest", str(smol_path), "--device", "Vulkan0", "--probes", "4",
                         "--json", str(report))
    assert "passed on CPU, Vulkan0" in output, output[-3000:]
    rows = json.loads(report.read_text())
    vulkan = [r for r in rows if r["device"] == "Vulkan0"]
    assert len(vulkan) == 2 * len(DEFAULT_PAIRS.split(","))  # decode and prefill
    assert all(r["passed"] for r in rows), output[-3000:]


GREEDY = """
import json, sys, pyturbo
prompt = "The capital of France is Paris. The capital of Italy is"
tokens = {}
for where, kwargs in (("CPU", dict(n_gpu_layers=0)), ("Vulkan0", dict(n_gpu_layers=99, devices=["Vulkan0"]))):
    with pyturbo.Model(sys.argv[1], **kwargs) as model:
        for pair in (("q8_0", "turbo3"), ("turbo3", "turbo3"), ("turbo3t", "turbo3t")):
            with model.context(n_ctx=512, cache_k=pair[0], cache_v=pair[1], n_threads=2) as ctx:
                text = ctx.complete(prompt, max_tokens=12)
                tokens[where + " " + "/".join(pair)] = ctx.tokenize(text, add_special=False)
print(json.dumps(tokens))
"""


@pytest.mark.slow
def test_greedy_generation_on_vulkan_starts_as_on_the_cpu(smol_path):
    tokens = json.loads(run_pyturbo(GREEDY, str(smol_path)).splitlines()[-1])
    # Rounding differs between any two backends of a quantized model; the first tokens must
    # not. Measured: q8_0/turbo3 and turbo3/turbo3 agree for 5 and 9 tokens; turbo3t/turbo3t
    # for the answer " Rome." only, as the token after it is a near-tie on every device (" The"
    # over "\n" by 0.37 logits with the f16 cache on the CPU, by 0.16 on llvmpipe: the
    # device's own arithmetic moves it by 0.2; with turbo3t by 0.31 on the CPU, 0.008 here).
    for pair, agreeing in (("q8_0/turbo3", 4), ("turbo3/turbo3", 4), ("turbo3t/turbo3t", 2)):
        cpu, vulkan = tokens["CPU " + pair], tokens["Vulkan0 " + pair]
        assert len(cpu) >= 4 and cpu[:agreeing] == vulkan[:agreeing], (pair, cpu, vulkan)
