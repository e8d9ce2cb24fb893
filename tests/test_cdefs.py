"""pyturbo's C declarations (pyturbo/_cdefs.py) match the vendored llama.cpp headers."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyturbo
from pyturbo import _cdefs, _ffi_build, _native
from pyturbo._native import ffi

ROOT = Path(__file__).resolve().parent.parent
LLAMA_CPP = ROOT / "vendor" / "llama.cpp"
HEADERS = [LLAMA_CPP / "include" / "llama.h", LLAMA_CPP / "ggml" / "include" / "ggml.h",
           LLAMA_CPP / "ggml" / "include" / "ggml-cpu.h",
           LLAMA_CPP / "ggml" / "include" / "ggml-backend.h", LLAMA_CPP / "ggml" / "include" / "ggml-rpc.h",
           ROOT / "csrc" / "llama" / "turbo-kv-transform.h", ROOT / "csrc" / "llama" / "turbo-guard.h",
           ROOT / "csrc" / "llama" / "turbo-context-memory.h",
           ROOT / "csrc" / "rpc" / "turbo-rpc.h"]


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def normalize_type(text: str) -> str:
    text = re.sub(r"\b(GGML_RESTRICT|struct|enum)\b", " ", text)
    text = re.sub(r"\s*\*\s*", " * ", text)
    return " ".join(text.split())


def split_params(params: str) -> list[str]:
    """Parameter types only: the trailing parameter name is dropped."""
    params = params.strip()
    if params in ("", "void"):
        return []
    types = []
    for param in params.split(","):
        param = normalize_type(param)
        name = re.match(r"^(.*?)\s*\b(\w+)$", param)
        # A lone type (no name) keeps everything.
        if name and name.group(1) and not name.group(1).endswith(("const", "unsigned")):
            param = name.group(1)
        types.append(normalize_type(param))
    return types


DECL = re.compile(r"(?:LLAMA_API|GGML_API|GGML_BACKEND_API)\s+(?:DEPRECATED\s*\()?\s*"
                  r"([\w\s\*]+?)\s*\b(\w+)\s*\(([^;{}]*?)\)\s*(?:,\s*\"[^\"]*\"\s*\))?\s*;", re.S)
CDEF_DECL = re.compile(r"^\s*([\w\s\*]+?)\s*\b(\w+)\s*\(([^;{}()]*(?:\([^)]*\)[^;{}()]*)*)\)\s*;", re.M | re.S)


def header_functions() -> dict[str, tuple[str, list[str]]]:
    functions = {}
    for header in HEADERS:
        for ret, name, params in DECL.findall(strip_comments(header.read_text())):
            functions[name] = (normalize_type(ret), split_params(params))
    return functions


def cdef_functions() -> dict[str, tuple[str, list[str]]]:
    text = strip_comments(_cdefs.GGML_CDEFS + _cdefs.GGML_CPU_CDEFS + _cdefs.GGML_BACKEND_CDEFS
                          + _cdefs.GGML_RPC_CDEFS + _cdefs.LLAMA_CDEFS
                          + _cdefs.PYTURBO_LLAMA_CDEFS)
    text = re.sub(r"typedef[^;]*;", "", text)  # function-pointer typedefs are not functions
    text = re.sub(r"(struct|enum|union)\s+\w*\s*\{[^{}]*(\{[^{}]*\}[^{}]*)*\}\s*\w*\s*;", "", text, flags=re.S)
    return {name: (normalize_type(ret), split_params(params))
            for ret, name, params in CDEF_DECL.findall(text)}


def test_every_declared_function_exists_in_the_headers_with_the_same_signature():
    declared = cdef_functions()
    assert len(declared) > 50
    in_headers = header_functions()
    mismatches = []
    for name, signature in declared.items():
        if name not in in_headers:
            mismatches.append(f"{name}: not in {', '.join(h.name for h in HEADERS)}")
        elif in_headers[name] != signature:
            mismatches.append(f"{name}: cdef {signature} != header {in_headers[name]}")
    assert not mismatches, "\n".join(mismatches)


def test_parser_sees_known_header_signatures():
    # Guards the checker itself: it must read llama.h's multi-line declarations.
    functions = header_functions()
    assert functions["llama_tokenize"] == (
        "int32_t", ["const llama_vocab *", "const char *", "int32_t", "llama_token *", "int32_t", "bool", "bool"])
    assert functions["llama_backend_init"] == ("void", [])


def compiled_struct_sizes(tmp_path: Path) -> dict[str, int]:
    program = ['#include <stdio.h>', '#include "llama.h"', '#include "ggml-cpu.h"', '#include "turbo-context-memory.h"',
               "int main(void) {"]
    for struct in _cdefs.CHECKED_STRUCTS:
        program.append(f'    printf("%s=%zu\\n", "{struct}", sizeof({struct}));')
    program.append("    return 0;\n}")
    source = tmp_path / "sizes.c"
    source.write_text("\n".join(program))
    exe = tmp_path / "sizes"
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    assert compiler, "a C compiler is needed to measure the C struct layout"
    subprocess.run([compiler, str(source), "-o", str(exe),
                    f"-I{LLAMA_CPP / 'include'}", f"-I{LLAMA_CPP / 'ggml' / 'include'}",
                    f"-I{ROOT / 'csrc' / 'llama'}"], check=True)
    output = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return dict((line.split("=")[0], int(line.split("=")[1])) for line in output.splitlines())


def test_struct_sizes_match_the_c_compiler(tmp_path):
    sizes = compiled_struct_sizes(tmp_path)
    for struct in _cdefs.CHECKED_STRUCTS:
        assert ffi.sizeof(struct) == sizes[struct], struct


def test_every_declaration_block_reaches_the_ffi():
    # a block _ffi_build.BLOCKS does not list would be declared but never given to cffi
    blocks = [name for name, value in vars(_cdefs).items() if name.endswith("_CDEFS") and isinstance(value, str)]
    assert sorted(blocks) == sorted(_ffi_build.BLOCKS)


def generated_module(out_dir: Path):
    path = _ffi_build.write_module(_cdefs, out_dir)
    spec = importlib.util.spec_from_file_location(_ffi_build.MODULE, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_module_generated_at_build_time_holds_what_parsing_gives(tmp_path):
    generated = generated_module(tmp_path).ffi
    parsed = _ffi_build.parse(_cdefs)
    assert generated.list_types() == parsed.list_types()
    for struct in _cdefs.CHECKED_STRUCTS:
        assert generated.sizeof(struct) == parsed.sizeof(struct), struct


def test_native_takes_the_generated_module_only_when_made_from_these_declarations(tmp_path, monkeypatch):
    module = generated_module(tmp_path)
    monkeypatch.setitem(sys.modules, _ffi_build.MODULE, module)
    monkeypatch.setattr(pyturbo, "_pyturbo_cffi", module, raising=False)  # as an installed one would be
    assert _native._interface() is module.ffi
    monkeypatch.setattr(module, "DIGEST", "made from other declarations")
    stale = _native._interface()
    assert stale is not module.ffi and stale.sizeof("struct llama_batch") == module.ffi.sizeof("struct llama_batch")
