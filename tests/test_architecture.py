"""The package's shape: imports point one way (bindings -> API -> tools), no cycles, small modules,
and header-only work never loads the native library."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pyturbo"
MAX_MODULE_LINES = 500
# Command-line modules: each a `python -m` entry point. Nothing else may import them.
TOOLS = {"pyturbo.run", "pyturbo.bench", "pyturbo.eval", "pyturbo.fit", "pyturbo.quantize", "pyturbo.info",
         "pyturbo.selftest", "pyturbo.server", "pyturbo.rpc_worker", "pyturbo.llama_cpp.server", "pyturbo.convert"}
# Modules that work from a GGUF header (or from nothing) and must not reach for the inference
# stack; with every pyturbo.upstream module.
HEADER_ONLY = {"pyturbo.gguf", "pyturbo.units", "pyturbo.errors", "pyturbo.host", "pyturbo.cache_types",
               "pyturbo.memory", "pyturbo.fit", "pyturbo.info", "pyturbo.plan_plots", "pyturbo.kv_transform"}
INFERENCE_STACK = {"pyturbo.context", "pyturbo.model", "pyturbo._native"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set) -> set:
    """The pyturbo modules a file imports, at module level or inside functions."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules}
    return found - {name}


def import_graph() -> dict:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imported_modules(p, modules) for p in paths}


def find_cycle(graph: dict) -> list:
    """One import cycle as a list of modules, or [] (a package's __init__ importing its own
    submodules is how packages work and is not counted)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph[node]):
            if node.startswith(dep + "."):  # a submodule importing its own package
                continue
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = "done"
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_the_package_has_no_import_cycle():
    assert find_cycle(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_only_the_package_entry_points_import_command_line_modules():
    for module, deps in import_graph().items():
        if module in ("pyturbo", "pyturbo.llama_cpp"):
            continue
        assert not (deps & TOOLS) - {module}, f"{module} imports the command-line module(s) {deps & TOOLS}"


def test_header_only_modules_do_not_import_the_inference_stack():
    graph = import_graph()
    upstream = {module for module in graph if module.startswith("pyturbo.upstream.")}
    assert {"pyturbo.upstream.allocation", "pyturbo.upstream.cache_table"} <= upstream
    header_only = HEADER_ONLY | upstream
    assert header_only <= set(graph), f"not modules: {sorted(header_only - set(graph))}"
    offenders = {module: sorted(graph[module] & INFERENCE_STACK) for module in sorted(header_only)
                 if graph[module] & INFERENCE_STACK}
    assert not offenders, f"header-only modules importing the inference stack: {offenders}"


def test_only_native_touches_cffi():
    # _ffi_build.py turns _cdefs.py into _native's FFI: with cffi's parser at build time (the
    # generated pyturbo._pyturbo_cffi), or when _native is imported without that module.
    for path in PACKAGE.rglob("*.py"):
        if path.name not in ("_native.py", "_ffi_build.py"):
            assert "import cffi" not in path.read_text(), path


def test_no_module_is_over_500_lines():
    sizes = {module_name(p): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert max(sizes.values()) <= MAX_MODULE_LINES, {m: n for m, n in sizes.items() if n > MAX_MODULE_LINES}


def test_header_only_work_does_not_load_the_native_library(tiny_path):
    script = f"""
import pyturbo.memory, pyturbo.fit, pyturbo.info, pyturbo._native as native
est = pyturbo.memory.estimate({str(tiny_path)!r}, 4096, "q8_0", "turbo3")
info = pyturbo.info.inspect({str(tiny_path)!r})
plan = pyturbo.fit.plan({str(tiny_path)!r}, memory="1GiB")
maps = open("/proc/self/maps").read()
print(est.kv > 0, info.n_layer, plan.recommendation is not None, native.loaded(), "libllama" in maps,
      "libggml" in maps)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "2", "True", "False", "False", "False"]


def test_using_the_api_loads_the_library_once_on_first_use(tiny_path):
    script = f"""
import pyturbo, pyturbo._native as native
before = native.loaded()
with pyturbo.Model({str(tiny_path)!r}) as model:
    n_layer = model.n_layer
print(before, native.loaded(), n_layer, "libllama" in open("/proc/self/maps").read())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "2", "True"]


CSRC = PACKAGE.parent / "csrc"
MAX_CSRC_LINES = 500


def test_no_c_or_cpp_file_in_csrc_is_over_500_lines():
    sizes = {str(p.relative_to(CSRC)): len(p.read_text().splitlines())
             for p in CSRC.rglob("*") if p.suffix in (".c", ".cpp", ".h", ".cu", ".cuh", ".metal")}
    assert len(sizes) > 20
    assert max(sizes.values()) <= MAX_CSRC_LINES, {f: n for f, n in sizes.items() if n > MAX_CSRC_LINES}


# Words of llama.cpp's allocation report (llama-kv-cache.cpp, llama-context.cpp): sizes come from
# libllama as numbers (pyturbo.context_memory), never from its log.
ALLOCATION_LOG_WORDS = ("MiB", "buffer size", "cells")


def regex_patterns(path: Path) -> list:
    """The string patterns a module passes to the re module's functions."""
    patterns = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "re" and node.args
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            patterns.append(node.args[0].value)
    return patterns


def test_no_module_reads_sizes_from_llama_cpp_s_log():
    for path in PACKAGE.rglob("*.py"):
        for pattern in regex_patterns(path):
            assert not any(word in pattern for word in ALLOCATION_LOG_WORDS), (path.name, pattern)


def test_the_log_check_finds_a_size_regex(tmp_path):
    module = tmp_path / "m.py"
    module.write_text('import re\nLINE = re.compile(r"compute buffer size = +([\\d.]+) MiB")\n')
    assert regex_patterns(module) == [r"compute buffer size = +([\d.]+) MiB"]
