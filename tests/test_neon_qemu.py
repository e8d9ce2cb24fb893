"""The ARM NEON turbo kernels, run: cross-compiled for AArch64 and executed under qemu-user.

tests/native/turbo_simd_check.c is built from the sources with the AArch64 cross
compilers (GCC for a baseline ARMv8.0 and an ARMv8.2 CPU with fp16/dotprod;
clang, the compiler Apple's toolchain is, for an ARMv8.5 one), statically, and
run with qemu-aarch64: the NEON code picker gives the reference's codes, the
NEON dequantize its values bit for bit, vec_dot agrees within float rounding
(the x86 kernels' bound), and the reference quantizer itself, built for AArch64
with the flags pyturbo-kernels.cmake gives it, makes the same bytes as the
host's shipped libggml-base (its digest over 16384 blocks).

These kernels are also what the CPU flash-attention path (turbo-fattn.cpp)
uses to convert turbo K/V rows on ARM; it has no ARM code of its own.

Nothing is installed here: .ci/run installs qemu-user, gcc-aarch64-linux-gnu,
libc6-dev-arm64-cross, clang and lld. Each test skips, naming what is missing,
only when a tool is absent.
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
CHECK_SOURCE = ROOT / "tests" / "native" / "turbo_simd_check.c"
INCLUDES = [GGML / "include", GGML / "src", GGML / "src" / "ggml-cpu", CSRC, CSRC / "cpu"]
# ggml-base's part (the block scale) and ggml-cpu's part (the kernels), as the build splits them
REFERENCE_SOURCES = [CSRC / "turbo-quants.c", CSRC / "turbo-tcq.c"]
KERNEL_SOURCES = [CSRC / "cpu" / "turbo.c", CSRC / "cpu" / "turbo-tcq-cpu.c", CSRC / "cpu" / "arch" / "arm" / "turbo.c"]
TYPES = ("turbo2", "turbo3", "turbo4", "turbo3t", "turbo2t")

# compiler, its extra arguments, -march
TARGETS = {
    "gcc-armv8.0": ("aarch64-linux-gnu-gcc", [], "armv8-a"),
    "gcc-armv8.2-fp16-dotprod": ("aarch64-linux-gnu-gcc", [], "armv8.2-a+fp16+dotprod"),
    "clang-armv8.5-fp16-dotprod": ("clang", ["--target=aarch64-linux-gnu", "-fuse-ld=lld"], "armv8.5-a+fp16+dotprod"),
}

pytestmark = pytest.mark.skipif(not (GGML / "include" / "ggml.h").exists(),
                                reason="vendor/llama.cpp is not materialized (pip install . or cmake does it)")


def reference_flags() -> list[str]:
    """The compile options pyturbo-kernels.cmake sets on turbo-quants.c and turbo-tcq.c (GCC/clang)."""
    cmake = (CSRC / "pyturbo-kernels.cmake").read_text()
    match = re.search(r"turbo-quants\.c\s+\S*turbo-tcq\.c\s+TARGET_DIRECTORY ggml-base\s+PROPERTIES COMPILE_OPTIONS ([^)\n]+)",
                      cmake)
    assert match, "pyturbo-kernels.cmake no longer sets COMPILE_OPTIONS on turbo-quants.c and turbo-tcq.c"
    return match.group(1).split()


def missing_tools(compiler: str) -> list[str]:
    needed = {"qemu-aarch64": "qemu-user", compiler: "gcc-aarch64-linux-gnu" if "gcc" in compiler else "clang"}
    if compiler == "clang":
        needed["ld.lld"] = "lld"
    missing = [f"{tool} (Debian package {package})" for tool, package in needed.items() if shutil.which(tool) is None]
    if not Path("/usr/aarch64-linux-gnu/lib/libc.a").exists():
        missing.append("the AArch64 C library (Debian package libc6-dev-arm64-cross)")
    return missing


def parse_check(output: str) -> dict[str, str]:
    """Asserts every line of a passing run and returns each type's reference digest."""
    digests = {}
    for name in TYPES:
        assert f"{name} codes: identical" in output, output
        assert f"{name} dequantize: identical" in output, output
        assert re.search(rf"{name} vec_dot: worst relative error \S+ ok", output), output
        match = re.search(rf"{name} reference digest: ([0-9a-f]{{16}})", output)
        assert match, output
        digests[name] = match.group(1)
    assert "0 checks failed" in output, output
    return digests


@pytest.fixture(scope="module")
def host_digests(tmp_path_factory) -> dict[str, str]:
    """Digests of the host's shipped reference quantizer (libggml-base)."""
    lib_dir = _native.library_dir()
    exe = tmp_path_factory.mktemp("host") / "turbo_simd_check"
    kernels = [CSRC / "cpu" / "turbo.c", CSRC / "cpu" / "turbo-tcq-cpu.c",
               *(CSRC / "cpu" / "arch" / arch / "turbo.c" for arch in ("x86", "arm"))]
    cmd = ["cc", "-O2", "-std=gnu11", "-D_GNU_SOURCE", "-ffp-contract=off", *(f"-I{p}" for p in INCLUDES), str(CHECK_SOURCE),
           *map(str, kernels), f"-L{lib_dir}", "-lggml-cpu", "-lggml-base", f"-Wl,-rpath,{lib_dir}", "-lm", "-o", str(exe)]
    built = subprocess.run(cmd, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-4000:]
    result = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return parse_check(result.stdout)


@pytest.mark.parametrize("target", list(TARGETS))
def test_neon_kernels_match_the_reference_under_qemu(target, tmp_path, host_digests):
    compiler, extra, march = TARGETS[target]
    missing = missing_tools(compiler)
    if missing:
        pytest.skip("cannot run AArch64 code here: missing " + ", ".join(missing))

    common = [compiler, *extra, f"-march={march}", "-O2", "-std=gnu11", "-D_GNU_SOURCE", "-ffp-contract=off",
              "-Werror=implicit-function-declaration", *(f"-I{p}" for p in INCLUDES)]
    # gc-sections drops quantize_turboN (ggml_quantize_chunk's entries, which need libggml-base's
    # ggml_row_size): the check calls only the row functions, so it links from these sources alone
    reference_objs = []
    for source in REFERENCE_SOURCES:
        reference_objs.append(tmp_path / (source.stem + ".o"))
        built = subprocess.run([*common, "-ffunction-sections", *reference_flags(), "-c", str(source),
                                "-o", str(reference_objs[-1])], capture_output=True, text=True)
        assert built.returncode == 0, built.stderr[-4000:]
    exe = tmp_path / "turbo_simd_check"
    built = subprocess.run([*common, "-static", "-ffunction-sections", "-Wl,--gc-sections", str(CHECK_SOURCE),
                            *map(str, reference_objs), *map(str, KERNEL_SOURCES), "-lm", "-o", str(exe)],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-4000:]
    header = exe.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64

    result = subprocess.run(["qemu-aarch64", str(exe)], capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "simd: ARM NEON" in output, output
    digests = parse_check(output)
    assert digests == host_digests, f"AArch64 reference quantizer differs from the host's: {digests} vs {host_digests}"
