"""The Metal backend's turbo kernels, checked without a Mac.

- The per-block math (csrc/metal/turbo-block.h: code lookup, the 16- and
  4-value dequantize helpers, the quantizer) is compiled as host C++ through the
  stand-in <metal_stdlib> in tests/native/metal-host/ and must reproduce
  csrc/turbo-quants.c (the libggml-base it is linked with) bit for bit.
- ggml's Metal host code (ggml-metal-ops.cpp, -device.cpp, -tuning.cpp of the
  patched tree: plain C++) runs here with stand-ins for its Objective-C half,
  over every op on a turbo type that pyturbo's Metal supports_op accepts: each
  kernel it asks for must be instantiated in a Metal source, so that no pipeline
  lookup fails on a Mac.
- The patch wires pyturbo's Metal sources into ggml-metal: listed for embedding,
  registered as libraries, supports_op delegated.

What only a Mac can check (that the Metal compiler accepts the sources and the
kernels compute what the CPU does) is described in docs/results/metal.md.
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
GGML_METAL = GGML / "src" / "ggml-metal"
CSRC = ROOT / "csrc"
METAL_SOURCES = CSRC / "metal"
NATIVE = ROOT / "tests" / "native"
CXX = shutil.which("c++") or shutil.which("g++")

pytestmark = [
    pytest.mark.skipif(not (GGML_METAL / "ggml-metal-ops.cpp").exists(),
                       reason="vendor/llama.cpp is not materialized (pip install . or cmake does it)"),
    pytest.mark.skipif(CXX is None, reason="no C++ compiler (c++ or g++) to build the host checks"),
]

# ggml-metal's C++ files: the op encoder, the pipeline name builders, the tuning table
METAL_HOST_SOURCES = ["ggml-metal-ops.cpp", "ggml-metal-device.cpp", "ggml-metal-tuning.cpp",
                      "ggml-metal-common.cpp", "ggml-metal-fusion.cpp"]


def link_flags() -> list[str]:
    lib_dir = _native.library_dir()
    return [f"-L{lib_dir}", "-lggml-base", f"-Wl,-rpath,{lib_dir}"]


def metal_functions() -> set[str]:
    """Every kernel function name in the Metal sources: instantiations and plain kernels."""
    names = set()
    for path in [*(GGML_METAL / "kernels").glob("*.metal"), *METAL_SOURCES.glob("*.metal")]:
        text = path.read_text()
        names |= set(re.findall(r'host_name\("([^"]+?)"\s*\)', text))
        names |= set(re.findall(r"^kernel\s+void\s+(\w+)\s*\(", text, re.MULTILINE))
    return names


def test_metal_block_math_matches_the_reference_bit_for_bit(tmp_path):
    exe = tmp_path / "turbo_metal_shim_check"
    # -ffp-contract=off: the sums in the source are plain multiply-then-add, as in turbo-quants.c
    cmd = [CXX, "-std=c++17", "-O2", "-ffp-contract=off", "-Wall", "-Werror=return-type",
           f"-I{NATIVE / 'metal-host'}", f"-I{GGML / 'src'}", f"-I{CSRC}", f"-I{METAL_SOURCES}",
           str(NATIVE / "turbo_metal_shim_check.cpp"), *link_flags(), "-o", str(exe)]
    built = subprocess.run(cmd, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-4000:]

    result = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for name in ("turbo2", "turbo3", "turbo4", "turbo3t", "turbo2t"):
        assert f"{name} quantize: 0 of 20000 blocks differ" in output, output
        assert re.search(rf"{name} dequantize: 0 float and 0 half values differ", output), output
    assert "0 checks failed" in output


@pytest.fixture(scope="module")
def host_code_run(tmp_path_factory) -> str:
    """Output of tests/native/turbo_metal_names.cpp, built against the patched tree."""
    build = tmp_path_factory.mktemp("metal-host")
    include = [f"-I{GGML / 'include'}", f"-I{GGML / 'src'}", f"-I{GGML_METAL}", f"-I{METAL_SOURCES}"]
    objects = []
    for name in METAL_HOST_SOURCES:
        obj = build / (name + ".o")
        built = subprocess.run([CXX, "-std=c++17", "-O1", *include, "-c", str(GGML_METAL / name), "-o", str(obj)],
                               capture_output=True, text=True)
        assert built.returncode == 0, f"{name}:\n{built.stderr[-4000:]}"
        objects.append(str(obj))
    exe = build / "turbo_metal_names"
    built = subprocess.run([CXX, "-std=c++17", "-O1", *include, str(NATIVE / "turbo_metal_names.cpp"),
                            str(METAL_SOURCES / "turbo-metal.cpp"), *objects, *link_flags(), "-o", str(exe)],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-4000:]
    result = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result.stdout


def test_every_kernel_the_metal_host_code_asks_for_is_instantiated(host_code_run):
    requested = re.findall(r"^kernel (\S+)$", host_code_run, re.MULTILINE)
    encoded = int(re.search(r"^encoded (\d+) ops$", host_code_run, re.MULTILINE).group(1))
    # 3 types x (2 SET_ROWS + 3 CPY + GET_ROWS) + 4 GPU families x 6 K/V pairs x 3 head sizes x 11 x 5 shapes
    assert encoded == 18 + 4*6*3*11*5, host_code_run[-2000:]

    missing = sorted(set(requested) - metal_functions())
    assert not missing, f"kernels the Metal host code asks for but no Metal source instantiates: {missing}"

    turbo = {name for name in requested if "turbo" in name}
    for t in ("turbo2", "turbo3", "turbo4"):
        for kernel in (f"kernel_set_rows_f32_i64_{t}", f"kernel_set_rows_f32_i32_{t}", f"kernel_cpy_f32_{t}",
                       f"kernel_cpy_{t}_f32", f"kernel_cpy_{t}_f16", f"kernel_get_rows_{t}",
                       f"kernel_flash_attn_ext_kv_{t}_f16"):
            assert kernel in turbo, kernel
        for dk in (64, 128, 256):
            for kv in (t, f"q8_0_{t}"):
                assert f"kernel_flash_attn_ext_{kv}_dk{dk}_dv{dk}" in turbo
                assert f"kernel_flash_attn_ext_vec_{kv}_dk{dk}_dv{dk}" in turbo
    # q8_0 K takes q8_0's tuned vector-kernel variants; a turbo K has no tuned rows
    assert any(re.fullmatch(r"kernel_flash_attn_ext_vec_q8_0_turbo\d_dk\d+_dv\d+_q\d_ne\d", n) for n in turbo)
    assert not any(re.fullmatch(r"kernel_flash_attn_ext_vec_turbo\d_dk\d+_dv\d+_q\d_ne\d", n) for n in turbo)


def test_metal_supports_op_refuses_what_has_no_kernel(host_code_run):
    answers = dict(re.findall(r"^supports (\S+) (-?\d)$", host_code_run, re.MULTILINE))
    assert answers == {
        "FLASH_ATTN_EXT(turbo3,f16)": "0",
        "FLASH_ATTN_EXT(f16,turbo3)": "0",
        "FLASH_ATTN_EXT(turbo4,turbo3)": "0",
        "FLASH_ATTN_EXT(turbo4,q8_0)": "0",
        "FLASH_ATTN_EXT(turbo3,dk=192)": "0",
        "FLASH_ATTN_EXT(turbo3,dk=256,dv=128)": "0",
        "FLASH_ATTN_EXT(q8_0,q8_0)": "-1",     # no turbo type: upstream decides
        "MUL_MAT(turbo3,f32)": "0",             # no turbo mat-mul kernels: the CPU runs K*Q without flash attention
        "CPY(turbo3,turbo4)": "0",
        "SET_ROWS(f16,turbo3)": "0",
        "VIEW(turbo3)": "-1",                  # no kernel runs for a view
    }


def test_patch_wires_the_turbo_metal_sources_into_ggml_metal():
    sources = sorted(p.name for p in METAL_SOURCES.glob("*.metal"))
    assert sources == ["fa_turbo.metal", "fa_vec_turbo.metal"]
    cmake = (GGML_METAL / "CMakeLists.txt").read_text()
    device_m = (GGML_METAL / "ggml-metal-device.m").read_text()
    for source in sources:
        stem = source.removesuffix(".metal")
        # embedded (or compiled to .air) with the others, and a library of its own at run time
        assert f"${{PYTURBO_METAL_DIR}}/{source}" in cmake
        assert re.search(rf"X\(\w+,\s*{stem}\)", device_m), stem
    # every source that uses the turbo helpers gets both headers inlined when embedded
    for kernel_source in [*(GGML_METAL / "kernels").glob("*.metal"), *METAL_SOURCES.glob("*.metal")]:
        text = kernel_source.read_text()
        if '#include "turbo-block.h"' in text:
            assert text.index('#include "turbo-common.h"') < text.index('#include "turbo-block.h"'), kernel_source
    assert '-e "/\\#include \\"turbo-block.h\\"/d"' in cmake and '-e "/\\#include \\"turbo-common.h\\"/d"' in cmake
    assert "pyturbo_metal_supports_op(op, has_simdgroup_mm, &turbo_supported)" in device_m
    top = (ROOT / "CMakeLists.txt").read_text()
    assert "set(PYTURBO_METAL_DIR ${CMAKE_CURRENT_SOURCE_DIR}/csrc/metal)" in top
    assert top.index("set(PYTURBO_METAL_DIR") < top.index("add_subdirectory(${PYTURBO_LLAMA_CPP_DIR}")
    assert "GGML_METAL_EMBED_LIBRARY ON" in top
