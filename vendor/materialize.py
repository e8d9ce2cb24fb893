#!/usr/bin/env python3
"""Materialize vendor/llama.cpp: the pinned llama.cpp tree with pyturbo's patches applied.

The tree comes from the llama-cpp-python sdist named in vendor/llama-cpp.pin (its
sha256 is checked), or, for offline builds, from an existing unpatched tree at the
same commit named by PYTURBO_LLAMA_CPP_DIR (its headers' sha256 are checked). The
patches in patches/*.patch are applied in name order. Running it again is a no-op
unless the pin or a patch changed. CMake runs it at configure time.

    python vendor/materialize.py [--dest DIR] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VENDOR_DIR = Path(__file__).resolve().parent
ROOT_DIR = VENDOR_DIR.parent
PIN_FILE = VENDOR_DIR / "llama-cpp.pin"
PATCH_DIR = ROOT_DIR / "patches"
STAMP_NAME = ".pyturbo-stamp"


class MaterializeError(Exception):
    pass


def read_pin(path: "Path | None" = None) -> dict[str, str]:
    pin = {}
    for line in (path or PIN_FILE).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        pin[key.strip()] = value.strip()
    return pin


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def patch_files() -> list[Path]:
    return sorted(PATCH_DIR.glob("*.patch"))


def stamp_for(pin: dict[str, str], source: str) -> str:
    """Identifies what the tree was made from: the pin, the source and every patch."""
    digest = hashlib.sha256()
    digest.update(PIN_FILE.read_bytes())
    digest.update(source.encode())
    for patch in patch_files():
        digest.update(patch.name.encode())
        digest.update(patch.read_bytes())
    return digest.hexdigest()


def cache_dir() -> Path:
    if os.environ.get("PYTURBO_CACHE"):
        return Path(os.environ["PYTURBO_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "pyturbo"
    return Path.home() / ".cache" / "pyturbo"


def fetch_sdist(pin: dict[str, str]) -> Path:
    """Return the verified sdist, downloading it with pip once per cache dir."""
    target = cache_dir() / "sdist" / pin["sdist_file"]
    if target.exists() and sha256_of(target) == pin["sdist_sha256"]:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        print(f"-- pyturbo: downloading {pin['sdist']} (the pinned llama.cpp source)", flush=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "-d", tmp, pin["sdist"]]
        result = subprocess.run(cmd, capture_output=True, text=True)
        downloaded = Path(tmp) / pin["sdist_file"]
        if not downloaded.exists():
            raise MaterializeError(
                f"could not download {pin['sdist']} with pip (exit {result.returncode}):\n"
                f"{result.stdout[-2000:]}{result.stderr[-2000:]}\n"
                "For an offline build set PYTURBO_LLAMA_CPP_DIR to an unpatched llama.cpp tree "
                f"at commit {pin['commit']}.")
        actual = sha256_of(downloaded)
        if actual != pin["sdist_sha256"]:
            raise MaterializeError(
                f"{pin['sdist_file']} has sha256 {actual}, expected {pin['sdist_sha256']}")
        os.replace(downloaded, target)
    return target


def extract_sdist(sdist: Path, subdir: str, dest: Path) -> None:
    prefix = subdir.rstrip("/") + "/"
    extract_options = {"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            if not member.name.startswith(prefix):
                continue
            relative = member.name[len(prefix):]
            # The sdist keeps llama.cpp as a git submodule; its .git file points
            # nowhere once extracted and would confuse git and llama.cpp's build-info.
            if not relative or relative == ".git" or relative.startswith(".git/"):
                continue
            if not (member.isfile() or member.isdir() or member.issym()):
                continue
            member.name = relative
            tar.extract(member, dest, **extract_options)


def copy_override_tree(source: Path, pin: dict[str, str], dest: Path) -> None:
    for header in ("include/llama.h", "ggml/include/ggml.h"):
        path = source / header
        if not path.exists():
            raise MaterializeError(f"PYTURBO_LLAMA_CPP_DIR={source} has no {header}")
        if sha256_of(path) != pin[header]:
            raise MaterializeError(
                f"PYTURBO_LLAMA_CPP_DIR={source}: {header} differs from llama.cpp commit "
                f"{pin['commit']} (unpatched); point it at an unpatched tree at that commit")
    def skipped(directory: str, names: list[str]) -> list[str]:
        # a checkout's own build folders sit at its top; deeper down build-* are sources
        # (cmake/build-info.cmake, common/build-info.cpp.in)
        top = Path(directory) == source
        return [n for n in names
                if n in (".git", STAMP_NAME) or (top and (n == "build" or n.startswith("build-")))]

    shutil.copytree(source, dest, dirs_exist_ok=True, symlinks=True, ignore=skipped)


def apply_patches(tree: Path) -> None:
    for patch in patch_files():
        result = subprocess.run(
            ["patch", "-p1", "--forward", "--batch", "--no-backup-if-mismatch", "-d", str(tree),
             "-i", str(patch)], capture_output=True, text=True)
        if result.returncode != 0:
            raise MaterializeError(f"patch {patch.name} does not apply:\n{result.stdout}{result.stderr}")
        print(f"-- pyturbo: applied {patch.name}", flush=True)


def materialize(dest: Path, force: bool = False) -> Path:
    pin = read_pin()
    override = os.environ.get("PYTURBO_LLAMA_CPP_DIR")
    source = f"dir:{Path(override).resolve()}" if override else f"sdist:{pin['sdist_sha256']}"
    stamp = stamp_for(pin, source)
    stamp_file = dest / STAMP_NAME
    if not force and stamp_file.exists() and stamp_file.read_text().strip() == stamp:
        print(f"-- pyturbo: {dest} is up to date", flush=True)
        return dest

    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".llama.cpp.tmp", dir=dest.parent))
    try:
        if override:
            copy_override_tree(Path(override), pin, staging)
        else:
            extract_sdist(fetch_sdist(pin), pin["sdist_subdir"], staging)
        apply_patches(staging)
        (staging / STAMP_NAME).write_text(stamp + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f"-- pyturbo: materialized llama.cpp {pin['commit']} at {dest}", flush=True)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=VENDOR_DIR / "llama.cpp")
    parser.add_argument("--force", action="store_true", help="rebuild the tree even if up to date")
    args = parser.parse_args(argv)
    try:
        materialize(args.dest.resolve(), force=args.force)
    except MaterializeError as e:
        print(f"pyturbo: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
