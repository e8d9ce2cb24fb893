"""pyturbo's C declarations (pyturbo/_cdefs.py) match the vendored llama.cpp headers."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from pyturbo import _cdefs
from pyturbo._native import ffi

ROOT = Path(__file__).resolve().parent.parent
LLAMA_CPP = ROOT / "vendor" / "llama.cpp"
HEADERS = [LLAMA_CPP / "include" / "llama.h", LLAMA_CPP / "ggml" / "include" / "ggml.h",
           LLAMA_CPP / "ggml" / "include" / "ggml-cpu.h",
           LLAMA_CPP / "ggml" / "include" / "ggml-backend.h", LLAMA_CPP / "ggml" / "include" / "ggml-rpc.h",
           ROOT / "csrc" / "llama" / "turbo-kv-transform.h", ROOT / "csrc" / "llama" / "turbo-guard.h",
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
    program = ['#include <stdio.h>', '#include "llama.h"', '#include "ggml-cpu.h"', "int main(void) {"]
    for struct in _cdefs.CHECKED_STRUCTS:
        program.append(f'    printf("%s=%zu\\n", "{struct}", sizeof({struct}));')
    program.append("    return 0;\n}")
    source = tmp_path / "sizes.c"
    source.write_text("\n".join(program))
    exe = tmp_path / "sizes"
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    assert compiler, "a C compiler is needed to measure the C struct layout"
    subprocess.run([compiler, str(source), "-o", str(exe),
                    f"-I{LLAMA_CPP / 'include'}", f"-I{LLAMA_CPP / 'ggml' / 'include'}"], check=True)
    output = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return dict((line.split("=")[0], int(line.split("=")[1])) for line in output.splitlines())


def test_struct_sizes_match_the_c_compiler(tmp_path):
    sizes = compiled_struct_sizes(tmp_path)
    for struct in _cdefs.CHECKED_STRUCTS:
        assert ffi.sizeof(struct) == sizes[struct], struct
