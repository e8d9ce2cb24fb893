"""pyturbo.upstream mirrors llama.cpp's rules at the pin: every module there says which commit it
was checked against, and moving vendor/llama-cpp.pin without re-checking them fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIN = ROOT / "vendor" / "llama-cpp.pin"
UPSTREAM = ROOT / "pyturbo" / "upstream"
# The modules that must be here (a stamp check over an emptied folder would pass vacuously).
EXPECTED = {"allocation", "cache_table", "geometry", "loader_rules", "quant_presets"}


def pinned_commit(text: str) -> str:
    match = re.search(r"^commit\s*=\s*(\S+)\s*$", text, re.MULTILINE)
    assert match, f"no 'commit =' line in {PIN}"
    return match.group(1)


def stamp(path: Path) -> "str | None":
    """The module-level CHECKED_AT_PIN string of a source file, or None."""
    for node in ast.parse(path.read_text()).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "CHECKED_AT_PIN"
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            return node.value.value
    return None


def stale_modules(commit: str) -> dict:
    """{module: its stamp} for each upstream module not stamped with commit."""
    stamps = {path.stem: stamp(path) for path in sorted(UPSTREAM.glob("*.py")) if path.name != "__init__.py"}
    return {name: found for name, found in stamps.items() if found != commit}


def test_the_pin_file_names_a_commit():
    assert re.fullmatch(r"[0-9a-f]{7,40}", pinned_commit(PIN.read_text()))
    assert pinned_commit("# a comment\ncommit = abc1234\nsdist = x\n") == "abc1234"


def test_every_upstream_module_is_stamped_with_the_pinned_commit():
    modules = {path.stem for path in UPSTREAM.glob("*.py")} - {"__init__"}
    assert EXPECTED <= modules, f"missing from pyturbo/upstream: {sorted(EXPECTED - modules)}"
    commit = pinned_commit(PIN.read_text())
    stale = stale_modules(commit)
    assert not stale, (
        f"vendor/llama-cpp.pin is at {commit}, but these pyturbo.upstream modules were checked at another "
        "commit (or carry no CHECKED_AT_PIN): "
        + ", ".join(f"pyturbo.upstream.{name} ({found or 'no stamp'})" for name, found in stale.items())
        + ". Re-check each against the new llama.cpp sources, then update its CHECKED_AT_PIN.")


def test_a_moved_pin_names_every_module_left_unchecked():
    assert set(stale_modules("0000000")) == {path.stem for path in UPSTREAM.glob("*.py")} - {"__init__"}
