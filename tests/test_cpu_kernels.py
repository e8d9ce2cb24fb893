"""The SIMD turbo kernels against the scalar reference, for every instruction set this machine can run.

tests/native/turbo_simd_check.c is compiled with the flags of each x86 level
(AVX-512 where the CPU has it, AVX2, none) together with csrc/cpu/, linked to
pyturbo's libggml-base, and run: identical codes and dequantized values, dot
products within float rounding. The ARM NEON kernels are cross-compiled for
AArch64 with clang against the host's headers and must define every kernel (a
compile check that needs no AArch64 sysroot); tests/test_neon_qemu.py runs them.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pyturbo import _native

ROOT = Path(__file__).resolve().parent.parent
GGML = ROOT / "vendor" / "llama.cpp" / "ggml"
CSRC = ROOT / "csrc"
KERNEL_SOURCES = [CSRC / "cpu" / "turbo.c", CSRC / "cpu" / "turbo-tcq-cpu.c", CSRC / "cpu" / "arch" / "x86" / "turbo.c",
                  CSRC / "cpu" / "arch" / "arm" / "turbo.c"]
INCLUDES = [GGML / "include", GGML / "src", GGML / "src" / "ggml-cpu", CSRC, CSRC / "cpu"]
KERNEL_SYMBOLS = (["pyturbo_pick_codes"]
                  + [name for n in (2, 3, 4) for name in (f"pyturbo_dequantize_row_turbo{n}", f"ggml_vec_dot_turbo{n}_f32")]
                  + ["pyturbo_dequantize_row_turbo3t", "pyturbo_dequantize_row_turbo2t"])

pytestmark = pytest.mark.skipif(not (GGML / "include" / "ggml.h").exists(),
                                reason="vendor/llama.cpp is not materialized (pip install . or cmake does it)")


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    match = re.search(r"^flags\s*:\s*(.*)$", text, re.MULTILINE)
    return set(match.group(1).split()) if match else set()


X86_LEVELS = {
    "avx512": (["-mavx512f", "-mavx2", "-mfma", "-mf16c"], {"avx512f", "avx2", "fma", "f16c"}, "x86 AVX-512"),
    "avx2": (["-mavx2", "-mfma", "-mf16c"], {"avx2", "fma", "f16c"}, "x86 AVX2"),
    "generic": (["-mno-avx"], set(), "none (generic kernels only)"),
}


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 kernels: an x86-64 CPU runs them")
@pytest.mark.parametrize("level", list(X86_LEVELS))
def test_simd_kernels_match_the_scalar_reference(level, tmp_path):
    flags, needed, banner = X86_LEVELS[level]
    missing = needed - cpu_flags()
    if missing:
        pytest.skip(f"this CPU lacks {sorted(missing)}")
    lib_dir = _native.library_dir()
    exe = tmp_path / "turbo_simd_check"
    # -ffp-contract=off as the build compiles the trellis encoder (turbo-tcq-cpu.c)
    compile_cmd = ["cc", "-O2", "-std=gnu11", "-D_GNU_SOURCE", "-ffp-contract=off", *flags, *(f"-I{p}" for p in INCLUDES),
                   str(ROOT / "tests" / "native" / "turbo_simd_check.c"), *map(str, KERNEL_SOURCES),
                   f"-L{lib_dir}", "-lggml-cpu", "-lggml-base", f"-Wl,-rpath,{lib_dir}", "-lm", "-o", str(exe)]
    built = subprocess.run(compile_cmd, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-4000:]

    result = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"simd: {banner}" in output
    for name in ("turbo2", "turbo3", "turbo4", "turbo3t", "turbo2t"):
        assert f"{name} codes: identical" in output
        assert f"{name} dequantize: identical" in output
        assert re.search(rf"{name} vec_dot: worst relative error \S+ ok", output), output
    assert "0 checks failed" in output


@pytest.mark.skipif(shutil.which("clang") is None, reason="clang (the cross compiler) is not installed")
def test_neon_kernels_cross_compile_for_aarch64(tmp_path):
    # No AArch64 sysroot here: the host's C headers serve for a compile-only check
    # (they only ask for gnu/stubs-32.h, given empty, when __x86_64__ is undefined).
    shim = tmp_path / "shim"
    (shim / "gnu").mkdir(parents=True)
    (shim / "gnu" / "stubs-32.h").write_text("")
    host_arch_headers = [p for p in Path("/usr/include").glob("*-linux-gnu") if p.is_dir()]
    obj = tmp_path / "turbo-arm.o"
    cmd = ["clang", "--target=aarch64-linux-gnu", "-march=armv8.2-a+fp16", "-O2", "-std=gnu11", "-c",
           "-Werror=implicit-function-declaration", "-Wall", "-Wno-pointer-to-int-cast",
           f"-isystem{shim}", *(f"-isystem{p}" for p in host_arch_headers), *(f"-I{p}" for p in INCLUDES),
           str(CSRC / "cpu" / "arch" / "arm" / "turbo.c"), "-o", str(obj)]
    built = subprocess.run(cmd, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-4000:]
    assert "error" not in built.stderr

    header = obj.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
    symbols = subprocess.run(["nm", "--defined-only", str(obj)], capture_output=True, text=True).stdout
    defined = {line.split()[-1] for line in symbols.splitlines() if " T " in line}
    assert set(KERNEL_SYMBOLS) <= defined, sorted(defined)
