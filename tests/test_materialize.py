"""vendor/materialize.py: idempotent, verifies what it unpacks, fails loudly on a bad patch."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def materialize(monkeypatch, tmp_path):
    """The module, with its patches folder and pin pointed at a small fake tree."""
    spec = importlib.util.spec_from_file_location("materialize", ROOT / "vendor" / "materialize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    source = tmp_path / "upstream"
    (source / "include").mkdir(parents=True)
    (source / "ggml" / "include").mkdir(parents=True)
    (source / "include" / "llama.h").write_text("int llama(void);\n")
    (source / "ggml" / "include" / "ggml.h").write_text("int ggml(void);\n")
    (source / ".git").write_text("gitdir: elsewhere\n")
    pin_file = tmp_path / "fake.pin"
    pin_file.write_text(
        "commit = 0c1e57098\n"
        f"include/llama.h = {module.sha256_of(source / 'include' / 'llama.h')}\n"
        f"ggml/include/ggml.h = {module.sha256_of(source / 'ggml' / 'include' / 'ggml.h')}\n")
    patches = tmp_path / "patches"
    patches.mkdir()
    monkeypatch.setattr(module, "PIN_FILE", pin_file)
    monkeypatch.setattr(module, "PATCH_DIR", patches)
    monkeypatch.setenv("PYTURBO_LLAMA_CPP_DIR", str(source))
    return module, source, patches, tmp_path / "out"


def add_patch(patches: Path, name: str, old: str, new: str) -> None:
    (patches / name).write_text(
        "--- a/include/llama.h\n+++ b/include/llama.h\n@@ -1 +1 @@\n"
        f"-{old}\n+{new}\n")


def test_override_tree_is_copied_patched_and_stamped(materialize):
    module, source, patches, dest = materialize
    add_patch(patches, "0001-rename.patch", "int llama(void);", "int llama_patched(void);")
    module.materialize(dest)
    assert (dest / "include" / "llama.h").read_text() == "int llama_patched(void);\n"
    assert not (dest / ".git").exists()
    assert (source / "include" / "llama.h").read_text() == "int llama(void);\n"  # source untouched
    assert (dest / module.STAMP_NAME).exists()


def test_override_tree_keeps_sources_named_build_and_drops_its_build_folders(materialize):
    module, source, patches, dest = materialize
    (source / "cmake").mkdir()
    (source / "cmake" / "build-info.cmake").write_text("# sources, not a build\n")
    (source / "build-cuda").mkdir()
    (source / "build-cuda" / "CMakeCache.txt").write_text("")
    module.materialize(dest)
    assert (dest / "cmake" / "build-info.cmake").exists()
    assert not (dest / "build-cuda").exists()


def test_second_run_is_a_no_op_and_a_changed_patch_rebuilds(materialize, capsys):
    module, source, patches, dest = materialize
    add_patch(patches, "0001-rename.patch", "int llama(void);", "int llama_a(void);")
    module.materialize(dest)
    (dest / "marker").write_text("kept while up to date")
    module.materialize(dest)
    assert "up to date" in capsys.readouterr().out
    assert (dest / "marker").exists()
    add_patch(patches, "0001-rename.patch", "int llama(void);", "int llama_b(void);")
    module.materialize(dest)
    assert not (dest / "marker").exists()
    assert (dest / "include" / "llama.h").read_text() == "int llama_b(void);\n"


def test_patch_that_does_not_apply_fails_loudly_and_leaves_no_tree(materialize):
    module, source, patches, dest = materialize
    add_patch(patches, "0001-bad.patch", "int something_else(void);", "int x(void);")
    with pytest.raises(module.MaterializeError, match="0001-bad.patch does not apply"):
        module.materialize(dest)
    assert not dest.exists()


def test_override_tree_at_another_commit_is_refused(materialize):
    module, source, patches, dest = materialize
    (source / "include" / "llama.h").write_text("int llama_v2(void);\n")
    with pytest.raises(module.MaterializeError, match="differs from llama.cpp commit 0c1e57098"):
        module.materialize(dest)


def test_the_real_pin_records_the_sdist_and_header_hashes():
    spec = importlib.util.spec_from_file_location("materialize_real", ROOT / "vendor" / "materialize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pin = module.read_pin()
    assert pin["commit"] == "0c1e57098"
    assert pin["sdist"] == "llama-cpp-python==0.3.36"
    assert len(pin["sdist_sha256"]) == 64
    assert len(pin["include/llama.h"]) == 64
