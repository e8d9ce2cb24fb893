"""pyturbo's cffi interface from pyturbo/_cdefs.py, prepared at build time (cffi's out-of-line
ABI mode, as python-soundfile does) or, failing that, parsed when pyturbo._native is imported.

    python pyturbo/_ffi_build.py OUT_DIR     # CMakeLists.txt runs it during `pip install`

writes OUT_DIR/_pyturbo_cffi.py, which the wheel installs as pyturbo._pyturbo_cffi: the
declarations already parsed into cffi's tables, so that importing pyturbo reads no C and
needs no C parser (docs/results/import-time.md). pyturbo._native takes it when it was made
from the _cdefs.py beside it (DIGEST), else, as in a source checkout, calls parse().

It runs without pyturbo's dependencies (a build has only cffi): _cdefs.py is read by path.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

MODULE = "pyturbo._pyturbo_cffi"
# _cdefs.py's blocks in the order cffi reads them: each uses only types declared before it.
# tests/test_cdefs.py fails when _cdefs.py has a block that is not listed here.
BLOCKS = ("GGML_CDEFS", "GGML_CPU_CDEFS", "GGML_BACKEND_CDEFS", "GGML_RPC_CDEFS", "TURBO_CDEFS",
          "LLAMA_CDEFS", "PYTURBO_LLAMA_CDEFS")


def declarations(cdefs) -> str:
    """All of _cdefs.py's declarations (cdefs: the module), in the order cffi reads them."""
    return "\n".join(getattr(cdefs, block) for block in BLOCKS)


def digest(cdefs) -> str:
    """What a generated module records of the declarations it was made from."""
    return hashlib.sha256(declarations(cdefs).encode("utf-8")).hexdigest()


def parse(cdefs):
    """A cffi.FFI that has parsed the declarations (what a generated module holds ready-made)."""
    import cffi  # here only: importing a generated module needs neither cffi's parser nor pycparser

    ffi = cffi.FFI()
    ffi.cdef(declarations(cdefs))
    return ffi


def write_module(cdefs, out_dir: Path) -> Path:
    """Write out_dir/_pyturbo_cffi.py, ending with the DIGEST of the declarations it holds."""
    ffi = parse(cdefs)
    ffi.set_source(MODULE, None)  # None: ABI mode, a pure-Python module; nothing to compile
    path = Path(out_dir) / "_pyturbo_cffi.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    ffi.emit_python_code(str(path))
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"\n# sha256 of the declarations (pyturbo/_ffi_build.py: digest)\nDIGEST = {digest(cdefs)!r}\n")
    return path


def load_cdefs(path: Path = Path(__file__).with_name("_cdefs.py")):
    """pyturbo/_cdefs.py as a module of its own, without importing the pyturbo package."""
    spec = importlib.util.spec_from_file_location("pyturbo_cdefs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python pyturbo/_ffi_build.py OUT_DIR")
    write_module(load_cdefs(), Path(sys.argv[1]))
